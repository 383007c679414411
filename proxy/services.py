"""The objects every request path shares, built once by ``create_app`` (nothing at import)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from proxy.keys import Key, Keyring
from proxy.limits import Limiter, MemoryBackend, RedisBackend, Ticket
from proxy.observability.access import Access
from proxy.observability.metrics import Metrics
from proxy.relay import Relay
from proxy.routing import Router
from proxy.secrets import Scrubber, credential_headers
from proxy.settings import HTTPUpstream, Settings
from proxy.shutdown import Drain
from proxy.upstreams import build_upstreams
from proxy.upstreams.base import Upstream
from proxy.upstreams.wire import SharedWire

# Tokens reserved for the answer when a request does not say (no max_tokens): a burst of such
# requests cannot overshoot tpm by more than this each; send max_tokens for an exact bound.
DEFAULT_ANSWER_TOKENS = 1024


@dataclass
class Services:
    settings: Settings
    keys: Keyring
    limiter: Limiter
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
        limits = settings.limits
        backend = (
            RedisBackend(limits.redis_url or "") if limits.backend == "redis" else MemoryBackend()
        )
        limiter = Limiter(backend, limits.on_backend_error)
        return cls(
            settings, Keyring(settings), limiter, drain, metrics, scrubber, wire, relay,
            upstreams, router,
        )  # fmt: skip

    async def admit(self, key: Key, model: str | None, tokens: int, access: Access) -> Ticket:
        """Let a request of ``key`` for ``model`` in, reserving ``tokens``: 403 if the key may
        not use the model (not counted), 429 over a limit, 503 if the limits cannot be checked
        (``on_backend_error: deny``). ``model`` None: a request that names none
        (``/v1/files``), whose endpoint checked what the key may reach itself."""
        if model is not None:
            key.check(model)
        try:
            return await self.limiter.admit(key.name, key.limits, tokens)
        finally:
            if self.metrics is not None:
                self.metrics.limits_state(self.limiter.state, self.limiter.misses)

    async def limits_ready(self) -> bool:
        """Can the limits be checked now? (Always, in memory; Redis must answer.)"""
        return self.settings.limits.backend == "memory" or await self.limiter.ready()

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.aclose()
        await self.wire.aclose()
        await self.limiter.aclose()


def reservation(body_size: int, max_tokens: int | None) -> int:
    """Tokens to reserve up front: the request's own (about 4 bytes of JSON a token, which
    overcounts: on the safe side) and its answer's (``max_tokens``, or a default)."""
    return body_size // 4 + (max_tokens or DEFAULT_ANSWER_TOKENS)


def _secrets(settings: Settings) -> list[str | None]:
    """Everything that must never reach a client or a log: upstream keys and credential
    headers, and the client keys."""
    secrets: list[str | None] = list(settings.api_keys)
    secrets.extend(key.key for key in settings.keys)
    if settings.limits.redis_url:
        secrets.append(settings.limits.redis_url)  # may carry a password
    for config in settings.upstreams.values():
        if isinstance(config, HTTPUpstream):
            secrets.append(config.resolve_key())
            secrets.extend(credential_headers(config.headers))
    return secrets
