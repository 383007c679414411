"""The API endpoints: each a module with one ``Endpoint`` subclass, listed in ``ENDPOINTS``.

A new endpoint is one module and one line here; ``proxy.app`` routes and documents them all.
"""

from __future__ import annotations

from proxy.endpoints.base import Endpoint
from proxy.endpoints.chat import ChatCompletions
from proxy.endpoints.count_tokens import CountTokens
from proxy.endpoints.messages import Messages

ENDPOINTS: tuple[type[Endpoint], ...] = (ChatCompletions, Messages, CountTokens)

__all__ = ["ENDPOINTS", "Endpoint"]
