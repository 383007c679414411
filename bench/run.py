"""The benchmark: the same scenarios direct to a fake upstream and through the proxy, one run,
one process tree, printed side by side.

    bash bench/setup.sh            # once: wrk (Debian)
    python bench/run.py            # the full run (about 3 minutes, bounded at 10)
    python bench/run.py --quick    # a smoke run in seconds (CI), figures meaningless

The proxy is pinned to core 0 (``taskset``); the fake upstream, the load generator and wrk to
core 1. The proxy's CPU time comes from /proc (utime + stime), its memory from VmRSS samples.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")
DEADLINE = time.monotonic() + 600  # the whole run is bounded at 10 minutes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, args: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *args] if shutil.which("taskset") else args


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def process(args: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ProcStats:
    """CPU seconds and resident memory of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._sampling = False

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    @contextmanager
    def sampling(self) -> Iterator[None]:
        self.peak = self.rss()
        self._sampling = True

        def loop() -> None:
            while self._sampling:
                self.peak = max(self.peak, self.rss())
                time.sleep(0.1)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._sampling = False
            thread.join()


def load(url: str, **options: Any) -> dict[str, Any]:
    if time.monotonic() > DEADLINE:
        raise RuntimeError("the bench ran past its 10-minute bound")
    args = [sys.executable, str(HERE / "load.py"), "--url", url]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    out = subprocess.run(pinned(1, args), capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def wrk(url: str, users: int, seconds: float, key: str = "") -> dict[str, float]:
    """Plain request rate and latency percentiles from wrk (non-stream requests)."""
    args = [
        "wrk",
        *(["-H", f"Authorization: Bearer {key}"] if key else []),
        "-t1",
        f"-c{users}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(HERE / "post.lua"),
        f"{url}/v1/chat/completions",
    ]
    out = subprocess.run(
        pinned(1, args), capture_output=True, text=True, timeout=120, check=True
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))

    def pct(name: str) -> float:
        match = re.search(rf"\s{name}%\s+([\d.]+)(us|ms|s)", out)
        if not match:
            return float("nan")
        return float(match.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[match.group(2)]

    return {"rate": rate, "requests": total, "errors": errors, "p50": pct("50"), "p99": pct("99")}


def pct(summary: dict[str, float | None], q: float) -> float:
    """The p50 (q=0.5) or p99 (q=0.99) of a load.py summary."""
    value = summary.get("p50" if q == 0.5 else "p99")
    return float("nan") if value is None else value


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, name: str, direct: float, proxy: float, unit: str, kind: str = "ratio") -> None:
        scale = {"ms": 1000.0, "MiB": 1 / 2**20}.get(unit, 1.0)
        d, p = direct * scale, proxy * scale
        ratio = f"x{p / d:.2f}" if d else "-"
        extra = ratio if kind == "ratio" else f"+{p - d:.2f} {unit}"
        fmt = (lambda v: f"{v:,.0f}") if unit in ("/s", "", "MiB") else (lambda v: f"{v:.2f}")
        self.rows.append((name, f"{fmt(d)} {unit}".strip(), f"{fmt(p)} {unit}".strip(), extra))

    def percentiles(self, name: str, direct: dict[str, Any], proxy: dict[str, Any]) -> None:
        """p50 and p99 rows of one load.py summary, as time added by the proxy."""
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            self.add(f"{name} {label}", pct(direct, q), pct(proxy, q), "ms", "added")

    def note(self, name: str, proxy: str) -> None:
        self.rows.append((name, "", proxy, ""))

    def render(self) -> str:
        head = ("scenario", "direct", "through proxy", "proxy/direct")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        lines = [
            "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        lines += [
            "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
            for row in self.rows
        ]
        return "\n".join(lines)


BENCH_KEY = "sk-bench-limited-key"


def limits_config(kind: str, redis_url: str | None) -> str:
    """A key whose limits are never reached (the bench measures admission, not refusals)."""
    if kind == "none":
        return ""
    big = 10**12
    backend = f"{{backend: redis, redis_url: '{redis_url}'}}" if kind == "redis" else "{}"
    return (
        f"keys: [{{name: bench, key: {BENCH_KEY}, rpm: {big}, tpm: {big}, "
        f"max_parallel: 1000000}}]\nlimits: {backend}\n"
    )


@contextmanager
def redis_for(kind: str, tmp: Path) -> Iterator[str | None]:
    """A redis-server on a free port (core 1) for ``--limits redis``; None otherwise."""
    if kind != "redis":
        yield None
        return
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(tmp)]
    with process(pinned(1, args), port, tmp / "redis.log"):
        yield f"redis://127.0.0.1:{port}/0"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds, not minutes")
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="length of each timed window (longer: less noise when comparing two trees)",
    )
    parser.add_argument("--big", type=int, default=10_000, help="concurrent streams in the big run")
    parser.add_argument(
        "--transport",
        choices=["aiohttp", "httpx"],
        default="aiohttp",
        help="the proxy's upstream transport (pool.transport)",
    )
    parser.add_argument(
        "--core", action="store_true", help="only the c=1 and c=16 rates, TTFT and CPU costs"
    )
    parser.add_argument("--no-metrics", action="store_true", help="the proxy with metrics: false")
    parser.add_argument(
        "--limits",
        choices=["none", "memory", "redis"],
        default="none",
        help="requests carry a key with (never reached) limits, counted in memory or in a "
        "Redis the bench starts (Debian's redis-server)",
    )
    args = parser.parse_args()
    quick = args.quick
    seconds = 0.3 if quick else args.seconds
    levels = [1, 16] if quick or args.core else [1, 16, 64, 256]
    use_wrk = shutil.which("wrk") is not None
    up_port, proxy_port = free_port(), free_port()
    direct, proxied = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{proxy_port}"
    table = Table()
    with tempfile.TemporaryDirectory() as tmp, redis_for(args.limits, Path(tmp)) as redis_url:
        config = Path(tmp) / "bench.yaml"
        config.write_text(
            limits_config(args.limits, redis_url) + "keepalive_seconds: 15\n"
            f"metrics: {'false' if args.no_metrics else 'true'}\n"
            f"pool: {{max_connections: 20000, transport: {args.transport}}}\n"
            f"upstreams: {{up: {{type: openai, base_url: 'http://127.0.0.1:{up_port}/v1'}},\n"
            f"  dead: {{type: openai, base_url: 'http://127.0.0.1:{free_port()}/v1'}}}}\n"
            # failover: a primary that refuses every connection, then the healthy upstream;
            # one attempt each and no breaker, so every request pays the failed attempt.
            "models: {bench: {upstream: up}, failover: {upstream: dead, fallbacks: [bench]}}\n"
            "routing: {retries: 0, cooldown: {failures: 1000000000}}\n"
        )
        upstream_cmd = pinned(
            1, [sys.executable, str(HERE / "upstream.py"), "--port", str(up_port)]
        )
        proxy_cmd = pinned(
            0, [sys.executable, "-m", "proxy", "--config", str(config), "--port", str(proxy_port)]
        )
        auth = {"key": BENCH_KEY} if args.limits != "none" else {}
        with (
            process(upstream_cmd, up_port, Path(tmp) / "upstream.log"),
            process(proxy_cmd, proxy_port, Path(tmp) / "proxy.log") as proxy,
        ):
            stats = ProcStats(proxy.pid)
            # warm up both paths (imports, pools, JIT-free but caches)
            load(proxied, **auth, mode="stream", users=4, seconds=0.5)
            load(proxied, **auth, mode="json", users=4, seconds=0.5)

            cpu_request = cpu_chunk = float("nan")
            for users in levels:
                if use_wrk:
                    d = wrk(direct, users, seconds)
                    before = stats.cpu()
                    p = wrk(proxied, users, seconds, **auth)
                    cpu = stats.cpu() - before
                    d_rate, p_rate, d_p99, p_p99 = d["rate"], p["rate"], d["p99"], p["p99"]
                    errors = p["errors"]
                    done = p["requests"]
                else:
                    d = load(direct, mode="json", users=users, seconds=seconds)
                    before = stats.cpu()
                    p = load(proxied, **auth, mode="json", users=users, seconds=seconds)
                    cpu = stats.cpu() - before
                    d_rate, p_rate = d["ok"] / d["seconds"], p["ok"] / p["seconds"]
                    d_p99, p_p99 = pct(d["latency"], 0.99), pct(p["latency"], 0.99)
                    errors, done = p["errors"], p["ok"]
                table.add(f"non-stream c={users}: requests/s", d_rate, p_rate, "/s")
                table.add(f"non-stream c={users}: latency p99", d_p99, p_p99, "ms", "added")
                if errors:
                    table.note(f"non-stream c={users}: errors", str(errors))
                if users == 16 and done:
                    cpu_request = cpu / done

            for users in levels:
                d = load(direct, mode="stream", users=users, seconds=seconds)
                before = stats.cpu()
                p = load(proxied, **auth, mode="stream", users=users, seconds=seconds)
                cpu = stats.cpu() - before
                table.add(
                    f"stream 20 chunks c={users}: streams/s",
                    d["ok"] / d["seconds"],
                    p["ok"] / p["seconds"],
                    "/s",
                )
                table.percentiles(f"stream 20 chunks c={users}: TTFT", d["ttft"], p["ttft"])
                if p["errors"]:
                    table.note(f"stream c={users}: errors", str(p["errors"]))
                if users == 16 and p["ok"]:
                    # CPU per chunk: the slope between 20- and 100-chunk streams, so the
                    # per-stream cost (request, headers, setup) cancels out.
                    before = stats.cpu()
                    long = load(
                        proxied, **auth, mode="stream", users=users, seconds=seconds, chunks=100
                    )
                    per_long = (stats.cpu() - before) / max(1, long["ok"])
                    cpu_chunk = (per_long - cpu / p["ok"]) / 80

            # A failover's cost: time to first token with the primary failing fast (refused).
            d = load(direct, mode="stream", users=1, seconds=seconds)
            p = load(proxied, **auth, mode="stream", users=1, seconds=seconds, model="failover")
            table.percentiles("failover c=1 (primary refused): TTFT", d["ttft"], p["ttft"])

            cpu_note = f"{cpu_request * 1e6:.0f} us"
            table.note("proxy CPU per request (non-stream c=16)", cpu_note)
            table.note("proxy CPU per forwarded chunk (stream c=16)", f"{cpu_chunk * 1e6:.1f} us")
            if args.core:
                print(f"upstream transport: {args.transport}, metrics: {not args.no_metrics}")
                print(table.render())
                return 0
            slow = {"mode": "stream", "users": 8, "seconds": 1 if quick else 5, "interval_ms": 50}
            d, p = load(direct, **slow), load(proxied, **auth, **slow)
            table.percentiles("50 ms stream c=8: TTFT", d["ttft"], p["ttft"])
            table.percentiles("50 ms stream c=8: chunk delay", d["delays"], p["delays"])

            for users, chunks, interval in (
                ((50, 3, 200), (200, 3, 500)) if quick else ((1000, 20, 1000), (args.big, 10, 1000))
            ):
                run = {
                    "mode": "stream",
                    "users": users,
                    "once": True,
                    "chunks": chunks,
                    "interval_ms": interval,
                    "ramp": 0.05,
                }
                d = load(direct, **run)
                with stats.sampling():
                    p = load(proxied, **auth, **run)
                table.add(
                    f"{users} streams x {chunks} chunks, 1 per {interval / 1000:g} s: completed",
                    d["ok"],
                    p["ok"],
                    "",
                )
                table.add(
                    f"{users} streams: TTFT p99",
                    pct(d["ttft"], 0.99),
                    pct(p["ttft"], 0.99),
                    "ms",
                    "added",
                )
                table.note(f"{users} streams: proxy peak RSS", f"{stats.peak / 2**20:.0f} MiB")
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
