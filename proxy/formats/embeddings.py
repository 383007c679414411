"""OpenAI's embeddings (``POST /v1/embeddings``) as the relay answers them: one JSON ``list``
of ``embedding`` objects, never a stream.

Passed through to upstreams that serve embeddings, ``encoding_format`` included (``float``, or
``base64``: the little-endian float32 bytes, which openai-python asks for by default and
decodes itself), with the public ``model`` name. A model whose upstream does not serve them
gets a 400 naming it: there is no translation from chat.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import UpstreamMalformed
from proxy.formats.completions import unserved
from proxy.formats.openai_shape import OpenAIShape
from proxy.upstreams.base import Call, Reply, Route

Json = dict[str, Any]


class EmbeddingExchange:
    """One attempt of an embeddings call (``relay.Exchange``; only ``complete`` is used)."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def stream(self) -> Any:
        raise AssertionError("embeddings never stream (the endpoint makes no stream call)")

    def items(self, reply: Reply) -> Any:
        raise AssertionError("embeddings never stream (the endpoint makes no stream call)")

    async def complete(self, reply: Reply) -> Json:
        """The upstream's answer with the public model name, if it is an embeddings list."""
        answer = reply.completion
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise UpstreamMalformed("The upstream did not answer an embeddings list.")
        if not all(isinstance(item, dict) and "embedding" in item for item in answer["data"]):
            raise UpstreamMalformed("The upstream answered an embedding without a vector.")
        answer["object"] = "list"
        answer["model"] = self.call.model
        return answer


class EmbeddingsFormat(OpenAIShape):
    """Embeddings, for the relay (``relay.Format``): only the non-stream half is used."""

    @staticmethod
    def exchange(call: Call, route: Route) -> EmbeddingExchange:
        unserved(call, route, "embeddings", None)
        return EmbeddingExchange(call)
