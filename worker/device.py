"""Which device and dtype the worker computes on.

CUDA when available (fp16: FlagEmbedding's own serving precision; its 10-bit
mantissa keeps closer to fp32 than bf16, and both have the same peak on current
cards), else CPU fp32. ``BGE_M3_DEVICE`` and ``CPU_ONLY=1`` override. The worker
uses the threads pool, so nothing forks after CUDA is touched here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class DeviceUnavailable(RuntimeError):
    """The device ``BGE_M3_DEVICE`` names does not exist on this machine."""


@dataclass(frozen=True)
class Placement:
    device: str          # torch device string: "cpu", "cuda:0"
    dtype_name: str      # "float32", "float16", "bfloat16"
    description: str     # for logs and readiness: "cpu" or "cuda:0 (NVIDIA H200)"

    @property
    def label(self) -> str:
        """Short precision label for the "Model loaded" line."""
        return {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16"}[self.dtype_name]

    def torch_dtype(self, torch: Any) -> Any:
        return getattr(torch, self.dtype_name)


def choose(requested: str, torch: Any) -> Placement:
    """Resolve ``auto``/``cpu``/``cuda``/``cuda:N`` against what this machine has."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return Placement("cpu", "float32", "cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"BGE_M3_DEVICE={requested} but no CUDA device is available "
                                "(unset it, or set CPU_ONLY=1, to run on the CPU)")
    device = "cuda:0" if requested in {"auto", "cuda"} else requested
    index = int(device.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(f"BGE_M3_DEVICE={requested} but only {count} CUDA device(s) "
                                "are visible")
    name = torch.cuda.get_device_name(index)
    return Placement(device, "float16", f"{device} ({name})")


STICKY_ERRORS = ("CUDA error", "device-side assert", "illegal memory access",
                 "unspecified launch failure", "CUBLAS_STATUS_EXECUTION_FAILED")
"""Text of errors after which a CUDA context fails every later call too, until the process
exits: retrying such a pass (or any other) can only fail again."""


def is_sticky(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the device unusable for the rest of the process. Out of memory is
    not: it fails one pass, and the batcher's halving retries recover from it."""
    text = f"{type(exc).__name__}: {exc}"
    return "out of memory" not in text.lower() and any(marker in text for marker in STICKY_ERRORS)
