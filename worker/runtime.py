"""One worker process's serving state: verified model, batcher, readiness heartbeat, counters.

``boot`` runs the gate, loads the model once, runs a warm-up forward pass and
starts the batcher; ``ready`` announces the worker only after that; ``shutdown``
withdraws it. There is one Runtime per process (``current()``), created by the
Celery ``worker_init`` handler, never at import.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from typing import Any, Iterator

from bge_m3 import heap, workers
from bge_m3.jobs import JobStore
from bge_m3.queue import redis_client
from bge_m3.settings import Settings
from worker import faults, gate
from worker.batcher import Batcher
from worker.counters import Counters
from worker.logs import get_logger
from worker.planning import pass_cost
from worker.releases import Releases
from worker.sweep import Sweeper

WARMUP_TEXT = "BGE-M3 warm-up: dense, sparse and ColBERT from one forward pass."
"""The text of the warm-up forward pass run before the worker announces itself."""

GIL_SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits (CPython's default is 0.005). The
batcher thread returns from every CUDA sync wanting the GIL back while task threads serialise
results; at the default it can queue 5 ms behind them each time, with the GPU idle."""

EXIT_DEVICE_FAILED = 6
"""Exit status when the device failed in a way no later pass recovers from (a sticky CUDA error)."""

WITHDRAW_WAIT_SECONDS = 2.0
"""How long withdrawing readiness waits for a heartbeat already announcing the worker."""

log = get_logger()
_current: "Runtime | None" = None


def current() -> "Runtime":
    if _current is None:
        raise RuntimeError("the worker runtime is not booted (start with `bge-m3 worker`)")
    return _current


class Runtime:
    def __init__(self, settings: Settings, hostname: str):
        self.settings = settings
        self.hostname = hostname
        self.instance = secrets.token_hex(8)  # this process, in its leases and readiness record
        self.redis = redis_client(settings.redis_dsn)
        self.store = JobStore(self.redis, settings.result_ttl)
        self.counters = Counters(self.redis, workers.STATS_PREFIX + hostname)
        self.started_at = time.time()
        self.encoder: Any = None
        self.batcher: Batcher | None = None
        self.verified: gate.Verified | None = None
        self.placement: Any = None
        self.frozen_objects = 0  # heap.freeze() after the warm-up
        self._announce_lock = threading.Lock()  # a record read before a state change lands before it
        self._stop = threading.Event()
        self._wake = threading.Event()  # announce now, not at the next beat (drain, withdraw)
        self._heartbeat: threading.Thread | None = None
        self._deliveries: set[str] = set()  # lease tokens of the deliveries running here now
        self.releases = Releases()  # leases left by deliveries that ended while Redis failed
        self.sweeper = Sweeper(self.store, self.redis, settings, hostname)  # lost messages
        self._deliveries_lock = threading.Lock()
        self._consuming = False  # the Celery consumer holds a broker connection (worker.steps)
        self._draining = False  # a warm shutdown began: running jobs finish, no new ones come

    def boot(self) -> "Runtime":
        # Only the verified folder is read, and never the network. Set before transformers is
        # imported (it reads them then); the gate's downloader speaks the hub's /resolve/
        # protocol over requests and does not consult them.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from worker import model as model_module
        from worker.device import choose
        from worker.encoder import MODES, Encoder

        model_module.require_torch()
        # The device before the gate: a worker whose GPU is not visible exits at once instead of
        # hashing 2.3 GB first, and again on every restart its supervisor makes.
        self.placement = choose(self.settings.device, model_module.torch)
        self.verified = gate.check(self.settings)
        threads = model_module.torch_threads(self.settings.torch_threads)
        faults.load_delay(self.settings.test_load_delay)  # test-only; 0 by default
        manifest = self.verified.manifest
        view = model_module.verified_view(self.settings.model_dir, [f.path for f in manifest.files],
                                          self.verified.handles)
        t0 = time.perf_counter()
        try:
            m3 = model_module.M3Model(view, self.placement,
                                      colbert_half=self.settings.colbert_dtype == "float16")
        finally:  # only links; what was read is in memory (or mapped) by now
            shutil.rmtree(view, ignore_errors=True)
            self.verified.release()
        self.encoder = Encoder(m3, self.settings.colbert_dtype)
        log.info("Model loaded: %s@%s (%s, %d-dim) in %.1f s", manifest.repo_id, manifest.revision[:7],
                 self.placement.label, m3.hidden, time.perf_counter() - t0)
        log.info("Device: %s", self.placement.description)
        if self.max_length() < self.settings.max_length:
            log.warning("BGE_M3_MAX_LENGTH %d is more than the model's %d positions: texts are cut "
                        "at %d tokens", self.settings.max_length, m3.max_positions, m3.max_positions)
        log.debug("torch CPU threads: %d", threads)
        self.batcher = Batcher(self.encoder.run_batch, self.settings.max_batch_tokens,
                               self.settings.batch_wait_ms, on_batch=self.counters.add_batch,
                               start_batch=self.encoder.start_batch if self.encoder.asynchronous else None,
                               on_device_failed=self._device_failed)
        t0 = time.perf_counter()
        self.batcher.run_direct(self.encoder.tokenize([WARMUP_TEXT], 64, True), frozenset(MODES))
        log.info("Warm-up forward pass: %.0f ms", (time.perf_counter() - t0) * 1000)
        ids = self.encoder.tokenize([WARMUP_TEXT], 64, True)[0] * 64  # long enough for any width
        self.batcher.pass_tokens, fixed, per_token = pass_cost(
            lambda rows, width: self.batcher.run_direct([ids[:width]] * rows, frozenset(MODES)),
            self.settings.max_batch_tokens)
        log.info("Forward pass cost: %.1f ms + %.4g ms per padded token: a batch takes at most %s "
                 "tokens of padding", fixed, per_token, f"{self.batcher.pass_tokens:,}")
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        self.frozen_objects = heap.freeze()
        self.batcher.start()
        _set_current(self)
        return self

    def info(self) -> dict[str, Any]:
        manifest = self.verified.manifest if self.verified else None
        return {
            "hostname": self.hostname, "device": self.placement.description if self.placement else None,
            "dtype": self.placement.dtype_name if self.placement else None,
            "model": manifest.repo_id if manifest else None,
            "revision": manifest.revision if manifest else None,
            "manifest_digest": self.verified.report.manifest_digest if self.verified else None,
            "dimension": self.encoder.dimension if self.encoder else None,
            "max_batch_tokens": self.settings.max_batch_tokens,
            "pass_tokens": self.batcher.pass_tokens if self.batcher else None,
            "max_length": self.max_length(), "pid": os.getpid(),
            "frozen_objects": self.frozen_objects,
            "started_at": self.started_at, "instance": self.instance,
            "accepting": self._consuming and not self._draining,
        }

    @contextlib.contextmanager
    def delivery(self, token: str) -> Iterator[None]:
        """Mark a delivery (by its lease token) live in this process while it runs."""
        with self._deliveries_lock:
            self._deliveries.add(token)
        try:
            yield
        finally:
            with self._deliveries_lock:
                self._deliveries.discard(token)

    def delivery_live(self, token: str) -> bool:
        with self._deliveries_lock:
            return token in self._deliveries

    def max_length(self) -> int:
        """The longest text in tokens: the setting, or the model's positions when fewer."""
        positions = self.encoder.max_positions if self.encoder else None
        return min(self.settings.max_length, positions or self.settings.max_length)

    def ready(self) -> None:
        """Announce readiness now and keep it fresh until shutdown."""
        self._announce()
        log.info("Ready: %s consuming queue with %d threads, %s-token batches", self.hostname,
                 self.settings.worker_threads, f"{self.settings.max_batch_tokens:,}")
        self._heartbeat = threading.Thread(target=self._beat, name="bge-m3-heartbeat", daemon=True)
        self._heartbeat.start()

    def _announce_now(self) -> None:
        with self._announce_lock:
            workers.announce(self.redis, self.hostname, self.info())

    def _announce(self) -> None:
        try:
            self._announce_now()
        except Exception as exc:  # noqa: BLE001 - Celery would swallow it; the heartbeat retries
            log.warning("readiness not announced now (%s); retrying every %.0f s", exc,
                        workers.HEARTBEAT_INTERVAL)

    def set_consuming(self, consuming: bool) -> None:
        """The consumer got (or lost) its broker connection: ready only while it has one, since a
        worker that cannot take messages would only make sync callers wait for their timeout."""
        if consuming == self._consuming:
            return
        self._consuming = consuming
        if self._heartbeat is None or self._stop.is_set() or self._draining:
            return  # not announced yet (ready() will), or going away anyway
        if consuming:
            log.info("Consumer connected to the broker: accepting jobs")
        else:
            log.warning("Consumer lost the broker: not accepting jobs until it reconnects")
        self._announce()

    @property
    def draining(self) -> bool:
        """A warm (or cold) shutdown began: a delivery not yet owning its job hands it back."""
        return self._draining

    def drain(self) -> None:
        """A warm shutdown began: the jobs running finish, but no new one will be taken, so the
        record says not accepting at once (not when the last job ends). It stays, alive, for the
        leases of those jobs. Celery calls this from its SIGTERM handler, on the main thread,
        which may be inside ``_announce_now`` holding its lock: so the heartbeat thread writes
        the record, woken here, and this neither locks nor waits on Redis."""
        if self._draining:
            return
        self._draining = True
        log.info("Draining: %s takes no new jobs; the running ones finish", self.hostname)
        self._wake.set()

    def _beat(self) -> None:
        while True:
            self._wake.wait(workers.HEARTBEAT_INTERVAL)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._announce_now()
                self.counters.flush()  # batches of jobs that ended without a terminal write
                self.releases.retry(self.store)
                self.sweeper.beat()
            except Exception as exc:  # noqa: BLE001 - keep beating through a Redis blip
                log.warning("heartbeat failed: %s", exc)

    def _device_failed(self, exc: BaseException) -> None:
        """Exit at once: a CUDA context with a sticky error fails every pass until the process
        ends, and a worker that stayed ready would fail every job sent to it. Jobs in flight stay
        unacked and go to another worker after the visibility timeout; one that breaks the device
        every time ends ``worker_lost`` after its retries, like any poison job."""
        log.critical("Device %s failed (%s): withdrawing readiness and exiting %d",
                     self.placement.description if self.placement else "?", exc, EXIT_DEVICE_FAILED)
        self._withdraw()
        logging.shutdown()
        os._exit(EXIT_DEVICE_FAILED)

    def shutdown(self) -> None:
        self._withdraw()
        if self.batcher is not None:
            self.batcher.stop()

    def _withdraw(self) -> None:
        """Stop the heartbeat and delete the readiness key (it would expire with its TTL anyway)."""
        self._stop.set()
        self._wake.set()
        heartbeat = self._heartbeat
        if heartbeat is not None and heartbeat is not threading.current_thread():
            heartbeat.join(WITHDRAW_WAIT_SECONDS)  # an announce in flight would undo the delete
        try:
            workers.withdraw(self.redis, self.hostname)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not withdraw readiness: %s", exc)

    def count(self, **fields: int) -> Any:
        """``Counters.pipeline``: the statistics to write with a job's terminal write."""
        return self.counters.pipeline(**fields)


def _set_current(runtime: Runtime) -> None:
    global _current
    _current = runtime
