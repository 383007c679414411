"""The metrics of one process (``proxy.observability.local``) write what prometheus-client's
own Counter, Gauge and Histogram write for the same changes; with several workers the proxy
uses prometheus-client's (their shared files)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.observability.local import LocalCounter, LocalGauge, LocalHistogram
from proxy.observability.metrics import GAP_BUCKETS, Metrics

LABELS = ("model", "upstream")
# Below every bound, on bounds (``le`` includes them), between, above every bound, zero.
VALUES = [0.0, 0.0005, 0.001, 0.0010001, 0.003, 0.01, 0.7, 2.5, 60.0, 61.0, 1e9]

Change = tuple[tuple[str, ...], str, float]  # label values, method, argument


def theirs(kind: str, registry: CollectorRegistry, labels: tuple[str, ...]) -> Any:
    if kind == "counter":
        return Counter("proxy_things", "doc", labels, registry=registry)
    if kind == "gauge":
        return Gauge("proxy_level", "doc", labels, registry=registry)
    return Histogram("proxy_gap_seconds", "doc", labels, buckets=GAP_BUCKETS, registry=registry)


def ours(kind: str, registry: CollectorRegistry, labels: tuple[str, ...]) -> Any:
    metric: Any
    if kind == "counter":
        metric = LocalCounter("proxy_things", "doc", labels)
    elif kind == "gauge":
        metric = LocalGauge("proxy_level", "doc", labels)
    else:
        metric = LocalHistogram("proxy_gap_seconds", "doc", labels, GAP_BUCKETS)
    registry.register(metric)
    return metric


def exposition(
    make: Callable[[str, CollectorRegistry, tuple[str, ...]], Any],
    kind: str,
    changes: list[Change],
    labels: tuple[str, ...] = LABELS,
) -> list[str]:
    registry = CollectorRegistry()
    metric = make(kind, registry, labels)
    for values, method, argument in changes:
        target = metric.labels(*values) if values else metric
        getattr(target, method)(argument)
    text = generate_latest(registry).decode()
    # Each series' _created is the time it was made: equal up to when each side made it.
    return [
        line.rsplit(" ", 1)[0] + " <time>"
        if line.split("{")[0].split(" ")[0].endswith("_created")
        else line
        for line in text.splitlines()
    ]


CASES: dict[str, tuple[str, list[Change]]] = {
    "counter-empty": ("counter", []),
    "counter": (
        "counter",
        [(("m", "up"), "inc", 1), (("m", "up"), "inc", 2.5), (("n", 'q"x\\'), "inc", 0)],
    ),
    "counter-large": ("counter", [(("m", "up"), "inc", 10**15), (("m", "up"), "inc", 1e308)]),
    "gauge": (
        "gauge",
        [
            (("m", "up"), "inc", 1),
            (("m", "up"), "inc", 2),
            (("m", "up"), "dec", 1),
            (("n", "up"), "set", 1),
            (("n", "up"), "set", 0),
            (("o", "up"), "dec", 3),
        ],
    ),
    "histogram-empty": ("histogram", []),
    "histogram-every-bucket": ("histogram", [(("m", "up"), "observe", v) for v in VALUES]),
    "histogram-several": (
        "histogram",
        [
            (("m", "up"), "observe", 0.002),
            (("n", "other"), "observe", 0.2),
            (("m", "up"), "observe", 5.0),
            (("m", 'q"x'), "observe", 1),
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_exposition_as_prometheus_client(case: str) -> None:
    kind, changes = CASES[case]
    mine = exposition(ours, kind, changes)
    assert mine == exposition(theirs, kind, changes)
    if changes:  # not two empty texts
        series = {values for values, _, _ in changes}
        assert sum(line.startswith("proxy_") for line in mine) >= len(series)
        if kind != "gauge":
            assert sum("_created{" in line for line in mine) == len(series)


def test_a_gauge_without_labels_is_set_directly() -> None:
    changes: list[Change] = [((), "set", 3), ((), "set", 7)]
    mine = exposition(ours, "gauge", changes, labels=())
    assert mine == exposition(theirs, "gauge", changes, labels=())
    assert "proxy_level 7.0" in mine


def test_a_counter_refuses_a_negative_amount_as_prometheus_client_does() -> None:
    for make in (ours, theirs):
        counter = make("counter", CollectorRegistry(), LABELS).labels("m", "up")
        with pytest.raises(ValueError, match="non-negative"):
            counter.inc(-1)


def test_one_process_uses_its_own_series_workers_prometheus_clients(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics = Metrics()
    assert isinstance(metrics.chunk_gap, LocalHistogram)
    assert isinstance(metrics.requests, LocalCounter)
    assert isinstance(metrics.in_flight, LocalGauge)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = Metrics()
    assert isinstance(metrics.chunk_gap, Histogram)
    assert isinstance(metrics.requests, Counter)
    assert isinstance(metrics.in_flight, Gauge)


def test_metrics_without_labels_are_written_before_anything_changed_them() -> None:
    for kind in ("counter", "gauge", "histogram"):
        mine = exposition(ours, kind, [], labels=())
        assert mine == exposition(theirs, kind, [], labels=())
        assert any(line.startswith("proxy_") and "{" not in line for line in mine), kind


def test_label_values_are_checked_and_converted_as_prometheus_client_does() -> None:
    changes: list[Change] = [((200, "up"), "inc", 1), (("200", "up"), "inc", 1)]  # type: ignore[list-item]
    mine = exposition(ours, "counter", changes)
    assert mine == exposition(theirs, "counter", changes)
    assert 'proxy_things_total{model="200",upstream="up"} 2.0' in mine
    for make in (ours, theirs):
        for kind in ("counter", "gauge", "histogram"):
            with pytest.raises(ValueError):
                make(kind, CollectorRegistry(), LABELS).labels("only one")


def test_large_bounds_and_nan_are_written_as_prometheus_client_writes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tests.test_local_metrics.GAP_BUCKETS", (0.5, 1e6, 2.5e7))
    changes: list[Change] = [(("m", "up"), "observe", v) for v in (1.0, 1e6, 3e7, float("nan"))]
    mine = exposition(ours, "histogram", changes)
    assert mine == exposition(theirs, "histogram", changes)
    assert any('le="1e+06"' in line for line in mine)


def test_created_series_off_as_prometheus_client_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PROMETHEUS_DISABLE_CREATED_SERIES``: prometheus-client reads it when imported (this
    process imported it long ago: its own switch stands for the variable here)."""
    import prometheus_client

    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
    prometheus_client.disable_created_metrics()
    try:
        for kind, changes in (CASES["counter"], CASES["histogram-several"]):
            mine = exposition(ours, kind, changes)
            assert mine == exposition(theirs, kind, changes)
            assert not any("_created" in line for line in mine)
    finally:
        prometheus_client.enable_created_metrics()


def test_histogram_buckets_and_named_labels_as_prometheus_client_takes_them() -> None:
    def histogram(mine: bool, buckets: tuple[float, ...], labels: tuple[str, ...]) -> Any:
        registry = CollectorRegistry()
        if not mine:
            return registry, Histogram("proxy_h", "doc", labels, buckets=buckets, registry=registry)
        metric = LocalHistogram("proxy_h", "doc", labels, buckets)
        registry.register(metric)
        return registry, metric

    for mine in (True, False):
        for bad_buckets, labels in (((2.0, 1.0), LABELS), ((1.0,), ("le",))):
            with pytest.raises(ValueError):
                histogram(mine, bad_buckets, labels)
    texts = []
    for mine in (True, False):  # buckets ending in +Inf; labels by position and by name
        registry, metric = histogram(mine, (1.0, float("inf")), LABELS)
        metric.labels("m", "up").observe(0.5)
        metric.labels("m", "up").observe(9.0)
        metric.labels(model="n", upstream="other").observe(2.0)
        text = generate_latest(registry).decode().splitlines()
        texts.append([line for line in text if "_created" not in line])
    assert texts[0] == texts[1]
    assert sum('le="+Inf"' in line for line in texts[0]) == 2  # one per series, not two
