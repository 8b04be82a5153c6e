"""Prometheus metrics of a gateway replica (its own registry; engines expose theirs)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("floe_requests_total", "Requests answered, by route, model, adapter and status.",
                                ["route", "model", "adapter", "status"], registry=r)
        self.ttft = Histogram("floe_time_to_first_token_seconds", "Time from request to first streamed token.",
                              ["route", "model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("floe_inter_token_latency_seconds", "Time between streamed chunks.",
                             ["route", "model"], buckets=_ITL_BUCKETS, registry=r)
        self.duration = Histogram("floe_request_duration_seconds", "Whole request time.",
                                  ["route", "model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("floe_requests_in_flight", "Requests in this gateway replica (queue depth).",
                               registry=r)
        self.adapters = Gauge("floe_adapters", "Adapter versions in the registry, by state.", ["state"],
                              registry=r)
        self.adapters_loaded = Gauge("floe_adapters_loaded", "Adapters loaded in the engine replica scraped.",
                                     registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StreamTimer:
    """TTFT and inter-token latency of one streamed answer."""

    def __init__(self, metrics: GatewayMetrics, route: str, model: str) -> None:
        self._m, self._labels = metrics, (route, model)
        self._start = time.perf_counter()
        self._last: float | None = None

    def chunk(self) -> None:
        now = time.perf_counter()
        if self._last is None:
            self._m.ttft.labels(*self._labels).observe(now - self._start)
        else:
            self._m.itl.labels(*self._labels).observe(now - self._last)
        self._last = now

    def done(self) -> None:
        self._m.duration.labels(*self._labels).observe(time.perf_counter() - self._start)
