"""How upstreams say that something went wrong: the error shapes of OpenAI-compatible servers.

Pure functions over what an upstream sent; the HTTP layer (``upstreams.http``) raises what
they build, at the boundary where secrets are scrubbed.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import UpstreamStatusError, UpstreamStreamError


def payload_error(payload: Any) -> UpstreamStreamError | None:
    """The error an upstream sent as a JSON payload (in a stream, or a 200 JSON body), if
    ``payload`` is one of the error shapes: ``{"error": {...}}`` (OpenAI, vLLM, DashScope),
    ``{"error": "text"}``, vLLM's legacy ``{"object": "error", "message": ...}``."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if error:
        if isinstance(error, dict):
            message = error.get("message") or error.get("msg") or "upstream error"
            return UpstreamStreamError(
                str(message),
                type=optional_str(error.get("type")) or "upstream_error",
                param=optional_str(error.get("param")),
            )
        return UpstreamStreamError(str(error))
    if payload.get("object") == "error":
        return UpstreamStreamError(str(payload.get("message") or "upstream error"))
    return None


def status_error(raw: bytes, status: int, reason: str) -> UpstreamStatusError:
    """The error for an upstream's 4xx/5xx answer, from the first bytes of its body."""
    details = error_object(raw)
    return UpstreamStatusError(
        error_message(raw, status, reason),
        status=status,
        type=optional_str(details.get("type")) if details else None,
        code=optional_str(details.get("code")) if details else None,
        param=optional_str(details.get("param")) if details else None,
    )


def error_object(raw: bytes) -> dict[str, Any] | None:
    """The ``error`` object of an upstream error body, in OpenAI's or vLLM's legacy shape."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        if isinstance(data.get("error"), dict):
            return data["error"]  # type: ignore[no-any-return]
        if data.get("object") == "error":  # vLLM's legacy shape
            return data
    return None


def error_message(raw: bytes, status: int, reason: str) -> str:
    """The upstream's own words, from whichever error shape it uses."""
    details = error_object(raw)
    if details and details.get("message"):
        return str(details["message"])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        if isinstance(data.get("error"), str):
            return str(data["error"])
        detail = data.get("detail")  # FastAPI, e.g. Qwen's openai_api.py
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
                for d in detail
                if isinstance(d, dict)
            )
    text = raw.decode("utf-8", "replace").strip()
    if text and not text.lstrip().startswith("<") and len(text) <= 500:
        return text
    return f"The upstream answered {status} {reason}."


def optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
