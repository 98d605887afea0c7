"""A stand-in for a GPU's forward pass, so the worker's host side can be measured without one.

The worker's host work for a bulk job (tokenizing, lexical weights, serialising, streaming the
result to Redis, Celery) is what kept the H200 runs far below the bare forward. This module
replaces ``M3Model.forward`` with a pass that costs what a GPU pass costs *the host*:

- ``launch_ms`` of Python-side kernel launching, with the GIL held (a busy loop);
- the pass's time on the device, ``pass_ms + padded tokens / tokens_per_s``, spent with the
  GIL released (``time.sleep``);
- outputs of the real model's shapes (``hidden``-d dense and ColBERT, ColBERT float16).

Two ways to move the outputs, as ``worker.model`` does on CUDA now and did before:

- ``pipelined=1`` (now): ``launch`` returns after the launches, and the device runs its queue
  in order, one pass after another, like a CUDA stream; outputs land by DMA in reused pinned
  blocks (no host CPU: views of a buffer made once), after ``bytes / dma_bytes_per_s`` more
  device time; ``wait()`` sleeps until the pass's end on that device clock.
- ``pipelined=0`` (before): the launch waits for the pass, then the host copies the outputs
  into fresh pageable arrays, as ``tensor.cpu().numpy()`` does.

The tokenizer and the heads' shapes come from the (tiny) model folder the worker verified.
Nothing here is a GPU: it is a mock of one, for ``bench/gpu_sim_bench.py`` only. It is
installed into a worker process by a ``sitecustomize`` that ``bench/gpu_sim_bench.py`` writes.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

ENV = "BGE_M3_SIM_GPU"
"""Environment variable carrying the simulator's settings (``key=value,...``) to the worker."""


@dataclass(frozen=True)
class Profile:
    """What one forward pass costs the host. The defaults are fitted to H200 run 4 (the bare
    forward of the bench's 2,000 texts: 138,101 tokens in 15 passes, 0.226 s) and to the
    kernel-launch time of a 24-layer encoder (about 500 launches of ~6 us each)."""
    tokens_per_s: float = 700_000.0
    pass_ms: float = 1.0
    launch_ms: float = 3.0
    hidden: int = 1024
    pipelined: int = 1
    dma_bytes_per_s: float = 20e9

    @classmethod
    def parse(cls, text: str) -> "Profile":
        fields = dict(item.split("=", 1) for item in text.split(",") if item)
        return cls(**{k: (int if k in ("hidden", "pipelined") else float)(v) for k, v in fields.items()})

    def text(self) -> str:
        return ",".join(f"{k}={getattr(self, k)}" for k in self.__dataclass_fields__)

    def device_s(self, rows: int, width: int) -> float:
        return self.pass_ms / 1000 + rows * width / self.tokens_per_s

    def launch(self) -> tuple[float, float]:
        """Spend the launches' host time, holding the GIL as the launching thread does; returns
        when they began and ended (``perf_counter``)."""
        begun = time.perf_counter()
        end = begun + self.launch_ms / 1000
        while time.perf_counter() < end:
            pass
        return begun, end

    def run(self, rows: int, width: int) -> None:
        """Spend one pass's host time: the launches (GIL held), then the wait (GIL released)."""
        begun, end = self.launch()
        time.sleep(max(0.0, begun + self.device_s(rows, width) - end))


class Outputs:
    """Random unit vectors to copy outputs from (made once: the copy is the cost, not the values)."""

    def __init__(self, hidden: int, max_tokens: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        vecs = rng.standard_normal((max_tokens, hidden), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        self.colbert = vecs.astype(np.float16)
        self.dense = vecs[:1024].copy()
        self.weights = rng.random(max_tokens, dtype=np.float32)


def install(profile: Profile) -> None:
    """Patch ``worker.model.M3Model`` in this process: the real tokenizer, simulated passes."""
    from worker import model as m

    original = m.M3Model.__init__

    def __init__(self, folder, placement):
        original(self, folder, placement)
        self.hidden = profile.hidden
        self._sim = Outputs(profile.hidden, 1 << 16)
        self._device_free = 0.0  # when the simulated device's queue runs dry (perf_counter)

    m.M3Model.__init__ = __init__
    if not hasattr(m.M3Model, "launch"):  # a version from before the pipelined passes
        blocking = _launch(Profile(**{**vars(profile), "pipelined": 0}), m)
        m.M3Model.forward = lambda self, *args: blocking(self, *args).wait()
        return
    m.M3Model.asynchronous = property(lambda self: bool(profile.pipelined))
    m.M3Model.launch = _launch(profile, m)


class _Launched:
    """``worker.model.Launched``'s stand-in: the outputs, valid once ``done`` has passed."""
    __slots__ = ("out", "done")

    def __init__(self, out, done):
        self.out, self.done = out, done

    def wait(self):
        if self.done is not None:
            self.done.synchronize()
        return self.out


class _Until:
    """A CUDA event's stand-in: ``synchronize`` waits (GIL released) for a time on the device clock."""
    __slots__ = ("at",)

    def __init__(self, at: float):
        self.at = at

    def synchronize(self) -> None:
        time.sleep(max(0.0, self.at - time.perf_counter()))


def _launch(profile: Profile, m):
    def launch(self, rows, dense: bool, sparse: bool, colbert: bool):
        width, count = max(len(r) for r in rows), len(rows)
        ids = np.full((count, width), self.pad_id, dtype=np.int64)  # the real pass's host prep
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
        sim, out, span = self._sim, m.BatchOutput(ids=ids), count * (width - 1)
        if not profile.pipelined:
            profile.run(count, width)
            copy = np.copy  # .cpu(): the host copies into fresh memory
        else:
            copy = lambda a: a  # noqa: E731 - DMA into a reused pinned block: no host work
            begun, end = profile.launch()
            # The device starts on the first kernel while the rest are launched, once it is free.
            moved = count * (profile.hidden * 4 + width * 4) + (span * profile.hidden * 2 if colbert else 0)
            start = max(begun, self._device_free)
            self._device_free = max(end, start + profile.device_s(count, width)
                                    + moved / profile.dma_bytes_per_s)
        if dense:
            out.dense = copy(sim.dense[np.arange(count) % len(sim.dense)])
        if sparse:
            out.weights = np.resize(sim.weights, (count, width))
        if colbert:
            flat = np.resize(sim.colbert, (span, profile.hidden)) if span > len(sim.colbert) \
                else copy(sim.colbert[:span])
            out.colbert = flat.reshape(count, width - 1, profile.hidden)
        return _Launched(out, _Until(self._device_free) if profile.pipelined else None)
    return launch


def install_from_env() -> None:
    if os.environ.get(ENV):
        install(Profile.parse(os.environ[ENV]))
