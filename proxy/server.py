"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, with three things it lacks.

- **A bound on the request head.** httptools keeps the URL and headers of a request in memory
  until the head is complete, however large: 20 MB of small headers took the process to half
  a gigabyte, a 100 MB header value cost seconds of CPU. Here a head (request line and
  headers) that is still incomplete after ``max_header_bytes`` gets ``431`` and the connection
  is closed; what was buffered is freed with it. nginx's default is 4 x 8 KB; ours is 64 KiB.
- **Errors in OpenAI's shape** for what the parser rejects (a plain-text 400 before).
- **A disconnect seen during pipelining.** uvicorn keeps only the newest request's cycle, so
  when a client pipelines a second request and then goes away, the first one (still running)
  never hears of it. The running cycle is remembered and told too.
- **No waiting on a client that stopped reading.** When the app ends a response it had begun
  without finishing it (it gave up on a stuck client, a shutdown's grace ran out, or a body
  passed on as it came broke upstream), the connection is aborted: a plain close first
  flushes what is buffered, which for a client that reads nothing is never, and holds a
  shutdown until uvicorn's own timeout; and for a body that broke, only the abort tells the
  client it is incomplete.

A client that half-closes (``shutdown(SHUT_WR)``) after its request is treated as gone, as by
uvicorn: on the wire it looks the same as a client that closed, and an upstream kept
generating for a gone client costs more than a half-closing client that retries.
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

DEFAULT_MAX_HEADER_BYTES = 64 * 1024


def _error(status: int, reason: str, message: str, code: str) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class ProxyHTTPProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` plus the above. ``max_header_bytes`` comes from the
    app (``app.state.max_header_bytes``), so each worker process reads its own settings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        state = getattr(self.app, "state", None)
        self.max_header_bytes: int = getattr(state, "max_header_bytes", DEFAULT_MAX_HEADER_BYTES)
        self.head_bytes = 0  # bytes received while the current request head is incomplete
        self.in_head = True
        self.running: RequestResponseCycle | None = None

    def data_received(self, data: bytes) -> None:
        if not self.in_head:
            super().data_received(data)
            return
        super().data_received(data)
        if self.in_head and not self.transport.is_closing():  # still no end of the head
            self.head_bytes += len(data)
            if self.head_bytes > self.max_header_bytes:
                self.parser = None  # type: ignore[assignment]  # drop what it buffered
                message = (
                    f"The request line and headers are larger than the limit of "
                    f"{self.max_header_bytes} bytes."
                )
                reason, code = "Request Header Fields Too Large", "request_header_too_large"
                self._reject(_error(431, reason, message, code))

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        message = "The HTTP request could not be parsed: it is not valid HTTP/1.1."
        self._reject(_error(400, "Bad Request", message, "invalid_http"))

    def _reject(self, response: bytes) -> None:
        self.transport.write(response)
        self.transport.close()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self.running = cycle
        transport = self.transport

        async def run(scope: Any, receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, send)
            finally:
                if cycle.response_started and not cycle.response_complete:
                    transport.abort()
                    # Ended on purpose (a stuck client, a body that broke upstream): no
                    # "returned without completing response" ERROR from uvicorn for it.
                    cycle.disconnected = True

        super()._start_asgi_task(cycle, run)

    def connection_lost(self, exc: Exception | None) -> None:
        running = self.running
        super().connection_lost(exc)
        if running is not None and running is not self.cycle and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
