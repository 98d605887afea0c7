"""How settings are spelled in the environment: the variable names (a public contract), how a
value is parsed, and secrets given as files. ``bge_m3.settings`` builds ``Settings`` from these."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping


class SettingsError(ValueError):
    """A setting (an environment variable) is malformed or contradicts another; names the variable."""


SECRET_VARS = ("REDIS_URL", "REDIS_PASSWORD", "HF_TOKEN", "BGE_M3_API_KEYS")
"""Secrets that may be given as ``VAR_FILE``, the path of a file holding the value (Docker and
Kubernetes secrets), so the value need not sit in any process's environment."""


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
"""How an on/off setting may be spelled (any case); anything else is refused, not read as off:
``BGE_M3_AUTO_DOWNLOAD=ture`` silently turned downloads off."""


def boolean(raw: str, var: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise SettingsError(f"{var} must be one of 1, true, yes, on or 0, false, no, off, not {raw!r}")


def csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def key_lines(text: str) -> str:
    """An API key file's keys, comma-joined: one or more a line (comma-separated), blank lines and
    lines starting with ``#`` skipped. A line is never split at spaces: ``key  # note`` stays one
    (bad) key that ``Settings.validate`` refuses, not three keys ``key``, ``#`` and ``note``."""
    lines = (line.strip() for line in text.splitlines())
    return ",".join(key for line in lines if line and not line.startswith("#") for key in csv(line))


def parse(kind: Any, raw: str, var: str) -> Any:
    kind = str(kind)
    if "bool" in kind:
        return boolean(raw, var)
    if "tuple" in kind:
        values = csv(raw)
        if not values:  # " , " must not read as unset: for BGE_M3_API_KEYS that is auth off
            raise SettingsError(f"{var} is set but lists nothing; unset it or give a value")
        return values
    if kind in ("int", "float"):
        try:
            value = int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise SettingsError(f"{var} must be {'an integer' if kind == 'int' else 'a number'}, "
                                f"not {raw!r}") from None
        if not math.isfinite(value):  # nan compares false with every bound; inf never ends a wait
            raise SettingsError(f"{var} must be a finite number, not {raw!r}")
        return value
    if "Path" in kind:
        return Path(raw).expanduser()
    return raw


ENV_VARS: dict[str, str] = {
    "redis_url": "REDIS_URL",
    "redis_password": "REDIS_PASSWORD",
    "model_dir": "BGE_M3_MODEL_DIR",
    "manifest": "BGE_M3_MANIFEST",
    "endpoints": "BGE_M3_ENDPOINTS",
    "device": "BGE_M3_DEVICE",
    "host": "BGE_M3_HOST",
    "port": "BGE_M3_PORT",
    "hf_token": "HF_TOKEN",
    "auto_download": "BGE_M3_AUTO_DOWNLOAD",
    "max_batch_tokens": "BGE_M3_MAX_BATCH_TOKENS",
    "max_length": "BGE_M3_MAX_LENGTH",
    "batch_wait_ms": "BGE_M3_BATCH_WAIT_MS",
    "worker_threads": "BGE_M3_WORKER_THREADS",
    "torch_threads": "BGE_M3_TORCH_THREADS",
    "result_ttl": "BGE_M3_RESULT_TTL",
    "colbert_dtype": "BGE_M3_COLBERT_DTYPE",
    "time_limit": "BGE_M3_TIME_LIMIT",
    "visibility_timeout": "BGE_M3_VISIBILITY_TIMEOUT",
    "max_retries": "BGE_M3_MAX_RETRIES",
    "max_body_bytes": "BGE_M3_MAX_BODY_BYTES",
    "max_texts": "BGE_M3_MAX_TEXTS",
    "max_colbert_tokens": "BGE_M3_MAX_COLBERT_TOKENS",
    "max_queued": "BGE_M3_MAX_QUEUED",
    "api_keys": "BGE_M3_API_KEYS",
    "sync_timeout": "BGE_M3_SYNC_TIMEOUT",
    "cors_origins": "BGE_M3_CORS_ORIGINS",
    "log_dir": "BGE_M3_LOG_DIR",
    "data_dir": "BGE_M3_DATA_DIR",
    "log_json": "BGE_M3_LOG_JSON",
    "log_level": "BGE_M3_LOG_LEVEL",
    "embedded_redis_port": "BGE_M3_EMBEDDED_REDIS_PORT",
    "test_faults": "BGE_M3_TEST_FAULTS",
    "test_load_delay": "BGE_M3_TEST_LOAD_DELAY",
}
"""Settings field -> environment variable. The names are a public contract."""


def read_secret_files(env: Mapping[str, str]) -> tuple[Mapping[str, str], tuple[tuple[str, str], ...]]:
    """``env`` with each ``VAR_FILE`` of ``SECRET_VARS`` read into ``VAR``. The file's surrounding
    whitespace is dropped (a trailing newline); API keys may be one per line (``key_lines``). An
    empty or unreadable file is refused, never taken as "unset": an empty key file would turn auth
    off."""
    files = [(var, env[var + "_FILE"]) for var in SECRET_VARS if env.get(var + "_FILE")]
    if not files:
        return env, ()
    out = dict(env)
    for var, path in files:
        if env.get(var):
            raise SettingsError(f"{var} and {var}_FILE are both set; set one")
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise SettingsError(f"{var}_FILE: cannot read {path}: {why}") from None
        value = key_lines(text) if var == "BGE_M3_API_KEYS" else text.strip()
        if not value:
            raise SettingsError(f"{var}_FILE: {path} is empty"
                                + (" (or holds only comments)" if text.strip() else ""))
        out[var] = value
    return out, tuple(files)


def env_is_set(var: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``var`` is set (non-empty), for commands whose behaviour differs when it is unset;
    a secret given as ``VAR_FILE`` is set too."""
    env = os.environ if env is None else env
    return bool(env.get(var) or (var in SECRET_VARS and env.get(var + "_FILE")))
