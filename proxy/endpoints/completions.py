"""``POST /v1/completions``: OpenAI's legacy text completions, stream and not."""

from __future__ import annotations

from typing import Any

from proxy.endpoints.base import Endpoint
from proxy.endpoints.schemas import CompletionRequest
from proxy.endpoints.validate import model_name, optional, positive
from proxy.errors import InvalidRequest
from proxy.formats.completions import CompletionsFormat
from proxy.upstreams.base import Call


class Completions(Endpoint):
    """The legacy completions endpoint: validate, then the relay does the rest."""

    path = "/v1/completions"
    summary = "Create a text completion (legacy; stream: Server-Sent Events)"
    schema = CompletionRequest
    format = CompletionsFormat

    def parse(self, body: dict[str, Any], request_id: str) -> Call:
        model_name(body)
        check_texts_or_tokens(body, "prompt")
        optional(body, "stream", bool)
        options = optional(body, "stream_options", dict) or {}
        optional(options, "include_usage", bool, "stream_options.include_usage")
        return Call(
            api="completions",
            body=body,
            model=body["model"],
            stream=bool(body.get("stream")),
            request_id=request_id,
            include_usage=bool(options.get("include_usage")),
            max_tokens=positive(body, "max_tokens"),
        )


def check_texts_or_tokens(body: dict[str, Any], key: str) -> None:
    """``body[key]`` is required and is a string, an array of strings, an array of token ids
    (integers) or an array of arrays of token ids, none of them empty: what OpenAI accepts as
    a ``prompt`` or an embeddings ``input``."""
    value = body.get(key)
    if isinstance(value, str) and value:
        return
    if isinstance(value, list) and value:
        if all(_token(v) for v in value):
            return
        for index, item in enumerate(value):
            if not (isinstance(item, str) and item) and not _tokens(item):
                raise _invalid(f"{key}[{index}]")
        return
    if value is None:
        raise InvalidRequest(
            f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter"
        )
    raise _invalid(key)


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_token(v) for v in value)


def _invalid(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value for '{param}': expected a non-empty string, an array of non-empty "
        "strings, an array of token ids (integers) or an array of such arrays.",
        param=param,
        code="invalid_value",
    )
