"""``GET /metrics``: Prometheus metrics through ``prometheus_client``.

One process: each app has its own registry (two apps in one process, as in tests, do not collide).
Several processes (``--workers N``, or gunicorn): when ``PROMETHEUS_MULTIPROC_DIR`` is set before
``prometheus_client`` is first imported, every process writes its samples to files in that folder and a
scrape of any process sums them (``MultiProcessCollector``), so one scrape covers every worker.
``fsllm serve --workers N`` creates that folder for its workers; under another process manager set it
yourself (an empty folder, per server).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

#: the environment variable ``prometheus_client`` reads for multiprocess mode
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def multiprocess_mode() -> bool:
    """Whether samples go to ``PROMETHEUS_MULTIPROC_DIR`` (shared by the processes of one server)."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The server's metrics; names are those docs/serving.md lists (dashboards keep working)."""

    def __init__(self) -> None:
        self.shared = multiprocess_mode()
        # multiprocess: the samples live in files, collected at scrape time; no registry to register in
        self.registry = None if self.shared else CollectorRegistry()
        reg = self.registry
        self.requests = Counter("fsllm_requests", "HTTP requests by route and status code.", ["route", "status"],
                                registry=reg)
        self.latency = Histogram("fsllm_request_duration_seconds",
                                 "Time from request received to response sent, by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=reg)
        self.batch_size = Histogram("fsllm_batch_size", "Model inputs per forward (texts; NER: windows).",
                                    buckets=BATCH_BUCKETS, registry=reg)
        self.texts = Counter("fsllm_texts", "Texts run through the model.", registry=reg)
        # livesum: the sum over the processes alive now (a stopped worker's queue is not waiting any more)
        self.queue_depth = Gauge("fsllm_queue_depth", "Texts waiting for a forward.", registry=reg,
                                 multiprocess_mode="livesum")
        self.in_flight = Gauge("fsllm_requests_in_flight", "Requests being handled.", registry=reg,
                               multiprocess_mode="livesum")

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def render(self) -> bytes:
        """The exposition text: this process's registry, or every process's samples in multiprocess mode."""
        if self.shared:
            registry = CollectorRegistry()
            _multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def close(self) -> None:
        """This process stops serving: its live gauges leave the sums (multiprocess mode)."""
        if self.shared:
            _multiprocess.mark_process_dead(os.getpid())
