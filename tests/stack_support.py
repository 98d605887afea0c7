"""Helpers of the fault, load, fuzz and security suites: `bge-m3 api` as a real gunicorn
subprocess on a free port, and a direct, in-process encode of the tiny model to check results."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx

from bge_m3 import codec
from bge_m3.settings import Settings
from tests.support import BGE_M3, free_port, wait_for, worker_env

@dataclass
class ApiServer:
    proc: subprocess.Popen
    url: str
    log: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_api(settings: Settings, log_dir: Path, *, threads: int = 16, workers: int = 1,
              access_log: bool = False, **extra_env: str) -> ApiServer:
    """`bge-m3 api` (gunicorn, gthread) on 127.0.0.1 and a free port; returns once it answers."""
    settings = settings.replace(host="127.0.0.1", port=free_port())
    log = Path(log_dir) / f"api-{settings.port}.log"
    args = [BGE_M3, "api", "--workers", str(workers), "--threads", str(threads)]
    if access_log:
        args.append("--access-log")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, env=worker_env(settings, **extra_env), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = ApiServer(proc, f"http://127.0.0.1:{settings.port}", log)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"API exited {proc.returncode}:\n{server.output()[-3000:]}")
        try:
            return httpx.get(server.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, 60, interval=0.1, what="API answering")
    return server


class Reference:
    """The worker's own model and postprocessing, in this process, one text at a time: what every
    result item must equal whatever batch the worker put it in."""

    def __init__(self, model_dir: Path):
        import torch

        from worker.device import choose
        from worker.encoder import MODES, Encoder
        from worker.model import M3Model

        self.encoder = Encoder(M3Model(model_dir, choose("cpu", torch)))
        self.modes = frozenset(MODES)

    def items(self, texts: Sequence[str], max_length: int = 512) -> list[dict[str, Any]]:
        out = []
        for ids in self.encoder.tokenize(list(texts), max_length, True):
            row = self.encoder.run_batch([ids], [self.modes])[0]
            out.append(self.encoder.item(ids, row))
        return out


def same_item(got: dict[str, Any], want: dict[str, Any], modes: Sequence[str]) -> bool:
    """A stored result item equals the reference within float noise of batching (padding)."""
    import numpy as np

    if got["tokens"] != want["tokens"]:
        return False
    if "dense" in modes:
        a = np.array(_floats(got["dense"]), dtype=np.float32)
        b = np.array(_floats(want["dense"]), dtype=np.float32)
        if a.shape != b.shape or not np.allclose(a, b, atol=1e-5):
            return False
    if "sparse" in modes:
        if got["sparse"]["indices"] != want["sparse"]["indices"]:
            return False
        if not np.allclose(got["sparse"]["values"], want["sparse"]["values"], atol=1e-5):
            return False
    if "colbert" in modes:
        if got["colbert"]["shape"] != want["colbert"]["shape"]:
            return False
        a = np.array(_floats(got["colbert"]), dtype=np.float32)
        b = np.array(_floats(want["colbert"]), dtype=np.float32)
        if not np.allclose(a, b, atol=2e-3):  # float16 at rest
            return False
    return True


def _floats(value: Any) -> list[float]:
    """Dense or ColBERT in any of the API's forms: a float list, packed base64, or float rows."""
    if isinstance(value, list):
        return value
    if isinstance(value.get("data"), list):
        data = value["data"]
        return [x for row in data for x in row] if data and isinstance(data[0], list) else data
    return codec.unpack_floats(value)
