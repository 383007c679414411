"""The proxy's own cost per request, with no server and no load generator in the way.

    python -m bench.inprocess                       # non-stream, 16 at once
    python -m bench.inprocess --mode stream --users 1 --keys --log

The app ``create_app`` builds is called as ASGI directly, in this process, under uvloop, with
requests made in memory, against the bench's fake upstream (``bench/upstream.py``, pinned to
core 1 as in ``bench/run.py``; this process to core 0). Its start-up heap is frozen as the
served process freezes it. Printed, as one JSON object: this process's CPU time per request
(the best of ``--rounds``), and for streams the time from a request's arrival to its first
content write (the access record's ``ttft``), p50.

What it leaves out is the same for any tree: uvicorn's protocol and the sockets to the client.
What it gains is steadiness: run to run it varies by about 2% on a quiet machine, where wrk
against the served process varies by 5-15%. It is the tool for comparing two versions of the
request path: run it from each tree in turn (the figures of ``bench/run.py`` stay the ones the
README quotes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.run import HERE, free_port, pinned, process
from proxy.app import create_app
from proxy.asgi import Message
from proxy.heap import freeze_startup
from proxy.observability.logs import setup_logging
from proxy.settings import Settings

KEY = "sk-bench-inprocess-key"


def settings(upstream: str, keys: bool) -> Settings:
    config: dict[str, Any] = {
        "upstreams": {"up": {"type": "openai", "base_url": f"{upstream}/v1"}},
        "models": {"bench": {"upstream": "up"}},
        "pool": {"max_connections": 1000},
        "metrics": True,
    }
    if keys:  # limits never reached: every request admitted and settled
        big = 10**12
        config["keys"] = [
            {"name": "bench", "key": KEY, "rpm": big, "tpm": big, "max_parallel": big}
        ]
    return Settings.model_validate(config)


class Client:
    """Requests made in memory: one ASGI call each, its messages counted, its access kept."""

    def __init__(self, app: Any, stream: bool, keys: bool) -> None:
        self.app = app
        self.body = json.dumps(
            {"model": "bench", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        self.headers = [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
        ]
        if keys:
            self.headers.append((b"authorization", f"Bearer {KEY}".encode()))
        self.ttfts: list[float] = []
        self.failed = 0

    async def one(self) -> None:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await asyncio.Future()  # no disconnect: the watchdog's receive waits till cancelled
            raise AssertionError("unreachable")

        status = 0

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        state: dict[str, Any] = {}  # the access record lands here (AccessLog)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": self.headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": state,
        }
        await self.app(scope, receive, send)
        if status != 200:
            self.failed += 1
        ttft = state["access"].ttft
        if ttft is not None:
            self.ttfts.append(ttft)


async def lifespan(app: Any) -> tuple[asyncio.Queue[Message], asyncio.Task[None]]:
    """Start the app's lifespan; returns what stops it."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")
    return inbox, task


async def measure(args: argparse.Namespace, upstream: str) -> dict[str, Any]:
    app = create_app(settings(upstream, args.keys))
    inbox, task = await lifespan(app)
    client = Client(app, args.mode == "stream", args.keys)

    async def run(total: int) -> None:
        async def user(n: int) -> None:
            for _ in range(n):
                await client.one()

        await asyncio.gather(*(user(total // args.users) for _ in range(args.users)))

    await run(max(args.requests // 2, args.users))  # warm-up: pools, caches, the first series
    freeze_startup()
    best = float("inf")
    for _ in range(args.rounds):
        client.ttfts.clear()
        started = time.process_time()
        await run(args.requests)
        done = args.requests // args.users * args.users
        best = min(best, (time.process_time() - started) / done)
    await inbox.put({"type": "lifespan.shutdown"})
    await task
    return {
        "mode": args.mode,
        "users": args.users,
        "keys": args.keys,
        "log": args.log,
        "cpu_us_per_request": round(best * 1e6, 1),
        "ttft_p50_us": round(statistics.median(client.ttfts) * 1e6) if client.ttfts else None,
        "failed": client.failed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["json", "stream"], default="json")
    parser.add_argument("--users", type=int, default=16, help="requests at once")
    parser.add_argument("--requests", type=int, default=5000, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", action="store_true", help="a key with (unreached) limits")
    parser.add_argument("--log", action="store_true", help="access lines on (to /dev/null)")
    args = parser.parse_args()
    if args.log:  # made and formatted as when served, written nowhere
        setup_logging("info", "json")
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(open(os.devnull, "w"))  # noqa: SIM115  # for the process's life
    else:
        logging.disable(logging.CRITICAL)
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {0})  # the upstream gets core 1, as in bench/run.py
    port = free_port()
    command = pinned(1, [sys.executable, str(HERE / "upstream.py"), "--port", str(port)])
    log = Path(os.devnull)
    with process(command, port, log):
        result = uvloop.run(measure(args, f"http://127.0.0.1:{port}"))
    print(json.dumps(result))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
