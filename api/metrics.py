"""Prometheus metrics: requests by route and status, job latency, queue depth, ready workers.

Each app has its own registry (tests build many apps in one process). Queue depth
and ready workers are read from Redis at scrape time, so they are right whichever
gunicorn process answers; request counters and job histograms are summed over the
processes of one ``bge-m3 api --workers N`` through prometheus_client's multiprocess
files (``shared_dir``).
"""
from __future__ import annotations

import time
from typing import Any, Iterator

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from bge_m3.records import Job
from bge_m3.queue import queue_depth
from bge_m3.workers import REGISTRY_KEY, STATS_PREFIX, ready_workers

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                   120, 300, 600)
"""Seconds; from a cached tiny-model answer (~1 ms) to the worker's hard time limit."""

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted under their own label; any other (gunicorn passes made-up ones through) is
``OTHER``, so unauthenticated clients cannot grow the label set without bound."""


WORKER_COUNTERS = (("texts", "bge_m3_worker_texts", "Texts of the jobs a worker completed"),
                   ("tokens", "bge_m3_worker_tokens", "Tokens a worker's forward passes encoded"),
                   ("padded_tokens", "bge_m3_worker_padded_tokens",
                    "Tokens a worker's forward passes computed, padding included"),
                   ("forward_passes", "bge_m3_worker_forward_passes", "A worker's forward passes"))
"""Fields of a worker's statistics hash (``worker.counters``) exported as counters per worker,
beside its jobs by outcome: they live in Redis, so they outlive an API restart, and rate() of
tokens gives each worker's throughput, tokens / padded_tokens its padding efficiency."""


class _RedisGauges:
    def __init__(self, redis: Any):
        self.redis = redis

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            depth, workers = queue_depth(self.redis), len(ready_workers(self.redis))
        except Exception:  # a scrape must still answer when Redis is down
            depth = workers = None
        try:  # on its own: a stats hash that cannot be read must not hide the queue depth
            stats = self._worker_stats() if depth is not None else {}
        except Exception:  # noqa: BLE001
            stats = {}
        if depth is not None:  # unknown while Redis is down: absent, not a zero an autoscaler acts on
            yield GaugeMetricFamily("bge_m3_queue_depth", "Jobs waiting in the queue", value=depth)
            yield GaugeMetricFamily("bge_m3_ready_workers", "Verified, ready workers", value=workers)
            yield from _worker_counters(stats)
        yield GaugeMetricFamily("bge_m3_redis_up", "1 when Redis answered this scrape",
                                value=0 if depth is None else 1)

    def _worker_stats(self) -> dict[str, dict[str, str]]:
        """Each announced worker's statistics hash (a draining one's too), by hostname."""
        names = self.redis.zrange(REGISTRY_KEY, 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(STATS_PREFIX + name)
        return dict(zip(names, pipe.execute())) if names else {}


def _worker_counters(stats: dict[str, dict[str, str]]) -> Iterator[CounterMetricFamily]:
    jobs = CounterMetricFamily("bge_m3_worker_jobs", "Jobs a worker ended, by outcome",
                               labels=["worker", "outcome"])
    families = [(field, CounterMetricFamily(name, text, labels=["worker"]))
                for field, name, text in WORKER_COUNTERS]
    for worker, fields in sorted(stats.items()):
        jobs.add_metric([worker, "succeeded"], int(fields.get("jobs", 0)))
        jobs.add_metric([worker, "failed"], int(fields.get("failed_jobs", 0)))
        for field, family in families:
            family.add_metric([worker], int(fields.get(field, 0)))
    yield jobs
    for _, family in families:
        yield family


class Metrics:
    def __init__(self, redis: Any, shared_dir: str | None = None):
        """``shared_dir``: prometheus_client's multiprocess folder, where every gunicorn process
        of one ``bge-m3 api`` writes its counters (``api.serve`` sets it up before the fork);
        a scrape then sums them all, whichever process answers it."""
        gauges = _RedisGauges(redis)
        self.registry = CollectorRegistry()
        self.requests = Counter("bge_m3_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram("bge_m3_http_request_seconds", "HTTP request latency",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.job_seconds = {
            phase: Histogram(f"bge_m3_job_{phase}_seconds", f"Job {phase} time (finished jobs)",
                             buckets=LATENCY_BUCKETS, registry=self.registry)
            for phase in ("queue", "compute", "total")}
        self.registry.register(gauges)
        # What a scrape reads: this process's registry, or, built once here, every process's
        # files plus the Redis gauges (read from Redis, so the same in every process).
        self.exposed = self.registry
        if shared_dir:
            from prometheus_client import multiprocess

            self.exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposed, path=shared_dir)
            self.exposed.register(gauges)

    def observe_job(self, job: Job) -> None:
        stats = job.stats or {}
        for phase, hist in self.job_seconds.items():
            ms = stats.get(f"{phase}_ms")
            if isinstance(ms, (int, float)) and ms >= 0:
                hist.observe(ms / 1000.0)

    def install(self, app: Flask) -> None:
        @app.before_request
        def _start() -> None:
            g.started = time.perf_counter()

        @app.after_request
        def _count(response: Response) -> Response:
            route = request.url_rule.rule if request.url_rule is not None else _route_of_405(app)
            method = request.method if request.method in METHODS else "OTHER"
            self.requests.labels(route, method, str(response.status_code)).inc()
            started = g.get("started")
            if started is not None:
                self.request_seconds.labels(route).observe(time.perf_counter() - started)
            return response

    def exposition(self) -> Response:
        return Response(generate_latest(self.exposed), content_type=CONTENT_TYPE_LATEST)


def _route_of_405(app: Flask) -> str:
    """The rule whose path matched when only the method did not (werkzeug sets no ``url_rule``
    for a 405), so ``POST /healthz`` counts under ``/healthz``; else ``<unmatched>``. Only the
    app's own rules become labels: unknown paths cannot grow the label set."""
    error = request.routing_exception
    if not isinstance(error, MethodNotAllowed) or not error.valid_methods:
        return "<unmatched>"
    try:
        rule, _ = app.url_map.bind_to_environ(request.environ).match(
            method=sorted(error.valid_methods)[0], return_rule=True)
    except HTTPException:
        return "<unmatched>"
    return rule.rule
