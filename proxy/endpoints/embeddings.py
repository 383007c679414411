"""``POST /v1/embeddings``: OpenAI's embeddings, one JSON answer."""

from __future__ import annotations

from typing import Any

from proxy.endpoints.base import Endpoint
from proxy.endpoints.completions import check_texts_or_tokens
from proxy.endpoints.schemas import EmbeddingRequest
from proxy.endpoints.validate import model_name, optional, positive
from proxy.errors import InvalidRequest
from proxy.formats.embeddings import EmbeddingsFormat
from proxy.upstreams.base import Call

ENCODINGS = ("float", "base64")


class Embeddings(Endpoint):
    """The embeddings endpoint: validate, then the relay does the rest (never a stream)."""

    path = "/v1/embeddings"
    summary = "Create embeddings"
    schema = EmbeddingRequest
    format = EmbeddingsFormat

    def parse(self, body: dict[str, Any], request_id: str) -> Call:
        model_name(body)
        check_texts_or_tokens(body, "input")
        encoding = optional(body, "encoding_format", str)
        if encoding is not None and encoding not in ENCODINGS:
            raise InvalidRequest(
                f"Invalid value for 'encoding_format': '{encoding}'. Supported values are: "
                "'float' and 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        positive(body, "dimensions")
        return Call("embeddings", body, body["model"], stream=False, request_id=request_id)

    def reserve(self, body_size: int, call: Call) -> int:
        """The input's share only: an embedding generates no tokens (and its request has no
        ``max_tokens`` to bound them with)."""
        return body_size // 4
