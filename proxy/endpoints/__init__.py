"""The API endpoints: each a module with one ``Endpoint`` subclass, listed in ``ENDPOINTS``.

A new endpoint is one module and one line here; ``proxy.app`` routes and documents them all.
Endpoints whose requests are not one JSON body (uploads, files) are ``TransferEndpoint``s,
listed in ``TRANSFERS`` (``endpoints.transfer``).
"""

from __future__ import annotations

from proxy.endpoints.base import Endpoint
from proxy.endpoints.chat import ChatCompletions
from proxy.endpoints.completions import Completions
from proxy.endpoints.count_tokens import CountTokens
from proxy.endpoints.embeddings import Embeddings
from proxy.endpoints.files import Files
from proxy.endpoints.messages import Messages
from proxy.endpoints.responses import Responses
from proxy.endpoints.transfer import TransferEndpoint
from proxy.endpoints.uploads import Transcriptions, Translations

ENDPOINTS: tuple[type[Endpoint], ...] = (
    ChatCompletions,
    Responses,
    Completions,
    Embeddings,
    Messages,
    CountTokens,
)
TRANSFERS: tuple[type[TransferEndpoint], ...] = (Transcriptions, Translations, Files)

__all__ = ["ENDPOINTS", "TRANSFERS", "Endpoint", "TransferEndpoint"]
