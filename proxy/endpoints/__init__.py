"""The API endpoints: each a module with one ``Endpoint`` subclass, listed in ``ENDPOINTS``.

A new endpoint is one module and one line here; ``proxy.app`` routes and documents them all.
"""

from __future__ import annotations

from proxy.endpoints.base import Endpoint
from proxy.endpoints.chat import ChatCompletions
from proxy.endpoints.completions import Completions
from proxy.endpoints.count_tokens import CountTokens
from proxy.endpoints.embeddings import Embeddings
from proxy.endpoints.messages import Messages
from proxy.endpoints.responses import Responses

ENDPOINTS: tuple[type[Endpoint], ...] = (
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
    Messages,
    CountTokens,
)

__all__ = ["ENDPOINTS", "Endpoint"]
