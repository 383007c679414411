"""A fake OpenAI upstream cheap enough never to be the bottleneck: raw asyncio protocol, no
framework, keep-alive HTTP/1.1. ``POST /v1/chat/completions``:

- ``"stream": true`` -> SSE: the role chunk and the first content chunk at once, then
  ``bench_chunks - 1`` more content chunks ``bench_interval_ms`` apart, a finish chunk, a usage
  chunk if asked, ``[DONE]``. Every chunk carries ``"t": <time.time() when written>``, the emit
  stamp the load generator subtracts from its arrival time.
- otherwise one ``chat.completion`` JSON.

``bench_chunks`` and ``bench_interval_ms`` are unknown fields to the proxy, which forwards them
untouched. Timers, not tasks, pace the chunks, so 10,000 slow streams cost little.

    python bench/upstream.py --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import orjson

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
PREFIX = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk",'
    b'"created":1700000000,"model":"bench",'
)
ROLE = (
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"t":'
)
CONTENT = b'"choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}],"t":'
FINISH = b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"t":'
USAGE = b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d},"t":'
DONE = b"data: [DONE]\n\n"


def _chunk(body: bytes) -> bytes:
    event = PREFIX + body + b"%.6f}\n\n" % time.time()
    return b"%x\r\n%s\r\n" % (len(event), event)


def completion(chunks: int) -> bytes:
    body = orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "token " * chunks},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks},
            "t": time.time(),
        }
    )
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buf) < end + 4 + length:
                return
            body = orjson.loads(self.buf[end + 4 : end + 4 + length] or b"{}")
            self.buf = self.buf[end + 4 + length :]
            self.respond(body)

    def respond(self, body: dict) -> None:  # type: ignore[type-arg]
        assert self.transport is not None
        chunks = int(body.get("bench_chunks", 20))
        if not body.get("stream"):
            self.transport.write(completion(chunks))
            return
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        interval = float(body.get("bench_interval_ms", 0)) / 1000
        self.transport.write(HEAD)
        self.transport.write(_chunk(ROLE))
        self.transport.write(_chunk(CONTENT))
        if interval:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(interval, self.tick, chunks - 1, interval, usage, chunks)
        else:
            for _ in range(chunks - 1):
                self.transport.write(_chunk(CONTENT))
            self.finish(usage, chunks)

    def tick(self, left: int, interval: float, usage: bool, total: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if left > 0:
            self.transport.write(_chunk(CONTENT))
            self.timer = asyncio.get_running_loop().call_later(
                interval, self.tick, left - 1, interval, usage, total
            )
        else:
            self.finish(usage, total)

    def finish(self, usage: bool, total: int) -> None:
        assert self.transport is not None
        self.transport.write(_chunk(FINISH))
        if usage:
            self.transport.write(_chunk(USAGE % (total, total + 5)))
        self.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(DONE), DONE))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=4096, reuse_address=True)
    print(f"upstream listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
