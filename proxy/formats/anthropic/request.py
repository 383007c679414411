"""Anthropic Messages request -> chat completions request (``messages_to_chat``).

The messages themselves are ``content``'s; this module maps the parameters:

* ``max_tokens`` (required, as at Anthropic), ``stop_sequences`` -> ``stop``,
  ``temperature``/``top_p``/``top_k`` (vLLM and llama.cpp take ``top_k``),
  ``metadata.user_id`` -> ``user``, ``stream`` (with ``include_usage`` so the answer's usage
  reaches ``message_delta``).
* ``tools`` -> function tools; server tools (``web_search_20250305``, ...) and ``mcp_servers``
  run at Anthropic, so they are a 400, not a silent no-op. ``tool_choice`` auto/any/tool/none
  -> ``"auto"``/``"required"``/the named function/``"none"``;
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``.
* ``thinking`` -> the upstream's reasoning switch, chosen by the caller (``THINKING_STYLES``).
* ``output_config.format`` (and the beta ``output_format``) -> ``response_format``.
* Anthropic-only knobs that steer Anthropic's own service (``cache_control``,
  ``service_tier``, ``container``, ``context_management``, ...) are dropped; fields Anthropic
  does not define are forwarded untouched, as the chat endpoint does
  (``repetition_penalty``, ``chat_template_kwargs``, ...).
"""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest
from proxy.formats.anthropic.content import chat_messages
from proxy.formats.anthropic.errors import invalid, missing, unsupported

Body = dict[str, Any]

THINKING_STYLES = ("reasoning_effort", "chat_template_kwargs", "none")

_TRANSLATED = frozenset(
    {
        "model", "messages", "system", "max_tokens", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "metadata", "tools", "tool_choice", "thinking", "output_config",
        "output_format", "mcp_servers",
    }
)  # fmt: skip
_DROPPED = frozenset(
    {
        "cache_control", "container", "context_management", "service_tier", "inference_geo",
        "speed", "diagnostics", "user_profile_id", "workspace_id", "betas", "billing_policy",
        "compaction", "fallback_credit_token", "fallbacks", "thread",
    }
)  # fmt: skip

# ``thinking.budget_tokens`` -> ``reasoning_effort``: at most 4096 is "low", at most 16384
# "medium", more is "high". Claude Code's own levels land one in each: "think" asks 4000,
# "think hard" 10000, "ultrathink" 31999.
_EFFORT_THRESHOLDS = ((4096, "low"), (16384, "medium"))
# Anthropic's ``output_config.effort`` has two levels above chat's "high".
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def messages_to_chat(body: Body, *, thinking: str = "reasoning_effort") -> Body:
    """An Anthropic Messages request body as a chat completions request body.

    ``thinking`` names the upstream's reasoning switch, one of ``THINKING_STYLES``:

    * ``"reasoning_effort"`` (OpenAI; vLLM with gpt-oss): ``enabled`` -> ``low``/``medium``/
      ``high`` from ``budget_tokens`` (thresholds above) or from ``output_config.effort``;
      ``adaptive`` -> that effort if given, else the upstream's default; ``disabled`` ->
      ``"none"``, OpenAI's off value (an upstream that rejects it wants the style ``"none"``).
    * ``"chat_template_kwargs"`` (vLLM/SGLang serving Qwen3-style templates):
      ``{"enable_thinking": true|false}``, merged into the client's own kwargs.
    * ``"none"``: the upstream has no switch; nothing is sent.

    A value the client set itself (``reasoning_effort``, ``enable_thinking``) wins. Raises
    ``InvalidRequest`` naming the offending ``param``.
    """
    if thinking not in THINKING_STYLES:
        raise ValueError(f"unknown thinking style {thinking!r}")
    out: Body = {"model": body["model"]} if "model" in body else {}
    out.update((key, value) for key, value in body.items() if key not in _TRANSLATED | _DROPPED)
    out["messages"] = chat_messages(body)
    out["max_tokens"] = _max_tokens(body)
    _sampling(body, out)
    _tools(body, out)
    _reasoning(body, out, thinking)
    _output_format(body, out)
    return out


def _max_tokens(body: Body) -> int:
    if "max_tokens" not in body:
        raise missing("max_tokens")
    value = body["max_tokens"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid("max_tokens", "it must be an integer of at least 1")
    return value


def _sampling(body: Body, out: Body) -> None:
    """The one-to-one fields: sampling, stop sequences, ``metadata.user_id``, ``stream``."""
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
            raise invalid("stop_sequences", "it must be an array of strings")
        out["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise invalid("stream", "it must be a boolean")
        out["stream"] = stream
        if stream:
            out["stream_options"] = {"include_usage": True}


def _tools(body: Body, out: Body) -> None:
    if body.get("mcp_servers"):
        raise InvalidRequest(
            "'mcp_servers' is not supported: this model is served through chat completions, "
            "which cannot connect to MCP servers.",
            param="mcp_servers",
            code="unsupported_parameter",
        )
    tools = body.get("tools")
    if tools is None or tools == []:
        return  # chat rejects an empty array, and tool_choice without tools
    if not isinstance(tools, list):
        raise invalid("tools", "it must be an array of tools")
    out["tools"] = [_function_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        _tool_choice(choice, out)


def _function_tool(tool: Any, where: str) -> Body:
    if not isinstance(tool, dict):
        raise invalid(where, "a tool must be an object")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise unsupported(
            f"{where}.type", str(kind), "(server tools run at Anthropic; only custom tools here)"
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise missing(f"{where}.name")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise missing(f"{where}.input_schema")
    function: Body = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, out: Body) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise invalid(
            "tool_choice", "its type must be 'auto', 'any', 'tool' (with a name) or 'none'"
        )
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False


def _reasoning(body: Body, out: Body, style: str) -> None:
    """``thinking`` (and ``output_config.effort``) -> the upstream's reasoning switch."""
    on = _thinking_on(body.get("thinking"))
    effort = _effort(body)
    if style == "reasoning_effort":
        value = "none" if on is False else effort
        if value is not None:
            out.setdefault("reasoning_effort", value)  # an explicit client value wins
    elif style == "chat_template_kwargs" and on is not None:
        kwargs = out.get("chat_template_kwargs")
        kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
        kwargs.setdefault("enable_thinking", on)  # an explicit client value wins
        out["chat_template_kwargs"] = kwargs


def _thinking_on(thinking: Any) -> bool | None:
    """True/False when ``thinking`` switches reasoning on/off, None when absent."""
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return False
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise invalid("thinking.budget_tokens", "it must be a positive integer")
        return True
    if kind in ("adaptive", "between_tools"):
        return True
    raise invalid("thinking.type", "it must be 'enabled', 'adaptive' or 'disabled'")


def _effort(body: Body) -> str | None:
    """``output_config.effort`` if given, else one derived from ``thinking.budget_tokens``."""
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if effort is not None:
        if effort not in _EFFORTS:
            raise invalid("output_config.effort", f"{effort!r} is not a known effort")
        return _EFFORTS[effort]
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking["budget_tokens"]
        return next((name for limit, name in _EFFORT_THRESHOLDS if budget <= limit), "high")
    return None


def _output_format(body: Body, out: Body) -> None:
    """Structured output (``output_config.format``, beta ``output_format``) as chat's
    ``response_format``."""
    config = body.get("output_config")
    spec = config.get("format") if isinstance(config, dict) else None
    spec = spec or body.get("output_format")
    if spec is None:
        return
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        raise invalid("output_config.format", "its type must be 'json_schema'")
    if not isinstance(spec.get("schema"), dict):
        raise missing("output_config.format.schema")
    out["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": spec["schema"]},
    }
