"""Prometheus metrics of the streams' health, and the per-request record they are taken from.

Everything is created by ``Metrics`` on its own registry (no module-level metric objects), so
each app has its own. With several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by the command
line before any worker starts: prometheus-client then keeps values in files shared by the
workers and ``/metrics`` sums them (``multiprocess_mode`` says how for the gauge).

Hot-path cost: a chunk's gap goes into a ``GapCounter`` local to its stream (a bisect and two
additions) and the stream's gaps reach the histogram in one go when it ends; labelled children
are cached, not looked up per request. ``bench/`` shows the CPU with and without metrics.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from proxy.errors import ProxyError, UpstreamStatusError

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# ProxyError code -> upstream error kind (the label of proxy_upstream_errors_total).
_KINDS = {
    "upstream_unreachable": "connect",
    "upstream_pool_exhausted": "connect",
    "upstream_timeout": "first_byte_timeout",
    "upstream_idle_timeout": "idle_timeout",
    "upstream_connection_error": "reset",
    "upstream_malformed": "malformed",
    "upstream_truncated": "truncated",
    "upstream_stream_error": "stream_error",
    "upstream_deadline": "deadline",
    "upstream_error": "malformed",
}


def error_kind(error: ProxyError) -> str | None:
    """The upstream error kind of ``error``, or None if it is not the upstream's fault."""
    if isinstance(error, UpstreamStatusError):
        return "status"
    return _KINDS.get(error.code or "")


@dataclass(slots=True)
class Access:
    """What the access log line and the metrics say about one request."""

    request_id: str
    client: str
    method: str
    path: str
    started: float  # time.perf_counter() when the request arrived
    status: int = 0
    model: str | None = None
    upstream: str | None = None
    stream: bool | None = None
    ttft: float | None = None  # seconds from the request to the first content chunk written
    chunks: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # complete, rejected (a client error), client_disconnect, upstream_<kind>, shutdown, error
    outcome: str = "complete"


class Metrics:
    """The proxy's metrics; ``render()`` is the /metrics body."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        registry = self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model", "upstream")
        self.requests = Counter(
            "proxy_requests",
            "Chat completion requests by public model, upstream, stream flag and status.",
            (*labels, "stream", "status"),
            registry=registry,
        )
        self.ttft = Histogram(
            "proxy_time_to_first_token_seconds",
            "From the client's request to the first content chunk written to it.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.chunk_gap = Histogram(
            "proxy_chunk_gap_seconds",
            "Time between two chunks written to a streaming client.",
            labels,
            buckets=GAP_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "proxy_request_duration_seconds",
            "Whole chat requests, from the request to the last byte written.",
            (*labels, "stream"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "proxy_streams_in_flight",
            "Streaming responses being written right now.",
            labels,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.upstream_errors = Counter(
            "proxy_upstream_errors",
            "Upstream failures by kind: connect, first_byte_timeout, idle_timeout, status, "
            "reset, malformed, truncated, stream_error.",
            ("upstream", "kind"),
            registry=registry,
        )
        self.disconnects = Counter(
            "proxy_client_disconnects",
            "Requests whose client went away before the answer was complete.",
            labels,
            registry=registry,
        )
        self.tokens = Counter(
            "proxy_tokens",
            "Tokens by model as reported by the upstream's usage (never estimated).",
            (*labels, "type"),
            registry=registry,
        )
        self.usage = Counter(
            "proxy_usage_reports",
            "Completed answers by whether the upstream reported usage (usage=reported|missing).",
            (*labels, "usage"),
            registry=registry,
        )

        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: ``labels()`` takes a lock and converts values."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def finish(self, access: Access, duration: float) -> None:
        """Account for one finished chat request."""
        model, upstream = access.model or "", access.upstream or ""
        stream = "true" if access.stream else "false"
        self.child(self.requests, model, upstream, stream, str(access.status)).inc()
        self.child(self.duration, model, upstream, stream).observe(duration)
        if access.ttft is not None:
            self.child(self.ttft, model, upstream).observe(access.ttft)
        if access.outcome == "client_disconnect":
            self.child(self.disconnects, model, upstream).inc()
        elif access.outcome.startswith("upstream_"):
            kind = access.outcome.removeprefix("upstream_")
            self.child(self.upstream_errors, upstream, kind).inc()
        elif access.outcome == "complete" and access.status == 200:
            reported = access.prompt_tokens is not None
            self.child(self.usage, model, upstream, "reported" if reported else "missing").inc()
            if reported:
                self.child(self.tokens, model, upstream, "prompt").inc(access.prompt_tokens or 0)
                completion = access.completion_tokens or 0
                self.child(self.tokens, model, upstream, "completion").inc(completion)

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class GapCounter:
    """The gaps of one stream, counted locally and added to the histogram when it ends.

    prometheus-client has no bulk observation, so ``flush`` adds to the child's bucket and sum
    values directly (``_buckets``, ``_sum``: the same objects ``observe()`` increments, in
    single- and multi-process mode); ``test_gap_counter_equals_observe`` pins this down.
    """

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def add(self, gap: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, gap)] += 1
        self.total += gap

    def flush(self) -> None:
        for index, count in enumerate(self.counts):
            if count:
                self.child._buckets[index].inc(count)
                self.counts[index] = 0
        if self.total:
            self.child._sum.inc(self.total)
            self.total = 0.0
