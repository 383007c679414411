"""The benchmark must not rot: a quick run completes and prints every scenario.

Nothing about speed is asserted here; speed belongs to the bench's table (README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_run() -> None:
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    for row in (
        "non-stream c=16: requests/s",
        "stream 20 chunks c=16: streams/s",
        "50 ms stream c=8: chunk delay p99",
        "proxy CPU per request",
        "proxy CPU per forwarded chunk",
        "streams: proxy peak RSS",
    ):
        assert row in table, table
    # Every stream of the small concurrent runs completes, direct and through the proxy.
    completed = [line for line in table.splitlines() if "completed" in line]
    assert len(completed) == 2, table
    for line in completed:
        name, direct, proxy = (cell.strip() for cell in line.strip("|").split("|")[:3])
        wanted = name.split()[0]  # "50 streams x 3 chunks..." -> "50"
        assert direct == proxy == wanted, line


def test_upload_bench_quick_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.uploads", "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("upload, model first: MB/s", "file first (spooled): proxy peak RSS"):
        assert row in result.stdout, result.stdout


def test_inprocess_bench_quick_run() -> None:
    """Both modes, with a key and the access lines on: every request answered, figures given."""
    for mode in ("json", "stream"):
        result = subprocess.run(
            [sys.executable, "-m", "bench.inprocess", "--mode", mode, "--users", "4",
             "--requests", "200", "--rounds", "1", "--keys", "--log"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        figures = json.loads(result.stdout)
        assert figures["failed"] == 0 and figures["cpu_us_per_request"] > 0
        assert (figures["ttft_p50_us"] is not None) == (mode == "stream")
