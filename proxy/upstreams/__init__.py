"""Upstreams: the built-in echo model and OpenAI-compatible HTTP servers."""

from __future__ import annotations

from proxy.settings import EchoUpstream, HTTPUpstream, Settings
from proxy.upstreams.base import ChatRequest, Reply, Route, Upstream
from proxy.upstreams.echo import EchoModel
from proxy.upstreams.openai import OpenAICompatible, Send

__all__ = ["ChatRequest", "Reply", "Route", "Upstream", "build_routes"]


def build_upstream(name: str, config: EchoUpstream | HTTPUpstream, send: Send) -> Upstream:
    if isinstance(config, EchoUpstream):
        return EchoModel(config)
    return OpenAICompatible(name, config, send)


def build_routes(settings: Settings, send: Send) -> tuple[list[Upstream], dict[str, Route]]:
    """One upstream object per configured upstream, and the public model routes onto them.

    ``send`` sends one request upstream and returns the streaming response (proxy.app).
    """
    upstreams = {name: build_upstream(name, cfg, send) for name, cfg in settings.upstreams.items()}
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


def _deadline(config: EchoUpstream | HTTPUpstream) -> float | None:
    """How long one whole answer may take: ``timeouts.total`` (the echo model has none)."""
    return config.timeouts.total if isinstance(config, HTTPUpstream) else None
