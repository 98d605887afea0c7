"""The foundation: deterministic tiny model, FlagEmbedding loads it, settings, thin API import."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bge_m3.queue import broker_url, make_celery, redis_client
from bge_m3.redaction import redact_url, scrub
from bge_m3.settings import PACKAGED_MANIFEST, Settings, SettingsError
from bge_m3.tinymodel import build
from tests.support import BGE_M3
from verify.manifest import load_manifest


def test_two_builds_are_byte_identical(tiny_model, tmp_path):
    again = build(tmp_path / "again", seed=0)
    assert json.loads(again.read_text())["files"] == json.loads(tiny_model.manifest.read_text())["files"]
    other_seed = build(tmp_path / "other", seed=1)
    assert json.loads(other_seed.read_text())["files"] != json.loads(again.read_text())["files"]


def test_tiny_model_files_and_manifest(tiny_model):
    manifest = load_manifest(tiny_model.manifest)
    paths = {f.path for f in manifest.files}
    assert {"config.json", "model.safetensors", "colbert_linear.pt", "sparse_linear.pt",
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= paths
    config = json.loads((tiny_model.dir / "config.json").read_text())
    assert config["max_position_embeddings"] == 8194 and config["pad_token_id"] == 1
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 2
    for path in tiny_model.dir.iterdir():
        assert path.stat().st_mode & 0o044 == 0o044, f"{path} is not readable by others"


def test_tokenizer_special_ids(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model.dir)
    assert [tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert tok.convert_tokens_to_ids("<mask>") == len(tok) - 1
    ids = tok("今天天气真好")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids


def test_flagembedding_loads_all_three_outputs(tiny_model):
    from FlagEmbedding import BGEM3FlagModel

    model = BGEM3FlagModel(str(tiny_model.dir), use_fp16=False, devices="cpu")
    texts = ["今天天气真好", "阳光明媚", "the quick brown fox jumps over the lazy dog"]
    out = model.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    assert out["dense_vecs"].shape == (3, 32)
    sims = out["dense_vecs"] @ out["dense_vecs"].T
    assert sims[0, 2] < 0.99, "random init too small: every text looks the same"
    assert all(len(w) > 0 for w in out["lexical_weights"]), "sparse head drops every token"
    assert [v.shape[1] for v in out["colbert_vecs"]] == [32, 32, 32]
    assert all(v.shape[0] >= 1 for v in out["colbert_vecs"])


def test_import_api_leaves_torch_out():
    code = ("import sys, api; heavy = [m for m in ('torch', 'transformers', 'FlagEmbedding') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_settings_layering():
    defaults = Settings.from_env({})
    assert defaults.redis_url == "redis://127.0.0.1:6379/0" and defaults.port == 7860
    assert defaults.manifest == PACKAGED_MANIFEST and defaults.endpoints[0] == "https://huggingface.co"
    env = {"BGE_M3_PORT": "9000", "BGE_M3_ENDPOINTS": "http://a, http://b", "CPU_ONLY": "1",
           "BGE_M3_DEVICE": "cuda", "BGE_M3_API_KEYS": "k1,k2"}
    s = Settings.from_env(env)
    assert (s.port, s.endpoints, s.device, s.api_keys) == (9000, ("http://a", "http://b"), "cpu", ("k1", "k2"))
    assert Settings.from_env(env, port=1234).port == 1234
    assert Settings.from_env(s.env()) == s
    with pytest.raises(SettingsError, match=r"BGE_M3_DEVICE must be auto, cuda, cuda:N or cpu, not 'tpu'"):
        Settings.from_env({"BGE_M3_DEVICE": "tpu"})
    assert defaults.torch_threads == 0 and Settings.from_env({"BGE_M3_TORCH_THREADS": "1"}).torch_threads == 1
    with pytest.raises(SettingsError, match=r"BGE_M3_TORCH_THREADS must be 0 \(torch's default\) or more"):
        Settings.from_env({"BGE_M3_TORCH_THREADS": "-1"})
    with pytest.raises(SettingsError, match="BGE_M3_RESULT_TTL must be longer than BGE_M3_TIME_LIMIT"):  # records would expire under running jobs
        Settings.from_env({"BGE_M3_RESULT_TTL": "60", "BGE_M3_TIME_LIMIT": "600"})


def test_malformed_settings_name_their_variable():
    with pytest.raises(SettingsError, match=r"BGE_M3_MAX_TEXTS must be an integer, not 'abc'"):
        Settings.from_env({"BGE_M3_MAX_TEXTS": "abc"})
    with pytest.raises(SettingsError, match=r"BGE_M3_SYNC_TIMEOUT must be a number"):
        Settings.from_env({"BGE_M3_SYNC_TIMEOUT": "soon"})
    with pytest.raises(SettingsError, match="REDIS_URL is a http:// URL; it must start with") as raised:
        Settings.from_env({"REDIS_URL": "http://:s3cret@h/0"})
    assert "s3cret" not in str(raised.value)
    # redis-py's socket form is taken; Celery gets it in kombu's spelling (it has no unix://).
    url = Settings.from_env({"REDIS_URL": "unix:///run/db=x/r.sock?db=3&password=db=9"}).redis_url
    assert broker_url(url) == "redis+socket://:db=9@/run/db=x/r.sock?virtual_host=3"
    assert make_celery(Settings(redis_url=url)).conf.broker_url == broker_url(url)
    assert redis_client(broker_url(url)).connection_pool.connection_kwargs["db"] == 3
    assert broker_url("redis://h:6379/0") == "redis://h:6379/0"


@pytest.mark.parametrize("var, raw, message", [
    ("BGE_M3_SYNC_TIMEOUT", "nan", "must be a finite number, not 'nan'"),  # waited forever
    ("BGE_M3_SYNC_TIMEOUT", "inf", "must be a finite number"),
    ("BGE_M3_SYNC_TIMEOUT", "0", "must be more than 0"),
    ("BGE_M3_BATCH_WAIT_MS", "-1", "must be at least 0"),
    ("BGE_M3_MAX_TEXTS", "0", "must be at least 1, not 0"),  # every request 413
    ("BGE_M3_MAX_BODY_BYTES", "-5", "must be at least 1"),
    ("BGE_M3_MAX_QUEUED", "0", "must be at least 1"),  # the 429 bound silently gone
    ("BGE_M3_WORKER_THREADS", "0", "must be at least 1"),
    ("BGE_M3_MAX_BATCH_TOKENS", "0", "must be at least 1"),
    ("BGE_M3_MAX_RETRIES", "-1", "must be at least 0"),
    ("BGE_M3_PORT", "0", "must be between 1 and 65535"),
    ("BGE_M3_PORT", "70000", "must be between 1 and 65535"),
    ("BGE_M3_EMBEDDED_REDIS_PORT", "65536", "must be between 1 and 65535"),
    ("BGE_M3_DEVICE", "cuda:", "must be auto, cuda, cuda:N or cpu"),
    ("BGE_M3_DEVICE", "cuda:-1", "must be auto, cuda, cuda:N or cpu"),
    ("BGE_M3_DEVICE", "cuda:x", "must be auto, cuda, cuda:N or cpu"),
    ("BGE_M3_ENDPOINTS", " , ", "is set but lists nothing"),
    ("BGE_M3_MAX_LENGTH", "1", "must be between 2 and 8192"),
    ("BGE_M3_AUTO_DOWNLOAD", "ture", "must be one of 1, true, yes, on or 0, false, no, off, not 'ture'"),
    ("BGE_M3_LOG_JSON", "2", "must be one of 1, true, yes, on or 0, false, no, off"),
    ("CPU_ONLY", "maybe", "must be one of 1, true, yes, on or 0, false, no, off"),  # read as off
    ("BGE_M3_LOG_LEVEL", "LOUD", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'LOUD'"),
])
def test_a_setting_out_of_its_range_is_refused_naming_it(var, raw, message):
    with pytest.raises(SettingsError, match=f"^{var} {message}"):
        Settings.from_env({var: raw})


def test_the_edges_of_each_range_are_taken():
    edges = {"BGE_M3_SYNC_TIMEOUT": "0.5", "BGE_M3_BATCH_WAIT_MS": "0", "BGE_M3_MAX_TEXTS": "1",
             "BGE_M3_MAX_QUEUED": "1", "BGE_M3_MAX_RETRIES": "0", "BGE_M3_PORT": "65535",
             "BGE_M3_EMBEDDED_REDIS_PORT": "1", "BGE_M3_DEVICE": "cuda:12"}
    s = Settings.from_env(edges)
    assert (s.sync_timeout, s.max_texts, s.max_queued, s.port, s.device) == (0.5, 1, 1, 65535, "cuda:12")
    # On/off words in any case, and log levels in any case.
    for word, on in (("1", True), (" TRUE ", True), ("Yes", True), ("on", True), ("0", False),
                     ("False", False), ("NO", False), ("off", False)):
        s = Settings.from_env({"BGE_M3_AUTO_DOWNLOAD": word, "BGE_M3_LOG_JSON": word, "CPU_ONLY": word})
        assert (s.auto_download, s.log_json, s.device == "cpu") == (on, on, on), word
    assert Settings.from_env({"BGE_M3_LOG_LEVEL": "debug"}).log_level == "debug"


def test_hf_token_is_trimmed_and_a_broken_one_is_refused_unshown():
    # a secret file's trailing newline would otherwise make every hub request fail (and quote it)
    assert Settings.from_env({"HF_TOKEN": " hf_abc123\r\n"}).hf_token == "hf_abc123"
    assert Settings.from_env({"HF_TOKEN": "\n"}).hf_token is None
    for broken in ("hf_abc 123", "hf_abc\n123", "hf_abc\x00", "hf_abc…"):
        with pytest.raises(SettingsError, match="HF_TOKEN holds a space, a control or a non-ASCII") as raised:
            Settings.from_env({"HF_TOKEN": broken})
        assert "abc" not in str(raised.value)


def test_a_malformed_setting_stops_a_command_with_one_line():
    env = {**os.environ, "BGE_M3_MAX_TEXTS": "abc"}
    proc = subprocess.run([BGE_M3, "api"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "bge-m3 api: BGE_M3_MAX_TEXTS must be an integer, not 'abc'"
    proc = subprocess.run([BGE_M3, "api", "--workers", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--workers and --threads must be at least 1" in proc.stderr
    # The worker's own options are checked before Celery sees them (it failed with tracebacks).
    for argv, message in ((["--concurrency", "0"], "argument --concurrency: must be at least 1, not 0"),
                          (["--loglevel", "LOUD"], "argument --loglevel: invalid choice: 'LOUD'")):
        proc = subprocess.run([BGE_M3, "worker", *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_tiny_model_into_the_current_folder_puts_its_manifest_beside_it(tmp_path):
    """``tiny-model .`` wrote ``./.manifest.json`` inside the model folder; the printed command
    is quoted for a shell (a path with a space)."""
    folder = tmp_path / "my model"
    folder.mkdir()
    proc = subprocess.run([BGE_M3, "tiny-model", "."], cwd=folder, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    manifest = tmp_path / "my model.manifest.json"
    assert manifest.is_file() and not list(folder.glob("*manifest*"))
    assert f"BGE_M3_MODEL_DIR='{folder}' BGE_M3_MANIFEST='{manifest}' " in proc.stdout, proc.stdout


def test_a_path_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = subprocess.run([BGE_M3, "tiny-model", str(blocker)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"bge-m3 tiny-model: [Errno 17] File exists: '{blocker}'"
    proc = subprocess.run([BGE_M3, "manifest", str(tmp_path), "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("bge-m3 manifest: [Errno 21] Is a directory")
    assert "Traceback" not in proc.stderr


def test_redact_url():
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert "s3cret" not in redact_url("rediss://user:s3cret@h/0")
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    # redis-py also reads a password from the query string, and a socket URL has no host.
    assert redact_url("redis://h:6379/0?password=s3cret&x=1") == "redis://h:6379/0?password=***&x=1"
    assert (redact_url("redis+socket:///run/r.sock?db=1&Password=s3cret")
            == "redis+socket:///run/r.sock?db=1&Password=***")
    assert redact_url("redis://u:s3c@ret@[::1]:6379/0") == "redis://u:***@[::1]:6379/0"
    # a parsed query's value runs to the next &, whatever it holds
    assert redact_url("redis://h/0?password=s3'c r\"et&x=1") == "redis://h/0?password=***&x=1"
    # free text (an error quoting a URL): every credential form, the value ending at a space
    said = scrub("GET https://u:s3cret@m.internal/x?password=s3cret failed: 'Bearer s3cret' x")
    assert said == "GET https://***@m.internal/x?password=*** failed: 'Bearer ***' x"


def test_packaged_manifest_is_the_pin():
    manifest = load_manifest(PACKAGED_MANIFEST)
    assert manifest.repo_id == "BAAI/bge-m3"
    assert manifest.revision == "5617a9f61b028005a4858fdac845db406aefb181"
    assert len(manifest.files) == 12
    assert manifest.entry("pytorch_model.bin").size == 2271145830


def test_cli_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "bge_m3.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    table = lines[lines.index("commands:") + 1:]
    table = table[:table.index("")] if "" in table else table
    assert [line.split()[0] for line in table] == ["tiny-model", "manifest", "verify", "download",
                                                   "worker", "api", "up"]
    assert all(line.startswith("  ") and len(line.split()) > 1 for line in table)  # each described


def test_manifest_command_matches_tiny_model_manifest(tiny_model, tmp_path):
    out = tmp_path / "m.json"
    proc = subprocess.run([BGE_M3, "manifest", str(tiny_model.dir), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["files"] == json.loads(tiny_model.manifest.read_text())["files"]
    assert [f["path"] for f in json.loads(out.read_text())["files"]] == sorted(
        p.name for p in tiny_model.dir.iterdir())
