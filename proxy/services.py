"""The objects every request path shares, built once by ``create_app`` (nothing at import)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from proxy.auth import Authenticator
from proxy.observability.metrics import Metrics
from proxy.relay import Relay
from proxy.routing import Router
from proxy.secrets import Scrubber, credential_headers
from proxy.settings import HTTPUpstream, Settings
from proxy.shutdown import Drain
from proxy.upstreams import build_upstreams
from proxy.upstreams.base import Upstream
from proxy.upstreams.wire import SharedWire


@dataclass
class Services:
    settings: Settings
    auth: Authenticator
    drain: Drain
    metrics: Metrics | None
    scrubber: Scrubber
    wire: SharedWire
    relay: Relay
    upstreams: dict[str, Upstream]
    router: Router

    @classmethod
    def build(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> Services:
        drain = Drain(settings.shutdown_grace_seconds)
        metrics = Metrics() if settings.metrics else None
        scrubber = Scrubber(_secrets(settings))
        wire = SharedWire(settings.pool, transport)  # opened by the app's lifespan
        upstreams = build_upstreams(settings, wire, scrubber)
        router = Router(settings, upstreams, metrics)
        relay = Relay(
            drain=drain,
            metrics=metrics,
            keepalive=settings.keepalive_seconds,
            send_timeout=settings.send_timeout_seconds,
        )
        auth = Authenticator(settings.api_keys)
        return cls(settings, auth, drain, metrics, scrubber, wire, relay, upstreams, router)

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.aclose()
        await self.wire.aclose()


def _secrets(settings: Settings) -> list[str | None]:
    """Everything that must never reach a client or a log: upstream keys and credential
    headers, and the client keys."""
    secrets: list[str | None] = list(settings.api_keys)
    for config in settings.upstreams.values():
        if isinstance(config, HTTPUpstream):
            secrets.append(config.resolve_key())
            secrets.extend(credential_headers(config.headers))
    return secrets
