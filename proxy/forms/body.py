"""The request body of an upload, read off the socket as it arrives.

``ClientBody`` is the one reader of the request's ``receive``: ``read()`` returns the next
bytes (``b""`` at the end), refusing the body with 413 as soon as it passes the limit
(``max_upload_bytes``; a declared ``Content-Length`` over it is refused before a byte is
read), with 408 when the client stalls (``body_timeout_seconds`` without a byte: an upload
may take long, but not stand still), and raising ``ClientDisconnected`` when the client goes.

While the body is still being read, nobody else may call ``receive`` (two readers would split
the body between them); the request's watchdog listens through ``watch`` instead, which
answers once the body is over: the disconnect the reader saw, or else whatever ``receive``
says next (the client leaving while the answer streams).
"""

from __future__ import annotations

import asyncio

from proxy.asgi import Message, Receive
from proxy.errors import ClientDisconnected, PayloadTooLarge, ProxyError, RequestTimeout

_GONE: Message = {"type": "http.disconnect"}


class ClientBody:
    """See the module docstring."""

    def __init__(
        self, receive: Receive, limit: int, declared: int | None, stall: float | None
    ) -> None:
        if declared is not None and declared > limit:
            raise too_large(limit)
        self._receive = receive
        self.limit = limit
        self.stall = stall
        self.size = 0  # bytes received so far
        self.ended = False  # the last byte arrived
        self.gone = False  # the client disconnected
        self._over = asyncio.Event()  # nothing more will be read: the watchdog may listen

    async def read(self) -> bytes:
        """The next bytes of the body; ``b""`` once it has ended."""
        while not self.ended:
            try:
                message = await self._next()
            except ProxyError:
                self.close()
                raise
            body: bytes = message.get("body", b"")
            if not message.get("more_body", False):
                self.ended = True
                self.close()
            if body:
                return body
        return b""

    async def _next(self) -> Message:
        try:
            async with asyncio.timeout(self.stall):
                message = await self._receive()
        except TimeoutError:
            raise RequestTimeout(
                f"The upload stalled: no byte arrived for {self.stall:g} s.", code="body_timeout"
            ) from None
        if message["type"] == "http.disconnect":
            self.gone = True
            raise ClientDisconnected("The client disconnected in the middle of its upload.")
        self.size += len(message.get("body", b""))
        if self.size > self.limit:
            raise too_large(self.limit)
        return message

    def close(self) -> None:
        """Reading is over (ended, failed or abandoned): ``watch`` may go on."""
        self._over.set()

    async def watch(self) -> Message:
        """``receive`` for the watchdog: waits until reading is over; then the disconnect the
        reader saw, or the next message (``http.disconnect`` when the client leaves)."""
        await self._over.wait()
        if self.gone:
            return _GONE
        return await self._receive()


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload is larger than the limit of {limit} bytes (max_upload_bytes).",
        param="file",
    )
