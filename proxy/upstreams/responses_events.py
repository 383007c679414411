"""A native Responses upstream's SSE events as items: one dict per event, its ``type`` set.

Unlike chat chunks, an upstream's error is *not* raised here: whether it may be retried (before
the client's stream commits) or must be passed on as the stream's last event (after) is the
format's decision (``formats.responses_native``). What is normalised here, at the wire:

- the event name: OpenAI repeats it as the payload's ``type``; a server that sends only the
  ``event:`` line gets ``type`` filled in from it;
- errors in the other shapes servers use (``data: {"error": {...}}`` without a type, vLLM's
  ``{"object": "error"}``, llama.cpp's ``error:`` line) become Responses ``error`` events, and
  an ``error`` event carries its fields both at the top level and under ``error`` (OpenAI
  documents the first and sends the second; openai-python raises only on the second);
- the messages of error events are scrubbed of secrets, since they may reach the client as
  they are (the raised errors of other APIs are scrubbed at the HTTP boundary instead).

Comments (pings), empty events and CRLF framing are already gone (``proxy.sse``).
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import UpstreamMalformed
from proxy.jsondepth import TOO_DEEP, writable
from proxy.secrets import Scrubber
from proxy.sse import Event
from proxy.upstreams import failures
from proxy.upstreams.http import DONE

Json = dict[str, Any]


def responses_event(event: Event, upstream: str, scrubber: Scrubber) -> Any:
    """One SSE event -> an event dict, ``None`` (skip) or ``DONE``. Raises when unusable."""
    data = event.data.strip()
    if not data:
        return None
    if data == b"[DONE]":  # not OpenAI's, but some servers end every stream with it
        return DONE
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if event.event == "error":  # llama.cpp's legacy "error: <text>"
            return error_event(scrubber.text(data.decode("utf-8", "replace")), None, None)
        raise UpstreamMalformed(
            f"The upstream '{upstream}' sent malformed JSON in the stream."
        ) from exc
    if not isinstance(payload, dict):
        raise UpstreamMalformed(f"The upstream '{upstream}' sent an event that is not an object.")
    if not writable(data, payload):  # read, but not writable on (``proxy.jsondepth``)
        raise UpstreamMalformed(f"The upstream '{upstream}' sent an event {TOO_DEEP}.")
    if "type" not in payload:
        payload = _typed(payload, event.event, upstream)
    if payload["type"] == "error":
        _both_shapes(payload)
    if payload["type"] in ("error", "response.failed"):
        _scrub(payload, scrubber)
    return payload


def error_event(message: str, code: str | None, param: str | None) -> Json:
    """A Responses ``error`` event: the fields at the top level, as OpenAI documents them,
    and again under ``error``, as OpenAI actually sends them (openai-python raises on that)."""
    fields = {"code": code, "message": message, "param": param}
    return {"type": "error", **fields, "error": {"type": "upstream_error", **fields}}


def _typed(payload: Json, name: str | None, upstream: str) -> Json:
    """An event without ``type``: an error in another shape, or named by its ``event:`` line."""
    error = failures.payload_error(payload)
    if error is None and name == "error":
        error = failures.payload_error({"error": payload})
    if error is not None:
        details = payload.get("error")
        code = details.get("code") if isinstance(details, dict) else None
        return error_event(error.message, None if code is None else str(code), error.param)
    if not name:
        raise UpstreamMalformed(f"The upstream '{upstream}' sent an event without a type.")
    return {"type": name, **payload}


def _both_shapes(payload: Json) -> None:
    """An ``error`` event with its fields both at the top level and under ``error`` (see
    ``error_event``): whichever of the two the server sent, a client reading the other finds
    them too."""
    nested = payload.get("error")
    if not isinstance(nested, dict):
        nested = payload["error"] = {"type": "upstream_error"}
    for key in ("code", "message", "param"):
        value = payload.get(key, nested.get(key))
        payload.setdefault(key, value)
        nested.setdefault(key, value)
    if not payload["message"]:
        payload["message"] = nested["message"] = "The upstream failed."


def _scrub(payload: Json, scrubber: Scrubber) -> None:
    """The messages of an error event (or a failed response's error), scrubbed in place."""
    response = payload.get("response")
    nested = response.get("error") if isinstance(response, dict) else None
    for holder in (payload, payload.get("error"), nested):
        if isinstance(holder, dict) and isinstance(holder.get("message"), str):
            holder["message"] = scrubber.text(holder["message"])
