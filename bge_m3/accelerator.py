"""Which accelerator ``bge-m3 up`` will run its workers on, found without touching CUDA here.

``bge-m3 up`` spawns workers; a process that has initialised CUDA must not fork, so
the question is asked in a short child interpreter that imports torch, answers in
JSON and exits. The same child proves the worker's dependencies are installed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

PROBE_TIMEOUT = 120.0
"""Seconds the torch probe may take (a cold torch import on a slow disk takes tens of seconds)."""

_PROBE = """
import json, sys
try:
    import torch
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"})); sys.exit(0)
out = {"torch": torch.__version__, "cuda": False, "devices": []}
if sys.argv[1] != "cpu" and torch.cuda.is_available():
    out["cuda"] = True
    out["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(json.dumps(out))
"""


class EnvironmentProblem(RuntimeError):
    """This machine cannot run a worker as configured."""


@dataclass(frozen=True)
class Accelerator:
    mode: str                 # "gpu" or "cpu"
    devices: tuple[str, ...]  # CUDA device names, index = CUDA ordinal
    torch_version: str
    forced_cpu: bool = False

    def describe(self) -> str:
        if self.mode == "gpu":
            names = ", ".join(f"cuda:{i} {name}" for i, name in enumerate(self.devices))
            return f"GPU mode: {names} (torch {self.torch_version})"
        why = "forced by CPU_ONLY/BGE_M3_DEVICE=cpu" if self.forced_cpu else "no CUDA device found"
        return f"CPU mode: {why} (torch {self.torch_version})"

    def worker_device(self, requested: str, index: int) -> str:
        """``BGE_M3_DEVICE`` for worker ``index``: workers are spread round-robin over the GPUs."""
        if self.mode == "cpu":
            return "cpu"
        if requested.startswith("cuda:"):
            return requested
        return f"cuda:{index % len(self.devices)}"


def detect(requested: str, python: str = sys.executable) -> Accelerator:
    """Probe torch in a child process; ``requested`` is ``settings.device``."""
    try:
        done = subprocess.run([python, "-c", _PROBE, requested], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(f"torch did not import within {PROBE_TIMEOUT:.0f}s") from exc
    try:
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise EnvironmentProblem("the torch probe failed: " + " | ".join(tail)) from exc
    if "error" in info:
        raise EnvironmentProblem(
            f"the worker needs torch ({info['error']}); install it: "
            "pip install torch && pip install -e '.[worker]'")
    if requested == "cpu":
        return Accelerator("cpu", (), info["torch"], forced_cpu=True)
    if info["cuda"]:
        devices = tuple(info["devices"])
        if requested.startswith("cuda:") and int(requested.split(":")[1]) >= len(devices):
            raise EnvironmentProblem(f"BGE_M3_DEVICE={requested} but only {len(devices)} CUDA "
                                     "device(s) exist")
        return Accelerator("gpu", devices, info["torch"])
    if requested != "auto":
        raise EnvironmentProblem(f"BGE_M3_DEVICE={requested} but torch {info['torch']} sees no "
                                 "CUDA device; unset it or use CPU_ONLY=1")
    return Accelerator("cpu", (), info["torch"])
