"""Upstreams: the built-in echo model and OpenAI-compatible HTTP servers."""

from __future__ import annotations

import httpx

from proxy.settings import EchoUpstream, Settings
from proxy.upstreams.base import ChatRequest, Reply, Route, Upstream
from proxy.upstreams.echo import EchoModel

__all__ = ["ChatRequest", "Reply", "Route", "Upstream", "build_routes"]


def build_upstream(config: object, client: httpx.AsyncClient) -> Upstream:
    if isinstance(config, EchoUpstream):
        return EchoModel(config)
    raise NotImplementedError(f"upstream type {getattr(config, 'type', config)!r}")


def build_routes(
    settings: Settings, client: httpx.AsyncClient
) -> tuple[list[Upstream], dict[str, Route]]:
    """One upstream object per configured upstream, and the public model routes onto them."""
    upstreams = {name: build_upstream(cfg, client) for name, cfg in settings.upstreams.items()}
    routes = {
        public: Route(
            public_model=public,
            upstream_name=route.upstream,
            upstream=upstreams[route.upstream],
            upstream_model=route.model or public,
            force_stream=route.force_stream,
        )
        for public, route in settings.models.items()
    }
    return list(upstreams.values()), routes
