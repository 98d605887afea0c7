"""Model FLOPs per token and card peaks, for the MFU figure of ``bench/worker_bench.py --mfu``.

MFU counts only the matrix work the model must do (PaLM's definition): every
multiply-add is two FLOPs, padding and recomputation earn nothing, and the
denominator is the card's dense bf16 tensor peak (fp16's is the same on these cards).
"""
from __future__ import annotations

PEAK_BF16_TFLOPS = {
    "H200": 989.4,             # SXM
    "H200 NVL": 835.0,
    "H100 80GB HBM3": 989.4,   # SXM5
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}
"""Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of the CUDA device name."""


def peak_tflops(device_name: str) -> float | None:
    """The table's peak for ``device_name`` (longest matching key wins), or None if unknown."""
    hits = [key for key in PEAK_BF16_TFLOPS if key in device_name]
    return PEAK_BF16_TFLOPS[max(hits, key=len)] if hits else None


def flops_per_token(layers: int, hidden: int, ffn: int, seq_len: int, heads: bool = True) -> float:
    """Forward FLOPs for one token of an encoder at sequence length ``seq_len``.

    Per layer: Q, K, V and output projections (4 d^2 MACs), the MLP (2 d f), and attention's
    QK^T and AV (2 s d). The ColBERT (d^2) and sparse (d) heads are added when ``heads``.
    """
    macs = layers * (4 * hidden * hidden + 2 * hidden * ffn + 2 * seq_len * hidden)
    if heads:
        macs += hidden * hidden + hidden
    return 2.0 * macs


def mfu(tokens_per_s: float, flops_token: float, peak: float) -> float:
    """Fraction of ``peak`` (TFLOP/s) achieved."""
    return tokens_per_s * flops_token / (peak * 1e12)
