"""Prometheus metrics of the streams' health, taken from each request's access record.

Everything is created by ``Metrics`` on its own registry (no module-level metric objects), so
each app has its own. In one process the instruments are the proxy's own plain numbers
(``proxy.observability.local``: no locks, the same exposition). With several workers,
``PROMETHEUS_MULTIPROC_DIR`` is set by the command line before any worker starts: then they are
prometheus-client's, which keep values in files shared by the workers, and ``/metrics`` sums
them (``multiprocess_mode`` says how for a gauge).

Only prometheus-client's public API is used. Labelled children are cached, not looked up per
request (``labels()`` takes a lock and converts values). ``bench/`` shows the CPU with and
without metrics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

from proxy.errors import Outcome
from proxy.observability.local import LocalCounter, LocalGauge, LocalHistogram

if TYPE_CHECKING:
    from proxy.observability.access import Access

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# How ``/metrics`` sums the workers' values of a gauge (those the proxy uses).
GaugeMode = Literal["livesum", "max"]


class Metrics:
    """The proxy's metrics; ``render()`` is the /metrics body."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model", "upstream")
        self.requests = self._counter(
            "proxy_requests",
            "Chat completion requests by public model, upstream, stream flag and status.",
            (*labels, "stream", "status"),
        )
        self.ttft = self._histogram(
            "proxy_time_to_first_token_seconds",
            "From the client's request to the first content chunk written to it.",
            labels,
            TTFT_BUCKETS,
        )
        self.chunk_gap = self._histogram(  # observed on every chunk of every stream
            "proxy_chunk_gap_seconds",
            "Time between two chunks written to a streaming client.",
            labels,
            GAP_BUCKETS,
        )
        self.duration = self._histogram(
            "proxy_request_duration_seconds",
            "Whole chat requests, from the request to the last byte written.",
            (*labels, "stream"),
            DURATION_BUCKETS,
        )
        self.in_flight = self._gauge(
            "proxy_streams_in_flight",
            "Streaming responses being written right now.",
            labels,
            "livesum",
        )
        self.upstream_errors = self._counter(
            "proxy_upstream_errors",
            "Upstream failures by kind: connect, first_byte_timeout, idle_timeout, status, "
            "reset, malformed, truncated, stream_error.",
            ("upstream", "kind"),
        )
        self.disconnects = self._counter(
            "proxy_client_disconnects",
            "Requests whose client went away before the answer was complete.",
            labels,
        )
        self.tokens = self._counter(
            "proxy_tokens",
            "Tokens by model as reported by the upstream's usage (never estimated).",
            (*labels, "type"),
        )
        self.usage = self._counter(
            "proxy_usage_reports",
            "Completed answers by whether the upstream reported usage (usage=reported|missing).",
            (*labels, "usage"),
        )

        self.attempts = self._counter(
            "proxy_upstream_attempts",
            "Attempts by public model, deployment (upstream/model) and result (ok, or the "
            "failure's kind).",
            ("model", "deployment", "result"),
        )
        self.retries = self._counter(
            "proxy_retries",
            "Retries within a model (another attempt after a failure).",
            ("model",),
        )
        self.fallbacks = self._counter(
            "proxy_fallbacks",
            "Requests that went on to a fallback model.",
            ("model", "fallback"),
        )
        self.breaker = self._gauge(
            "proxy_breaker_open",
            "1 while a deployment's circuit breaker rests (open) or probes (half_open).",
            ("deployment", "state"),
            "max",
        )
        self.breaker_changes = self._counter(
            "proxy_breaker_changes",
            "Circuit breaker state changes by deployment and new state.",
            ("deployment", "state"),
        )

        self.key_requests = self._counter(
            "proxy_key_requests",
            "Requests by client key name (never the key) and status.",
            ("key", "status"),
        )
        self.key_tokens = self._counter(
            "proxy_key_tokens",
            "Tokens by client key name, as the upstream reported them.",
            ("key", "type"),
        )
        self.rate_limited = self._counter(
            "proxy_rate_limited",
            "Requests refused by a key's limits, by reason: requests, tokens, parallel.",
            ("key", "reason"),
        )
        self.limits_backend = self._gauge(
            "proxy_limits_backend",
            "1 for the limits backend breaker's current state (closed, open, half_open).",
            ("state",),
            "max",
        )
        self.limits_misses = self._gauge(
            "proxy_limits_misses",
            "Requests let through unchecked while the limits backend was down (allow).",
            (),
            "livesum",
        )

        self._children: dict[tuple[Any, ...], Any] = {}
        self._limits_shown: tuple[str, int] | None = None  # what the two gauges above show

    # Each kind of instrument: prometheus-client's with several workers (their shared files),
    # else the proxy's own (``proxy.observability.local``).

    def _counter(self, name: str, documentation: str, labels: Sequence[str]) -> Any:
        if self.multiprocess:
            return Counter(name, documentation, labels, registry=self.registry)
        return self._local(LocalCounter(name, documentation, labels))

    def _gauge(self, name: str, documentation: str, labels: Sequence[str], mode: GaugeMode) -> Any:
        """``mode``: how ``/metrics`` sums the workers' values (prometheus-client's
        ``multiprocess_mode``)."""
        if self.multiprocess:
            return Gauge(
                name, documentation, labels, registry=self.registry, multiprocess_mode=mode
            )
        return self._local(LocalGauge(name, documentation, labels))

    def _histogram(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> Any:
        if self.multiprocess:
            return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)
        return self._local(LocalHistogram(name, documentation, labels, buckets))

    def _local(self, collector: Collector) -> Collector:
        self.registry.register(collector)
        return collector

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: prometheus-client's ``labels()`` takes a lock and
        converts values (the local instruments' would not need it; one path serves both)."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def attempt(self, model: str, deployment: str, result: str) -> None:
        self.child(self.attempts, model, deployment, result).inc()

    def breaker_changed(self, deployment: str, state: str) -> None:
        self.child(self.breaker_changes, deployment, state).inc()
        for name in ("open", "half_open"):
            self.child(self.breaker, deployment, name).set(1 if state == name else 0)

    def stream_started(self, access: Access) -> tuple[Any, Any]:
        """A stream's chunk-gap histogram and its in-flight gauge (already counted up)."""
        labels = (access.model or "", access.upstream or "")
        in_flight = self.child(self.in_flight, *labels)
        in_flight.inc()
        return self.child(self.chunk_gap, *labels), in_flight

    def limits_state(self, state: str, misses: int) -> None:
        # Called on every admission; the gauges change only when the backend does.
        if self._limits_shown == (state, misses):
            return
        self._limits_shown = (state, misses)
        for name in ("closed", "open", "half_open"):
            self.child(self.limits_backend, name).set(1 if state == name else 0)
        self.limits_misses.set(misses)

    def finish(self, access: Access, duration: float) -> None:
        """Account for one finished request."""
        if access.key is not None:
            self._key(access)
        if access.model is not None:
            self._model(access, duration)

    def _key(self, access: Access) -> None:
        key = access.key or ""
        self.child(self.key_requests, key, str(access.status)).inc()
        if access.limited is not None:
            self.child(self.rate_limited, key, access.limited).inc()
        if access.prompt_tokens is not None:
            self.child(self.key_tokens, key, "prompt").inc(access.prompt_tokens)
            self.child(self.key_tokens, key, "completion").inc(access.completion_tokens or 0)

    def _model(self, access: Access, duration: float) -> None:
        model, upstream = access.model or "", access.upstream or ""
        stream = "true" if access.stream else "false"
        self.child(self.requests, model, upstream, stream, str(access.status)).inc()
        self.child(self.duration, model, upstream, stream).observe(duration)
        if access.ttft is not None:
            self.child(self.ttft, model, upstream).observe(access.ttft)
        if access.retries:
            self.child(self.retries, model).inc(access.retries)
        for fallback in access.fallbacks:
            self.child(self.fallbacks, model, fallback).inc()
        if access.outcome is Outcome.CLIENT_DISCONNECT:
            self.child(self.disconnects, model, upstream).inc()
        elif access.outcome is Outcome.UPSTREAM and access.kind is not None:
            self.child(self.upstream_errors, upstream, str(access.kind)).inc()
        elif access.outcome is Outcome.COMPLETE and access.status == 200:
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
