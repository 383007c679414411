"""Metrics of one process, kept as plain numbers by the event loop that changes them.

prometheus-client's instruments are made for threads: ``Counter.inc`` checks that it is a
labelled child and takes a lock, ``Histogram.observe`` takes one for its sum and another for
its bucket. The proxy changes its metrics from the event loop only, and ``/metrics`` is
rendered on the same loop, so in one process nothing needs that. Here a counter's or a gauge's
series is one number, a histogram's a list of bucket counts and a sum: the chunk gap, observed
on every chunk, 0.75 → 0.15 µs; a request's own eight or so counters and histograms, about
7 µs of every request (``bench.inprocess``, non-stream c=16, alternating: 184-190 → 178-183 µs
per request). They are exposed through prometheus-client's public
custom-collector API with the same names, help, labels, buckets and ``_created`` samples as
its own instruments write (``tests/test_local_metrics.py`` compares the two texts).

With several workers (``PROMETHEUS_MULTIPROC_DIR``) the values must live in the files the
workers share, which only prometheus-client's own instruments write: ``Metrics`` uses those
instead.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


def created_series() -> bool:
    """Whether counters and histograms write their ``_created`` samples: as prometheus-client
    decides from ``PROMETHEUS_DISABLE_CREATED_SERIES`` (its ``disable_created_metrics()``,
    a switch in its private state, is not seen here)."""
    disabled = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower()
    return disabled not in ("true", "1", "t")


class CounterSeries:
    """One label set's count, and when it was made (the ``_created`` sample)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:  # as prometheus-client refuses it
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GaugeSeries:
    """One label set's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramSeries:
    """One label set's buckets (not cumulative: ``counts[i]`` holds the values in
    ``(bounds[i-1], bounds[i]]``; the last one those above every bound) and sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound counts in that bound's bucket ("le"). NaN is
        # in no bucket (it is not <= any bound), as prometheus-client counts it.
        if value == value:
            self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


S = TypeVar("S", CounterSeries, GaugeSeries, HistogramSeries)
F = TypeVar("F", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)


class _Family(Collector, Generic[S, F]):
    """The series of one metric by label values, collected as one Prometheus metric of the
    ``family`` kind."""

    family: type[F]

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = list(labels)
        self.series: dict[tuple[str, ...], S] = {}
        self.created = created_series()
        if not self.label_names:  # its one series from the start (0), as prometheus-client's
            self.labels()

    def _new(self) -> S:
        raise NotImplementedError

    def labels(self, *values: str, **named: str) -> S:
        """The series of one label set, by position or by name (``Metrics.child`` caches it,
        as for the others)."""
        if named:
            if values or set(named) != set(self.label_names):
                raise ValueError(f"{self.name}: label names {sorted(named)}, not the metric's")
            values = tuple(named[name] for name in self.label_names)
        found = self.series.get(values)
        if found is None:
            if len(values) != len(self.label_names):  # checked as prometheus-client does
                raise ValueError(f"{self.name}: {len(values)} label values, not the names'")
            values = tuple(str(value) for value in values)
            found = self.series.setdefault(values, self._new())
        return found

    def _family(self) -> F:
        return self.family(self.name, self.documentation, labels=self.label_names)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, series in list(self.series.items()):
            self._add(family, list(values), series)
        yield family

    def _add(self, family: F, values: list[str], series: S) -> None:
        raise NotImplementedError


class LocalCounter(_Family[CounterSeries, CounterMetricFamily]):
    family = CounterMetricFamily

    def _new(self) -> CounterSeries:
        return CounterSeries()

    def _add(self, family: CounterMetricFamily, values: list[str], series: CounterSeries) -> None:
        family.add_metric(values, series.value, created=series.created if self.created else None)


class LocalGauge(_Family[GaugeSeries, GaugeMetricFamily]):
    """A gauge; one without labels is set directly (``gauge.set(n)``), as prometheus-client's."""

    family = GaugeMetricFamily

    def _new(self) -> GaugeSeries:
        return GaugeSeries()

    def set(self, value: float) -> None:
        self.labels().set(value)

    def _add(self, family: GaugeMetricFamily, values: list[str], series: GaugeSeries) -> None:
        family.add_metric(values, series.value)


class LocalHistogram(_Family[HistogramSeries, HistogramMetricFamily]):
    family = HistogramMetricFamily

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        bounds = [float(bound) for bound in buckets]
        if bounds and bounds[-1] == float("inf"):
            bounds.pop()  # "+Inf" is always there (below), as prometheus-client adds it
        if bounds != sorted(bounds) or not bounds:  # as prometheus-client refuses them
            raise ValueError(f"{name}: buckets must be in order, with one below +Inf")
        if "le" in labels:
            raise ValueError(f"{name}: a histogram cannot have a label named le")
        self.bounds = tuple(bounds)  # before a first series
        # Each bucket's ``le`` as prometheus-client writes it for its own histograms (``0.001``,
        # ``1.0``, ``1e+06``), so a dashboard sees the same series either way.
        edges = [floatToGoString(bound) for bound in self.bounds]  # type: ignore[no-untyped-call]
        self.edges = [*edges, "+Inf"]
        super().__init__(name, documentation, labels)

    def _new(self) -> HistogramSeries:
        return HistogramSeries(self.bounds)

    def _add(
        self, family: HistogramMetricFamily, values: list[str], series: HistogramSeries
    ) -> None:
        total, buckets = 0, []
        for edge, count in zip(self.edges, list(series.counts), strict=True):
            total += count
            buckets.append((edge, float(total)))
        family.add_metric(values, buckets, series.sum)
        if self.created:
            labels = dict(zip(self.label_names, values, strict=True))
            family.add_sample(f"{self.name}_created", labels, series.created)
