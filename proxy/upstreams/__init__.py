"""Upstreams: the built-in echo model and OpenAI-compatible HTTP servers.

``KINDS`` is the registry from a config's ``type`` to the factory that builds its upstream: a
new kind is one module and one line here (and its name among ``HTTPUpstream.type``'s values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.secrets import Scrubber
from proxy.settings import HTTPUpstream, Settings
from proxy.upstreams.base import Call, Reply, Route, Upstream
from proxy.upstreams.echo import EchoModel
from proxy.upstreams.openai import OpenAICompatible
from proxy.upstreams.qwen import Qwen
from proxy.upstreams.wire import Wire

__all__ = ["KINDS", "Call", "Reply", "Route", "Upstream", "build_routes"]

Factory = Callable[[str, Any, Wire, Scrubber], Upstream]

KINDS: dict[str, Factory] = {
    "echo": lambda name, config, wire, scrubber: EchoModel(config),
    "openai": OpenAICompatible,
    "qwen": Qwen,
}


def build_routes(
    settings: Settings, wire: Wire, scrubber: Scrubber
) -> tuple[list[Upstream], dict[str, Route]]:
    """One upstream object per configured upstream, and the public model routes onto them.
    ``wire`` is the app's shared HTTP client; it may be opened later (the lifespan)."""
    upstreams = {
        name: KINDS[config.type](name, config, wire, scrubber)
        for name, config in settings.upstreams.items()
    }
    routes = {
        public: Route(
            public_model=public,
            upstream_name=route.upstream,
            upstream=upstreams[route.upstream],
            upstream_model=route.model or public,
            force_stream=route.force_stream,
            deadline=_deadline(settings.upstreams[route.upstream]),
        )
        for public, route in settings.models.items()
    }
    return list(upstreams.values()), routes


def _deadline(config: Any) -> float | None:
    """How long one whole answer may take: ``timeouts.total`` (the echo model has none)."""
    return config.timeouts.total if isinstance(config, HTTPUpstream) else None
