"""OpenAI's legacy text completions (``POST /v1/completions``) as the relay writes them:
``data: <json>`` chunks of ``object: "text_completion"`` with the text in ``choices[].text``,
a usage chunk if asked for, then ``data: [DONE]``; or one ``text_completion`` object.

Passed through to upstreams that serve ``completions`` (vLLM, llama.cpp, Ollama, OpenAI's
``gpt-3.5-turbo-instruct``), normalised like chat chunks: ``id``/``created`` kept constant,
the public ``model`` on every chunk, empty events dropped. A model whose upstream does not
serve it gets a 400: a chat template around the prompt would change what the model is asked,
which is what a client of the legacy API chose to avoid (README "POST /v1/completions").
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

from proxy.errors import InvalidRequest, ProxyError, UpstreamTruncated
from proxy.formats.chunks import Chunk, estimate_tokens, malformed, valid_usage
from proxy.formats.openai_shape import OpenAIShape
from proxy.sse import DONE, encode_event
from proxy.upstreams.base import Call, Reply, Route


def new_id() -> str:
    return "cmpl-" + os.urandom(16).hex()


class CompletionStream:
    """One text completion stream; see ``relay.StreamFormat``. It commits at the first text
    or finish_reason."""

    __slots__ = (
        "_usage",
        "committed",
        "created",
        "finished",
        "id",
        "include_usage",
        "model",
        "prompt",
        "texts",
    )

    def __init__(self, call: Call) -> None:
        self.model = call.model
        self.prompt = call.body.get("prompt")
        self.include_usage = call.include_usage
        self.id: str | None = None
        self.created = 0
        self.committed = False
        self.finished = False
        self.texts: list[str] = []  # the text so far, to estimate usage if none is reported
        self._usage: dict[str, Any] | None = None

    def feed(self, item: Any) -> bytes | None:
        chunk = self.normalize(item)
        if chunk is None:
            return None
        for choice in chunk["choices"]:
            if choice.get("text"):
                self.texts.append(choice["text"])
                self.committed = True
            if choice.get("finish_reason"):
                self.finished = self.committed = True
        return encode_event(chunk)

    def normalize(self, chunk: Any) -> Chunk | None:
        """The chunk as OpenAI shapes it, or None to drop it. Raises on unusable shapes."""
        if not isinstance(chunk, dict):
            raise malformed("a chunk that is not a JSON object")
        if self.id is None:
            self.id = chunk.get("id") or new_id()
            created = chunk.get("created")
            self.created = created if isinstance(created, int) else int(time.time())
        chunk.update(id=self.id, object="text_completion", created=self.created, model=self.model)
        if chunk.get("usage") is not None:
            chunk["usage"] = self._usage = valid_usage(chunk["usage"]) or self._usage
        choices = chunk.get("choices")
        if not isinstance(choices, list | None):
            raise malformed("a chunk whose choices are not a list")
        for choice in choices or ():
            _check_choice(choice)
        if not choices and not (self.include_usage and chunk.get("usage")):
            return None
        chunk["choices"] = choices or []
        return chunk

    def end(self) -> bytes:
        if not self.finished:
            raise UpstreamTruncated("The upstream ended the stream before the answer was complete.")
        if self.include_usage and self._usage is None:
            usage = estimate(self.prompt, self.texts)
            chunk = {"id": self.id, "object": "text_completion", "created": self.created}
            return encode_event({**chunk, "model": self.model, "choices": [], "usage": usage})
        return DONE

    def error(self, error: ProxyError) -> bytes:
        return encode_event(error.to_dict())

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage


def prompt_texts(prompt: Any) -> list[str]:
    """The prompts of a (validated) request as text: a string, strings, token ids (written
    as their numbers), or lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        return [""]
    if all(isinstance(token, int) for token in prompt):
        return [" ".join(map(str, prompt))]
    return [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt]


def estimate(prompt: Any, texts: list[str]) -> dict[str, Any]:
    """Usage when the upstream reported none: an estimate, marked as one."""
    prompt_tokens = sum(estimate_tokens(text) for text in prompt_texts(prompt))
    completion = estimate_tokens("".join(texts))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "estimated": True,
    }


def _check_choice(choice: Any) -> None:
    if not isinstance(choice, dict):
        raise malformed("a choice that is not an object")
    if not isinstance(choice.get("text"), str | None):
        raise malformed("a text that is not a string")


class CompletionExchange:
    """One attempt of a text completion against an upstream that serves them."""

    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call

    def stream(self) -> CompletionStream:
        return CompletionStream(self.call)

    def items(self, reply: Reply) -> Any:
        if reply.chunks is not None:
            return reply.chunks
        return _iterate(self._completion(reply.completion))

    async def complete(self, reply: Reply) -> Chunk:
        """One ``text_completion`` object, aggregated if the upstream streamed."""
        if reply.chunks is not None:
            return await self._aggregate(reply.chunks)
        completion = self._completion(reply.completion)
        if not completion.get("usage"):
            answer = [c.get("text") or "" for c in completion["choices"]]
            completion["usage"] = estimate(self.call.body.get("prompt"), answer)
        return completion

    async def _aggregate(self, chunks: AsyncIterator[Any]) -> Chunk:
        """A stream's choices merged by index (a stream-only upstream, the echo model)."""
        stream = CompletionStream(self.call)
        texts: dict[int, list[str]] = {}
        finish: dict[int, Any] = {}
        async for item in chunks:
            for choice in (stream.normalize(item) or {}).get("choices") or ():
                index = choice.get("index", 0)
                texts.setdefault(index, []).append(choice.get("text") or "")
                finish[index] = choice.get("finish_reason") or finish.get(index)
        if not any(finish.values()):
            raise UpstreamTruncated("The upstream ended the stream before the answer was complete.")
        choices = [
            {"text": "".join(parts), "index": i, "logprobs": None, "finish_reason": finish[i]}
            for i, parts in sorted(texts.items())
        ]
        usage = stream.usage or estimate(stream.prompt, [c["text"] for c in choices])
        body = {"id": stream.id, "object": "text_completion", "created": stream.created}
        return {**body, "model": self.call.model, "choices": choices, "usage": usage}

    def _completion(self, completion: Any) -> Chunk:
        if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
            raise malformed("JSON that is not a text completion")
        for choice in completion["choices"]:
            _check_choice(choice)
        completion["id"] = completion.get("id") or new_id()
        completion["object"] = "text_completion"
        if not isinstance(completion.get("created"), int):
            completion["created"] = int(time.time())
        completion["model"] = self.call.model
        return completion


async def _iterate(completion: Chunk) -> Any:
    """A whole completion (an upstream that answered JSON to a stream request) as chunks."""
    for choice in completion["choices"]:
        yield {**completion, "usage": None, "choices": [choice]}
    if completion.get("usage"):
        yield {**completion, "choices": []}


class CompletionsFormat(OpenAIShape):
    """Legacy text completions, for the relay (``relay.Format``)."""

    @staticmethod
    def exchange(call: Call, route: Route) -> CompletionExchange:
        unserved(call, route, "completions", "/v1/chat/completions")
        return CompletionExchange(call)


def unserved(call: Call, route: Route, api: str, instead: str | None) -> None:
    """A 400 naming the model when its upstream does not serve ``api``."""
    if api in route.upstream.apis:
        return
    served = ", ".join(sorted(route.upstream.apis)) or "none"
    hint = f" Use {instead} with it." if instead and "chat" in route.upstream.apis else ""
    raise InvalidRequest(
        f"The model '{call.model}' does not serve /v1/{api}: its upstream "
        f"'{route.upstream_name}' speaks {served}.{hint}",
        param="model",
        code="model_not_supported",
    )
