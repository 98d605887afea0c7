"""The one place that reads the environment (``bge_m3.envvars`` spells the variables).

Layering follows Flask's tutorial: defaults (the dataclass fields) -> environment
(``Settings.from_env``) -> explicit overrides (tests pass keyword arguments).
Every other module receives a ``Settings`` and never calls ``os.getenv``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from bge_m3.envvars import ENV_VARS, SECRET_VARS, SettingsError, boolean, parse, read_secret_files
from bge_m3.redaction import url_has_password

PACKAGED_MANIFEST = Path(__file__).resolve().parent.parent / "verify" / "bge-m3-manifest.json"
"""The pinned BAAI/bge-m3 manifest shipped inside the ``verify`` package."""


def _default_model_dir() -> Path:
    return Path.home() / ".cache" / "huggingface" / "BAAI" / "bge-m3"


REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://", "unix://")
"""URL forms REDIS_URL may take; Celery gets ``unix://`` (redis-py's) in kombu's spelling
(``bge_m3.queue.broker_url``)."""


MIN_MAX_LENGTH = 2
"""The least ``max_length`` (a setting, or a request's): CLS and EOS. Below it a tokenizer cannot
truncate, and FlagEmbedding then embeds the whole text, uncut; no answer to it is meaningful."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""``BGE_M3_LOG_LEVEL``'s values (any case): the names both logging and Celery's CLI take."""

CUDA_INDEX = re.compile(r"cuda:[0-9]+", re.ASCII)
"""``BGE_M3_DEVICE`` naming one GPU; ``cuda:`` or ``cuda:-1`` would fail only once a worker ran."""

BOUNDS: dict[str, tuple[float, float | None]] = {
    "port": (1, 65535), "embedded_redis_port": (1, 65535), "max_batch_tokens": (1, None),
    "worker_threads": (1, None), "batch_wait_ms": (0, None), "time_limit": (1, None),
    "visibility_timeout": (1, None), "max_retries": (0, None), "max_body_bytes": (1, None),
    "max_texts": (1, None), "max_queued": (1, None), "test_load_delay": (0, None),
    "max_length": (MIN_MAX_LENGTH, 8192), "max_colbert_tokens": (1, None),
}
"""Inclusive (least, most) of the numeric settings whose other values mean nothing useful: a
``BGE_M3_MAX_TEXTS`` of 0 would answer every request 413, a ``BGE_M3_MAX_QUEUED`` of 0 would
silently lift the 429 bound."""


@dataclass(frozen=True)
class Settings:
    # name -> environment variable is declared in ENV_VARS (bge_m3.envvars).
    # The secrets (SECRET_VARS) are left out of repr(): a Settings in a log line or a traceback
    # must not print them.
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    # Kept apart from redis_url so the URL can sit in plain configuration while the password
    # comes from a secret file; connections use ``redis_dsn``, the two joined.
    redis_password: str | None = field(default=None, repr=False)
    model_dir: Path = field(default_factory=_default_model_dir)
    manifest: Path = PACKAGED_MANIFEST
    endpoints: tuple[str, ...] = ("https://huggingface.co", "https://hf-mirror.com")
    device: str = "auto"
    host: str = "0.0.0.0"
    port: int = 7860
    hf_token: str | None = field(default=None, repr=False)
    auto_download: bool = True
    # Worker
    max_batch_tokens: int = 16384
    max_length: int = 8192
    max_colbert_tokens: int = 262_144
    batch_wait_ms: float = 0.0
    worker_threads: int = 64
    torch_threads: int = 0
    result_ttl: int = 24 * 3600
    colbert_dtype: str = "float16"
    time_limit: int = 600
    visibility_timeout: int = 3600
    max_retries: int = 3
    # API
    max_body_bytes: int = 20 * 1024 * 1024
    max_texts: int = 10_000
    max_queued: int = 10_000
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    sync_timeout: float = 60.0
    cors_origins: tuple[str, ...] = ()
    # Operations
    log_dir: Path = Path("/tmp/bge-m3.log")
    data_dir: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "bge-m3")
    log_json: bool = False
    log_level: str = "INFO"
    embedded_redis_port: int = 6379
    # Test-only fault injection (tests/test_faults.py); off by default, never set in production.
    test_faults: bool = False
    test_load_delay: float = 0.0
    # (variable, path) of each secret read from ``VAR_FILE``: child processes get the path, not
    # the value (``env()``). Where a value came from does not make two settings differ.
    secret_files: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if env is None else env
        env, secret_files = read_secret_files(env)
        values: dict[str, Any] = {"secret_files": secret_files}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[name] = parse(types[name], raw, var)
        for secret in ("hf_token", "redis_password"):  # a secret file or .env ends in a newline
            if values.get(secret):
                values[secret] = values[secret].strip() or None
        if env.get("CPU_ONLY", "").strip() and boolean(env["CPU_ONLY"], "CPU_ONLY"):
            values["device"] = "cpu"
        values.update(overrides)
        for key in ("model_dir", "manifest", "log_dir", "data_dir"):
            if key in values:
                values[key] = Path(values[key]).expanduser()
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> "Settings":
        changed = {ENV_VARS[name] for name, value in changes.items()
                   if name in ENV_VARS and getattr(self, name) != value}
        if changed and "secret_files" not in changes:  # a new value no longer comes from the file
            changes["secret_files"] = tuple(p for p in self.secret_files if p[0] not in changed)
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise ``SettingsError`` naming the first variable that is out of its range."""
        if not self.redis_url.startswith(REDIS_SCHEMES):
            # Not the value: a secret file often holds a bare password, which no redaction of a
            # URL would find. Its scheme is shown when it has one.
            where = dict(self.secret_files).get("REDIS_URL")
            scheme = self.redis_url.partition("://")[0] if "://" in self.redis_url else ""
            if where or not (scheme.isalnum() and len(scheme) <= 12):
                found = "no URL"
            else:
                found = f"a {scheme}:// URL"
            raise SettingsError(f"REDIS_URL{'_FILE: ' + where + ' holds' if where else ' is'} "
                                f"{found}; it must start with one of {', '.join(REDIS_SCHEMES)}")
        if self.redis_password and url_has_password(self.redis_url):
            raise SettingsError("REDIS_URL holds a password and REDIS_PASSWORD is set; set one")
        if self.device not in {"auto", "cuda", "cpu"} and not CUDA_INDEX.fullmatch(self.device):
            raise SettingsError(f"BGE_M3_DEVICE must be auto, cuda, cuda:N or cpu, not {self.device!r}")
        for name, (least, most) in BOUNDS.items():
            value = getattr(self, name)
            if value < least or (most is not None and value > most):
                where = f"between {least} and {most}" if most is not None else f"at least {least}"
                raise SettingsError(f"{ENV_VARS[name]} must be {where}, not {value}")
        if self.sync_timeout <= 0:
            raise SettingsError("BGE_M3_SYNC_TIMEOUT must be more than 0 seconds")
        if any(not key.isascii() or not key.isprintable() or any(c.isspace() for c in key)
               for key in self.api_keys):  # no header can carry those: such a key never matches
            raise SettingsError("BGE_M3_API_KEYS: a key holds a space, a control or a non-ASCII "
                                "character (keys are not shown); separate keys with commas, or "
                                "lines in a key file")
        if self.log_level.upper() not in LOG_LEVELS:  # the worker's Celery CLI failed with a traceback
            raise SettingsError(f"BGE_M3_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                                f"not {self.log_level!r}")
        if self.colbert_dtype not in {"float16", "float32"}:
            raise SettingsError("BGE_M3_COLBERT_DTYPE must be float16 or float32")
        if self.torch_threads < 0:
            raise SettingsError("BGE_M3_TORCH_THREADS must be 0 (torch's default) or more")
        if self.hf_token and any(c.isspace() or not c.isprintable() or not c.isascii()
                                 for c in self.hf_token):
            # not shown: it is a secret, and the HTTP error it would cause would print it
            raise SettingsError("HF_TOKEN holds a space, a control or a non-ASCII character (its "
                                "value is not shown); a hub token is one word of ASCII")
        if self.time_limit >= self.visibility_timeout:
            raise SettingsError("BGE_M3_TIME_LIMIT must stay below BGE_M3_VISIBILITY_TIMEOUT")
        if self.result_ttl <= self.time_limit:  # the record's TTL runs from the job's creation
            raise SettingsError("BGE_M3_RESULT_TTL must be longer than BGE_M3_TIME_LIMIT: a job's record "
                             "expires that long after it was submitted, queued or not")

    @property
    def request_grace(self) -> int:
        """Seconds the API gives requests in flight to finish after SIGTERM (gunicorn's graceful
        timeout): the longest wait one may be in (a sync call's ``sync_timeout``, a long-poll's
        ``MAX_WAIT_SECONDS``) and a margin to answer. Shorter, and gunicorn killed a sync call
        still waiting: no result, no 504, and a client retrying would start the same work again."""
        from bge_m3.jobreader import MAX_WAIT_SECONDS

        return math.ceil(max(self.sync_timeout, MAX_WAIT_SECONDS)) + 5

    @property
    def redis_dsn(self) -> str:
        """The URL every Redis connection uses: ``redis_url`` with ``redis_password`` in its
        userinfo (percent-encoded), which redis-py and kombu read for every scheme, sockets too."""
        if not self.redis_password:
            return self.redis_url
        scheme, _, rest = self.redis_url.partition("://")
        netloc, slash, path = rest.partition("/")  # a socket URL's netloc is empty
        user, _, host = netloc.rpartition("@")
        return f"{scheme}://{user}:{quote(self.redis_password, safe='')}@{host}{slash}{path}"

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        out: dict[str, str] = {}
        for name, var in ENV_VARS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "1" if value else "0"
            out[var] = str(value)
        for var, path in self.secret_files:
            out.pop(var, None)
            out[var + "_FILE"] = path
        return out

    def child_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` (say ``os.environ``) with these settings on top, each secret given once: by
        its file where it was read from one, else by value, never both (that is refused)."""
        own = self.env()
        merged = {**base, **own}
        for var in SECRET_VARS:  # drop the spelling these settings do not use
            merged.pop(var if var + "_FILE" in own else var + "_FILE", None)
        return merged
