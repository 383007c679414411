"""The chunk-gap histogram of one process writes what prometheus-client's Histogram writes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from proxy.observability.gaps import GapHistogram
from proxy.observability.metrics import GAP_BUCKETS, Metrics

# Below every bound, on bounds (``le`` includes them), between, above every bound, zero.
VALUES = [0.0, 0.0005, 0.001, 0.0010001, 0.003, 0.01, 0.7, 2.5, 60.0, 61.0, 1e9]


def exposition(observe: list[tuple[tuple[str, str], float]], ours: bool) -> list[str]:
    registry = CollectorRegistry()
    metric: GapHistogram | Histogram
    if ours:
        metric = GapHistogram("proxy_chunk_gap_seconds", "doc", ("model", "upstream"), GAP_BUCKETS)
        registry.register(metric)
    else:
        metric = Histogram(
            "proxy_chunk_gap_seconds",
            "doc",
            ("model", "upstream"),
            buckets=GAP_BUCKETS,
            registry=registry,
        )
    for labels, value in observe:
        metric.labels(*labels).observe(value)
    text = generate_latest(registry).decode()
    # Each series' _created is the time it was made: equal up to when each side made it.
    return [
        line.rsplit(" ", 1)[0] + " <time>" if "_created{" in line else line
        for line in text.splitlines()
    ]


@pytest.mark.parametrize(
    "observe",
    [
        [],
        [(("m", "up"), value) for value in VALUES],
        [(("m", "up"), 0.002), (("n", "other"), 0.2), (("m", "up"), 5.0), (("m", 'q"x'), 1)],
    ],
    ids=["empty", "every-bucket", "several-series"],
)
def test_same_exposition_as_prometheus_histogram(
    observe: list[tuple[tuple[str, str], float]],
) -> None:
    ours = exposition(observe, ours=True)
    assert ours == exposition(observe, ours=False)
    if observe:
        assert any("_bucket" in line for line in ours)  # not two empty texts
        assert sum("_created{" in line for line in ours) == len({labels for labels, _ in observe})


def test_one_process_uses_its_own_series_workers_the_shared_histogram(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert isinstance(Metrics().chunk_gap, GapHistogram)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert isinstance(Metrics().chunk_gap, Histogram)
