"""Load generator: virtual users on keep-alive connections, reading SSE off the socket and
timestamping every event as it arrives (httptools parses the HTTP; events are cut on blank
lines; the upstream's emit stamp ``"t"`` is read without parsing the JSON).

    python bench/load.py --url http://127.0.0.1:8000 --mode stream --users 16 --seconds 3

Prints one JSON object: requests, errors, latencies (s), time to first token (s), per-chunk
delays (arrival - emit, s), completed streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson


class Exchange(asyncio.Protocol):
    """One keep-alive connection; ``request()`` sends one request and waits for its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def request(self, raw: bytes, stream: bool) -> dict[str, Any]:
        self.parser = httptools.HttpResponseParser(self)
        self.stream = stream
        self.buf = b""
        self.events: list[tuple[float, float]] = []  # (arrival, emit stamp) per content event
        self.first_content = 0.0
        self.status = 0
        self.finished = False
        self.done = asyncio.get_running_loop().create_future()
        self.started = time.time()
        assert self.transport is not None
        self.transport.write(raw)
        await self.done
        return {
            "status": self.status,
            "events": self.events,
            "start": self.started,
            "end": time.time(),
            "ttft": self.first_content - self.started if self.first_content else None,
            "finished": self.finished,
        }

    def data_received(self, data: bytes) -> None:
        self.now = time.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover
            pass
        except httptools.HttpParserError as exc:
            if self.done is not None and not self.done.done():
                self.done.set_exception(exc)

    def on_status(self, status: bytes) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.stream:
            self.buf += body
            return
        self.buf += body
        while True:
            end = self.buf.find(b"\n\n")
            if end < 0:
                return
            event, self.buf = self.buf[:end], self.buf[end + 2 :]
            if event == b"data: [DONE]":
                self.finished = True
            elif b'"content":"token' in event:
                at = event.rfind(b'"t":')
                stamp = float(event[at + 4 : event.index(b"}", at)]) if at >= 0 else 0.0
                self.events.append((self.now, stamp))
                if not self.first_content:
                    self.first_content = self.now

    def on_message_complete(self) -> None:
        if not self.stream and self.status == 200:
            self.finished = b'"finish_reason":"stop"' in self.buf
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def build_request(url: str, body: dict[str, Any], key: str = "") -> bytes:
    parts = urlsplit(url)
    payload = orjson.dumps(body)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST {parts.path or '/'}v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\n{auth}Content-Length: {len(payload)}\r\n\r\n"
    ).encode().replace(b"//v1", b"/v1") + payload


async def user(
    url: str, raw: bytes, stream: bool, until: float, once: bool, out: list[dict[str, Any]]
) -> None:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    try:
        _, conn = await loop.create_connection(Exchange, parts.hostname, parts.port)
    except OSError as exc:
        out.append({"status": 0, "error": repr(exc)})
        return
    try:
        while True:
            try:
                out.append(await conn.request(raw, stream))
            except (ConnectionError, httptools.HttpParserError) as exc:
                out.append({"status": 0, "error": repr(exc)})
                return
            if once or time.time() >= until:
                return
    finally:
        if conn.transport is not None:
            conn.transport.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": args.model,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": args.mode == "stream",
        "bench_chunks": args.chunks,
        "bench_interval_ms": args.interval_ms,
    }
    raw = build_request(args.url, body, args.key)
    results: list[dict[str, Any]] = []
    started = time.time()
    until = started + args.seconds
    users = [
        user(args.url, raw, args.mode == "stream", until, args.once, results)
        for _ in range(args.users)
    ]
    if args.ramp:  # open connections gradually: a burst of thousands of SYNs overflows backlogs
        tasks = []
        for i, coro in enumerate(users):
            tasks.append(asyncio.ensure_future(coro))
            if i % 200 == 199:
                await asyncio.sleep(args.ramp)
        await asyncio.gather(*tasks)
    else:
        await asyncio.gather(*users)
    elapsed = time.time() - started
    ok = [r for r in results if r.get("status") == 200 and r.get("finished")]
    latency = [r["end"] - r["start"] for r in ok]
    ttft = [r["ttft"] for r in ok if r.get("ttft") is not None]
    # The first content chunk is measured by ttft; the delays are those of the later chunks.
    delays = [arrival - stamp for r in ok for arrival, stamp in r.get("events", ())[1:] if stamp]
    return {
        "mode": args.mode,
        "users": args.users,
        "seconds": elapsed,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "latency": percentiles(latency),
        "ttft": percentiles(ttft),
        "delays": percentiles(delays),
        "chunks": sum(len(r.get("events", ())) for r in ok),
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 of ``values`` (None when there are none)."""
    if not values:
        return {"p50": None, "p99": None}
    ordered = sorted(values)
    last = len(ordered) - 1
    return {"p50": ordered[int(0.5 * last)], "p99": ordered[int(0.99 * last)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["stream", "json"], default="stream")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--key", default="", help="sent as Authorization: Bearer")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--once", action="store_true", help="one request per user")
    parser.add_argument("--ramp", type=float, default=0.0, help="pause (s) after every 200 users")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
