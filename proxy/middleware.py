"""Pure-ASGI middleware. Never ``BaseHTTPMiddleware``: it runs the endpoint in another task
and has buffered or broken streaming responses in past Starlette versions."""

from __future__ import annotations

import ipaddress

from proxy.asgi import ASGIApp, Receive, Scope, Send, header


class RootPath:
    """Serves the app under ``prefix`` too (``/llm/v1/chat/completions``), as a server's
    ``--root-path`` would: Starlette's router strips ``root_path`` from paths that carry it,
    and paths without it (a gateway that stripped it already) still match."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["root_path"] = self.prefix
        await self.app(scope, receive, send)


class TrustedProxies:
    """``X-Forwarded-For`` / ``X-Forwarded-Proto`` believed only from trusted peers.

    The client address becomes the right-most address in ``X-Forwarded-For`` that is not itself
    a trusted proxy. Whether a peer is trusted is computed once per address and cached (parsing
    addresses on every request was a visible cost in the benchmark's profile).
    """

    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        self.app = app
        self.any = "*" in trusted
        self.networks = [ipaddress.ip_network(t, strict=False) for t in trusted if t != "*"]
        self.cache: dict[str, bool] = {}

    def trusts(self, host: str) -> bool:
        known = self.cache.get(host)
        if known is None:
            if len(self.cache) > 10_000:
                self.cache.clear()
            try:
                address = ipaddress.ip_address(host)
                known = self.any or any(address in network for network in self.networks)
            except ValueError:
                known = self.any
            self.cache[host] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and self.trusts(client[0]):
            forwarded = header(scope, b"x-forwarded-for")
            if forwarded:
                hops = [hop.strip() for hop in forwarded.decode("latin-1").split(",")]
                host = next((h for h in reversed(hops) if h and not self.trusts(h)), hops[0])
                scope["client"] = (host, 0)
            proto = header(scope, b"x-forwarded-proto")
            if proto:
                scheme = proto.decode("latin-1").split(",")[-1].strip().lower()
                if scheme in ("http", "https"):
                    websocket = scope["type"] == "websocket"
                    scope["scheme"] = (
                        {"http": "ws", "https": "wss"}[scheme] if websocket else scheme
                    )
        await self.app(scope, receive, send)
