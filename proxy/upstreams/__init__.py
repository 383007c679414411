"""Upstreams: the built-in echo model and OpenAI-compatible HTTP servers.

``KINDS`` is the registry from a config's ``type`` to the factory that builds its upstream: a
new kind is one module and one line here (and its name among ``HTTPUpstream.type``'s values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.secrets import Scrubber
from proxy.settings import Settings
from proxy.upstreams.base import Call, Reply, Route, Upstream
from proxy.upstreams.echo import EchoModel
from proxy.upstreams.openai import OpenAICompatible
from proxy.upstreams.qwen import Qwen
from proxy.upstreams.wire import Wire

__all__ = ["KINDS", "Call", "Reply", "Route", "Upstream", "build_upstreams"]

Factory = Callable[[str, Any, Wire, Scrubber], Upstream]

KINDS: dict[str, Factory] = {
    "echo": lambda name, config, wire, scrubber: EchoModel(config),
    "openai": OpenAICompatible,
    "qwen": Qwen,
}


def build_upstreams(settings: Settings, wire: Wire, scrubber: Scrubber) -> dict[str, Upstream]:
    """One upstream object per configured upstream. ``wire`` is the app's shared HTTP client;
    it may be opened later (the lifespan)."""
    return {
        name: KINDS[config.type](name, config, wire, scrubber)
        for name, config in settings.upstreams.items()
    }
