"""Soak: many mixed requests against the proxy as a real process. Its RSS and open file
descriptors return to their baseline, every request is answered exactly once (its access line
appears once), and no key appears in any answer, log line or metric.

CI runs a short form (5,000 requests); the long one: PROXY_SOAK_REQUESTS=50000 python -m pytest
tests/test_soak.py -s
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_upstream import Recorded, Reply, completion, serve_fake
from tests.helpers import free_port
from tests.test_process import proxy_process
from tests.test_upstream import DONE, GOOD, ROLE, chunk

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-upstream-soak-0123456789abcdef"
CLIENT_KEY = "client-key-soak-abcdef012345"
REQUESTS = int(os.environ.get("PROXY_SOAK_REQUESTS", "5000"))
WORKERS = 16
POOL = 8  # upstream connections the proxy may keep open: the only fds allowed to grow


def upstream(request: Recorded, reply: Reply) -> Any:
    kind = request.json()["messages"][-1]["content"]

    async def run() -> None:
        if kind == "fail-status":
            await reply.json(
                500, {"error": {"message": f"upstream broke, key {KEY}", "type": "server_error"}}
            )
        elif kind == "fail-midstream":
            await reply.start()
            await reply.send(ROLE + chunk("par"))
            await reply.send(
                b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
            )
            await reply.end()
        elif kind == "slow":
            await reply.start()
            await reply.send(ROLE)
            for _ in range(20):
                if reply.peer_closed.is_set():
                    return
                await reply.send(chunk("w "))
                await asyncio.sleep(0.01)
            await reply.send(chunk(finish="stop") + DONE)
            await reply.end()
        elif request.json().get("stream"):
            await reply.start()
            await reply.send(b"".join(GOOD))
            await reply.end()
        else:
            await reply.json(
                200,
                completion("ok", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}),
            )

    return run()


# (share, model, prompt, stream, what the client does, expected)
MIX = [
    (30, "echo", "one two three", True, "read", "done"),
    (15, "echo", "one two three", False, "read", 200),
    (20, "up", "ok", True, "read", "done"),
    (10, "up", "ok", False, "read", 200),
    (8, "up", "fail-status", True, "read", 500),
    (7, "up", "fail-midstream", True, "read", "error-event"),
    (10, "up", "slow", True, "disconnect", "left"),
]


def proc_stats(pid: int) -> tuple[int, int]:
    rss = next(
        int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def one(
    client: httpx.Client,
    url: str,
    n: int,
    kind: tuple[Any, ...],
    outcomes: Counter[str],
    texts: list[str],
) -> None:
    _, model, prompt, stream, action, expected = kind
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    headers = {"X-Request-ID": f"soak-{n}", "Authorization": f"Bearer {CLIENT_KEY}"}
    with client.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        if action == "disconnect":
            next(response.iter_lines())
            outcomes["left"] += 1
            return  # closing the response here drops the connection mid-stream
        text = response.read().decode()
    if random.random() < 0.05:
        texts.append(text)
    if response.status_code != 200:
        assert response.status_code == expected, (n, text)
        outcomes[str(response.status_code)] += 1
    elif stream:
        last = text.rstrip("\n").rsplit("\n", 1)[-1]
        got = "done" if last == "data: [DONE]" else "error-event" if '"error"' in last else "broken"
        assert got == expected, (n, text[-300:])
        outcomes[got] += 1
    else:
        assert expected == 200 and json.loads(text)["choices"][0]["message"]["content"]
        outcomes["200"] += 1
    for secret in (KEY, CLIENT_KEY):
        assert secret not in text


def test_soak(tmp_path: Path) -> None:
    with serve_fake(upstream) as fake:
        config = tmp_path / "proxy.yaml"
        config.write_text(
            f"api_keys: [{CLIENT_KEY}]\nlog_format: json\n"
            f"pool: {{max_connections: {POOL}}}\n"
            # One attempt each and no breaker: the soak's upstream fails on purpose, and every
            # request must get that scenario's own answer (routing: tests/test_routing.py).
            "routing: {retries: 0, cooldown: {failures: 1000000}}\n"
            "upstreams:\n"
            "  echo: {type: echo, delay_ms: 0}\n"
            f"  up: {{type: openai, base_url: '{fake.url}', api_key: '{KEY}'}}\n"
            "models: {echo: {upstream: echo}, up: {upstream: up}}\n"
        )
        port = free_port()
        args = [sys.executable, "-m", "proxy", "--config", str(config), "--port", str(port)]
        with proxy_process(args, tmp_path, port=port) as (process, url, log):
            weights = [m[0] for m in MIX]
            plan = random.Random(7).choices(MIX, weights=weights, k=REQUESTS + 400)
            outcomes: Counter[str] = Counter()
            texts: list[str] = []
            errors: list[BaseException] = []

            def work(indices: range) -> None:
                with httpx.Client(timeout=30) as client:
                    for n in indices:
                        try:
                            one(client, url, n, plan[n], outcomes, texts)
                        except BaseException as exc:
                            errors.append(exc)
                            return

            def run(start: int, count: int) -> float:
                began = time.monotonic()
                threads = [
                    threading.Thread(target=work, args=(range(start + i, start + count, WORKERS),))
                    for i in range(WORKERS)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(600)
                assert not errors, errors[:3]
                return time.monotonic() - began

            run(0, 400)  # warm up: imports, pools, allocator
            time.sleep(1)
            rss_before, fds_before = proc_stats(process.pid)
            duration = run(400, REQUESTS)
            time.sleep(2)  # let closes and cancellations settle
            rss_after, fds_after = proc_stats(process.pid)
            metrics = httpx.get(f"{url}/metrics").text
        logged = log.read_text()

    total = REQUESTS + 400
    assert sum(outcomes.values()) == total
    # Every request answered exactly once: one access line per request id, none missing.
    ids = Counter(
        json.loads(line)["request_id"]
        for line in logged.splitlines()
        if line.startswith("{") and '"logger":"proxy.access"' in line and "soak-" in line
    )
    assert len(ids) == total and set(ids.values()) == {1}
    # Back to baseline, give or take the idle keep-alive connections the pool may hold (at most
    # POOL, its size); a leak of even 0.1% of the requests would be far more.
    assert fds_after <= fds_before + POOL, (fds_before, fds_after)
    assert rss_after <= rss_before + 30 * 2**20, (rss_before, rss_after)
    for secret in (KEY, CLIENT_KEY):
        assert (
            secret not in logged and secret not in metrics and all(secret not in t for t in texts)
        )
    figures = {
        "requests": REQUESTS,
        "seconds": round(duration, 1),
        "rate": round(REQUESTS / duration),
        "outcomes": dict(outcomes),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "fds_before": fds_before,
        "fds_after": fds_after,
        "upstream_requests": len(fake.requests),
    }
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts" / "soak.json").write_text(json.dumps(figures, indent=2))
    print("\nsoak:", json.dumps(figures))


pytestmark = pytest.mark.soak
