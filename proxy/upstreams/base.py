"""The seam between the proxy and a model: one method, ``Upstream.open``.

An upstream turns a validated ``Call`` into a ``Reply``. ``open`` returns once the upstream
has answered (for HTTP upstreams: once the response headers are in), raising a ``ProxyError``
for everything that goes wrong before that; after it returns, the relay decides when its own
response commits. The caller owns the reply and must ``aclose()`` it, whatever happens.

A reply's items are in the shape of the API the call was made in (``Call.api``): chat
completion chunks for ``chat``, and so on; translating between APIs is the formats' work
(``proxy.formats``), never an upstream's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.upstreams.transfer import RawBody, Transfer


@dataclass(slots=True)
class Call:
    """A client's request after validation, in the shape of one API."""

    api: str  # "chat", ...: the API whose request ``body`` is
    body: dict[str, Any]  # the client's JSON body, unknown fields included
    model: str  # the public model name
    stream: bool
    request_id: str = ""
    include_usage: bool = False  # chat: stream_options.include_usage
    max_tokens: int | None = None
    # The client's headers an upstream speaking ``api`` natively gets too (Anthropic's
    # ``anthropic-version``, ``anthropic-beta``); none otherwise: never its key.
    headers: dict[str, str] = field(default_factory=dict)
    transfer: Transfer | None = None  # not one JSON body: an upload, a file (``transfer``)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a public model goes: the upstream, its model name, and how to call it."""

    public_model: str
    upstream_name: str
    upstream: Upstream
    upstream_model: str
    force_stream: bool = False
    deadline: float | None = None  # seconds a whole answer may take (timeouts.total)


@dataclass(slots=True)
class Reply:
    """An upstream's answer: either one JSON ``completion`` or a stream of ``chunks``.

    ``chunks`` yields decoded items as they arrive and raises ``ProxyError`` if the stream
    breaks. ``aclose`` finishes the generator and releases the upstream connection; it is
    idempotent.
    """

    completion: dict[str, Any] | None = None
    chunks: AsyncGenerator[dict[str, Any], None] | None = None
    raw: RawBody | None = None  # an answer passed on as bytes (``transfer``)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        if self.chunks is not None:
            await self.chunks.aclose()  # a generator suspended mid-stream is finished first
        while self.closers:
            await self.closers.pop()()


class Upstream(Protocol):
    """Anything that can answer a call."""

    # The APIs it serves natively (``Call.api`` values); a format translates a call in another
    # API into one of these (a Responses call to a chat-only server becomes a chat call).
    apis: frozenset[str]

    async def open(self, call: Call, route: Route) -> Reply:
        """Send the call; return once the upstream has answered."""
        ...

    async def aclose(self) -> None:
        """Release what the upstream holds (the app's lifespan calls it)."""
        ...
