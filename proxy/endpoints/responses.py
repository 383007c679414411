"""``POST /v1/responses``: OpenAI's Responses API, stream and not, passed through to native
upstreams or translated to chat completions (``formats.responses``)."""

from __future__ import annotations

from typing import Any

from proxy.endpoints.base import Endpoint
from proxy.endpoints.schemas import ResponsesRequest
from proxy.endpoints.validate import invalid_type, model_name, optional, positive
from proxy.errors import InvalidRequest
from proxy.formats.responses import ResponsesFormat
from proxy.upstreams.base import Call

# Where a request may take its input from, other than ``input`` (state a native upstream keeps).
INPUT_ELSEWHERE = ("previous_response_id", "conversation", "prompt")


class Responses(Endpoint):
    """The Responses endpoint: validate what every upstream needs, then the relay; what a
    chat completions upstream cannot be asked is refused per attempt, by the format."""

    path = "/v1/responses"
    summary = "Create a model response (stream: Server-Sent Events, event by event)"
    schema = ResponsesRequest
    format = ResponsesFormat

    def parse(self, body: dict[str, Any], request_id: str) -> Call:
        validate_responses(body)
        return Call(
            api="responses",
            body=body,
            model=body["model"],
            stream=bool(body.get("stream")),
            request_id=request_id,
            include_usage=True,  # a Responses stream always ends with its usage
            max_tokens=body.get("max_output_tokens"),
        )


def validate_responses(body: dict[str, Any]) -> None:
    """The fields the proxy relies on, whoever answers; raise InvalidRequest naming the param."""
    model_name(body)
    items = body.get("input")
    if items is None and not any(body.get(key) is not None for key in INPUT_ELSEWHERE):
        raise InvalidRequest(
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    if items is not None and not isinstance(items, str | list):
        raise InvalidRequest(
            "Invalid type for 'input': expected a string or an array of input items, but got "
            f"{type(items).__name__} instead.",
            param="input",
            code="invalid_type",
        )
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            raise invalid_type(f"input[{index}]", dict, item)
    optional(body, "stream", bool)
    optional(body, "instructions", str)
    optional(body, "tools", list)
    optional(body, "background", bool)
    optional(body, "store", bool)
    optional(body, "metadata", dict)
    positive(body, "max_output_tokens")
