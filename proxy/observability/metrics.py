"""Prometheus metrics of the streams' health, taken from each request's access record.

Everything is created by ``Metrics`` on its own registry (no module-level metric objects), so
each app has its own. With several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by the command
line before any worker starts: prometheus-client then keeps values in files shared by the
workers and ``/metrics`` sums them (``multiprocess_mode`` says how for the gauge).

Only prometheus-client's public API is used. Hot-path cost: one ``observe`` per chunk gap
(0.15 µs: ``proxy.observability.gaps``); labelled children are cached, not looked up per
request (``labels()`` takes a lock and converts values). ``bench/`` shows the CPU with and
without metrics.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from proxy.errors import Outcome
from proxy.observability.gaps import GapHistogram

if TYPE_CHECKING:
    from proxy.observability.access import Access

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


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
        gap = ("proxy_chunk_gap_seconds", "Time between two chunks written to a streaming client.")
        # Observed on every chunk: our own series in one process, prometheus-client's
        # Histogram where only its shared files can sum the workers (``proxy.observability.gaps``).
        self.chunk_gap: Any
        if self.multiprocess:
            self.chunk_gap = Histogram(*gap, labels, buckets=GAP_BUCKETS, registry=registry)
        else:
            self.chunk_gap = GapHistogram(*gap, labels, GAP_BUCKETS)
            registry.register(self.chunk_gap)
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

        self.attempts = Counter(
            "proxy_upstream_attempts",
            "Attempts by public model, deployment (upstream/model) and result (ok, or the "
            "failure's kind).",
            ("model", "deployment", "result"),
            registry=registry,
        )
        self.retries = Counter(
            "proxy_retries",
            "Retries within a model (another attempt after a failure).",
            ("model",),
            registry=registry,
        )
        self.fallbacks = Counter(
            "proxy_fallbacks",
            "Requests that went on to a fallback model.",
            ("model", "fallback"),
            registry=registry,
        )
        self.breaker = Gauge(
            "proxy_breaker_open",
            "1 while a deployment's circuit breaker rests (open) or probes (half_open).",
            ("deployment", "state"),
            registry=registry,
            multiprocess_mode="max",
        )
        self.breaker_changes = Counter(
            "proxy_breaker_changes",
            "Circuit breaker state changes by deployment and new state.",
            ("deployment", "state"),
            registry=registry,
        )

        self.key_requests = Counter(
            "proxy_key_requests",
            "Requests by client key name (never the key) and status.",
            ("key", "status"),
            registry=registry,
        )
        self.key_tokens = Counter(
            "proxy_key_tokens",
            "Tokens by client key name, as the upstream reported them.",
            ("key", "type"),
            registry=registry,
        )
        self.rate_limited = Counter(
            "proxy_rate_limited",
            "Requests refused by a key's limits, by reason: requests, tokens, parallel.",
            ("key", "reason"),
            registry=registry,
        )
        self.limits_backend = Gauge(
            "proxy_limits_backend",
            "1 for the limits backend breaker's current state (closed, open, half_open).",
            ("state",),
            registry=registry,
            multiprocess_mode="max",
        )
        self.limits_misses = Gauge(
            "proxy_limits_misses",
            "Requests let through unchecked while the limits backend was down (allow).",
            registry=registry,
            multiprocess_mode="livesum",
        )

        self._children: dict[tuple[Any, ...], Any] = {}
        self._limits_shown: tuple[str, int] | None = None  # what the two gauges above show

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: ``labels()`` takes a lock and converts values."""
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
