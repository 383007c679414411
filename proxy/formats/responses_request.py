"""A Responses API request translated to a chat completions request, for chat-only upstreams.

Pure functions: a request body (parsed JSON) in, a chat body out, or ``InvalidRequest`` naming
the offending ``param`` the way OpenAI names it (``input[2].content[0].type``).

Decisions, each one a place where a chat upstream would otherwise fail or silently differ:

* ``developer`` becomes ``system``: Qwen's ``openai_api.py``, llama.cpp and older vLLM chat
  templates know only ``system``/``user``/``assistant``/``tool`` and reject or drop the rest.
* ``instructions`` becomes the first message, a ``system`` one.
* Text-only content becomes one string (parts joined with ``\\n``, as vLLM does), because some
  chat servers (Qwen's ``openai_api.py``) reject list content; content with an image stays a
  list of chat parts.
* ``function_call`` items join the assistant message just before them (consecutive calls make
  one assistant turn with several ``tool_calls``); ``function_call_output`` becomes a ``tool``
  message; ``reasoning`` items are dropped, as chat has no field to send reasoning back in.
* Responses-only tools (``web_search``, ``file_search``, ``mcp``, ...) are refused with a 400,
  not removed: silently removing a tool the model was told it has changes the answer.
* State the proxy does not keep is refused with a 400: ``previous_response_id``,
  ``conversation``, ``prompt`` (a stored template), ``background: true``, ``item_reference``
  items and ``file_id`` images. ``store: true`` is ignored (nothing is stored; the response
  says ``store: false``), because it is the API's default and refusing it would refuse every
  request of some SDKs.
* Kept: ``model``, ``stream`` (plus ``stream_options.include_usage`` when streaming, so the
  final event can carry usage), ``temperature``, ``top_p``, ``user``, ``parallel_tool_calls``,
  ``tools``, ``tool_choice``; renamed: ``max_output_tokens`` -> ``max_tokens``,
  ``text.format`` -> ``response_format``, ``reasoning.effort`` -> ``reasoning_effort``.
  Everything else (``metadata``, ``store``, ``include``, ``truncation``, ``text.verbosity``,
  ``reasoning.summary``, ``top_logprobs``, ``service_tier``, ``prompt_cache_key``, ...) is
  dropped: chat upstreams reject fields they do not know.
* A function tool without ``strict`` stays without it, although Responses defaults it to
  true: chat servers other than OpenAI do not implement strict mode and some reject it.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest

Json = dict[str, Any]

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
COPIED: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "temperature": (int, float),
    "top_p": (int, float),
    "user": (str,),
    "parallel_tool_calls": (bool,),
}
STATEFUL = {
    "previous_response_id": "the proxy keeps no conversation state for chat completions "
    "upstreams; send the whole conversation in 'input' instead.",
    "conversation": "the proxy keeps no conversation state for chat completions upstreams; "
    "send the whole conversation in 'input' instead.",
    "prompt": "prompt templates are stored by OpenAI and a chat completions upstream cannot "
    "expand them.",
}
JSON_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def chat_request(body: Json) -> Json:
    """The chat completions body for a Responses body; raises ``InvalidRequest`` (400)."""
    _expect(body, (dict,), "body")
    _refuse_state(body)
    chat: Json = {}
    for key, kinds in COPIED.items():
        if body.get(key) is not None:
            chat[key] = _expect(body[key], kinds, key)
    chat["messages"] = _messages(body)
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = _expect(body["max_output_tokens"], (int,), "max_output_tokens")
    _add_text_format(chat, body.get("text"))
    _add_reasoning(chat, body.get("reasoning"))
    if body.get("stream") is not None:
        chat["stream"] = _expect(body["stream"], (bool,), "stream")
        if chat["stream"]:
            chat["stream_options"] = {"include_usage": True}
    return chat


def _refuse_state(body: Json) -> None:
    """Refuse what needs server-side state; chat upstreams have none and the proxy keeps none."""
    for key, why in STATEFUL.items():
        if body.get(key) is not None:
            raise InvalidRequest(
                f"'{key}' is not supported for this model: {why}",
                param=key,
                code="unsupported_parameter",
            )
    if body.get("background"):
        raise InvalidRequest(
            "'background' is not supported for this model: a background response must be "
            "stored and the proxy keeps no state for chat completions upstreams.",
            param="background",
            code="unsupported_parameter",
        )


def _messages(body: Json) -> list[Json]:
    """Chat messages: the instructions as a system message, then the input items in order."""
    messages: list[Json] = []
    instructions = body.get("instructions")
    if instructions is not None and _expect(instructions, (str,), "instructions"):
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if items is None:
        raise InvalidRequest(
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    for i, item in enumerate(_expect(items, (str, list), "input")):
        _add_item(messages, _expect(item, (dict,), f"input[{i}]"), f"input[{i}]")
    return messages


def _add_item(messages: list[Json], item: Json, at: str) -> None:
    """Append the chat form of one input item (an item without ``type`` is a message)."""
    kind = _expect(item.get("type", "message"), (str,), f"{at}.type")
    if kind == "message":
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for '{at}.role': {role!r}. Supported values are: 'user', "
                "'assistant', 'system' and 'developer'.",
                param=f"{at}.role",
                code="invalid_value",
            )
        content = _content(_required(item, "content", at), f"{at}.content", role != "user")
        messages.append({"role": ROLES[role], "content": content})
    elif kind == "function_call":
        _add_call(messages, item, at)
    elif kind == "function_call_output":
        output = _content(_required(item, "output", at), f"{at}.output", True)
        call_id = _expect(_required(item, "call_id", at), (str,), f"{at}.call_id")
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
    elif kind == "item_reference":
        raise InvalidRequest(
            "Input items of type 'item_reference' are not supported for this model: the proxy "
            "keeps no stored items for chat completions upstreams.",
            param=f"{at}.type",
            code="unsupported_value",
        )
    elif kind != "reasoning":
        raise InvalidRequest(
            f"Input items of type '{kind}' are not supported for this model: its upstream "
            "speaks only chat completions, which carry 'message', 'function_call' and "
            "'function_call_output' items ('reasoning' items are dropped).",
            param=f"{at}.type",
            code="unsupported_value",
        )


def _add_call(messages: list[Json], item: Json, at: str) -> None:
    """A ``function_call`` item as a tool call of the assistant turn it belongs to."""
    call = {
        "id": _expect(_required(item, "call_id", at), (str,), f"{at}.call_id"),
        "type": "function",
        "function": {
            "name": _expect(_required(item, "name", at), (str,), f"{at}.name"),
            "arguments": _expect(_required(item, "arguments", at), (str,), f"{at}.arguments"),
        },
    }
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _content(content: Any, at: str, text_only: bool) -> str | list[Json]:
    """Chat content: one string when every part is text, else a list of chat parts."""
    if isinstance(_expect(content, (str, list), at), str):
        return str(content)
    parts = [_part(_expect(p, (dict,), f"{at}[{j}]"), f"{at}[{j}]") for j, p in enumerate(content)]
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    if text_only:
        j = next(j for j, part in enumerate(parts) if part["type"] != "text")
        raise InvalidRequest(
            f"Only text can be sent in '{at}' to this model's chat completions upstream.",
            param=f"{at}[{j}].type",
            code="unsupported_value",
        )
    return parts


def _part(part: Json, at: str) -> Json:
    """One content part in chat's shape (``text``, ``image_url`` or ``input_audio``)."""
    kind = _expect(_required(part, "type", at), (str,), f"{at}.type")
    if kind in TEXT_PARTS:
        key = TEXT_PARTS[kind]
        return {"type": "text", "text": _expect(_required(part, key, at), (str,), f"{at}.{key}")}
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise InvalidRequest(
                "Images given by 'file_id' are not supported for this model: its chat "
                "completions upstream cannot read OpenAI files. Send 'image_url' (a URL or a "
                "data: URL) instead.",
                param=f"{at}.file_id",
                code="unsupported_parameter",
            )
        image: Json = {"url": _expect(_required(part, "image_url", at), (str,), f"{at}.image_url")}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        audio = _expect(_required(part, "input_audio", at), (dict,), f"{at}.input_audio")
        return {"type": "input_audio", "input_audio": audio}
    if kind == "input_file":
        raise InvalidRequest(
            "File inputs are not supported for this model: its upstream speaks only chat "
            "completions.",
            param=f"{at}.type",
            code="unsupported_value",
        )
    raise InvalidRequest(
        f"Invalid value for '{at}.type': {kind!r}. Supported values are: 'input_text', "
        "'input_image', 'input_audio', 'output_text' and 'refusal'.",
        param=f"{at}.type",
        code="invalid_value",
    )


def _tools(tools: Any) -> list[Json]:
    """Function tools in chat's nested shape; any other tool type is refused by name."""
    chat_tools: list[Json] = []
    for i, tool in enumerate(_expect(tools, (list,), "tools")):
        at = f"tools[{i}]"
        kind = _expect(_required(_expect(tool, (dict,), at), "type", at), (str,), f"{at}.type")
        if kind != "function":
            raise InvalidRequest(
                f"Tool type '{kind}' is not supported for this model: its upstream speaks only "
                "chat completions, which have function tools only. Remove the tool, or use a "
                "model whose upstream speaks the Responses API.",
                param=f"{at}.type",
                code="unsupported_value",
            )
        function: Json = {"name": _expect(_required(tool, "name", at), (str,), f"{at}.name")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        chat_tools.append({"type": "function", "function": function})
    return chat_tools


def _tool_choice(choice: Any) -> str | Json:
    """``auto``/``none``/``required`` as they are; a named function in chat's nested shape."""
    if choice in ("auto", "none", "required"):
        return str(choice)
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = _expect(_required(choice, "name", "tool_choice"), (str,), "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise InvalidRequest(
        "Unsupported 'tool_choice' for this model: its chat completions upstream accepts "
        "'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}.",
        param="tool_choice",
        code="unsupported_value",
    )


def _add_text_format(chat: Json, text: Any) -> None:
    """``text.format`` as chat's ``response_format`` (plain text needs none)."""
    if text is None or _expect(text, (dict,), "text").get("format") is None:
        return
    fmt = _expect(text["format"], (dict,), "text.format")
    kind = fmt.get("type")
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        name = _expect(_required(fmt, "name", "text.format"), (str,), "text.format.name")
        body = _expect(_required(fmt, "schema", "text.format"), (dict,), "text.format.schema")
        schema: Json = {"name": name, "schema": body}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind != "text":
        raise InvalidRequest(
            f"Invalid value for 'text.format.type': {kind!r}. Supported values are: 'text', "
            "'json_object' and 'json_schema'.",
            param="text.format.type",
            code="invalid_value",
        )


def _add_reasoning(chat: Json, reasoning: Any) -> None:
    """``reasoning.effort`` as chat's ``reasoning_effort``; the summary setting has no twin."""
    if reasoning is None:
        return
    effort = _expect(reasoning, (dict,), "reasoning").get("effort")
    if effort is not None:
        chat["reasoning_effort"] = _expect(effort, (str,), "reasoning.effort")


def _required(obj: Json, key: str, at: str) -> Any:
    """``obj[key]``, or a 400 ``missing_required_parameter`` naming ``at.key``."""
    if obj.get(key) is None:
        raise InvalidRequest(
            f"Missing required parameter: '{at}.{key}'.",
            param=f"{at}.{key}",
            code="missing_required_parameter",
        )
    return obj[key]


def _expect(value: Any, kinds: tuple[type, ...], param: str) -> Any:
    """``value`` if it has one of the JSON types ``kinds``, else a 400 ``invalid_type``.

    A boolean is not a number here, although Python says it is an int.
    """
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return value
    names = (JSON_NAMES.get(kind, "a number") for kind in kinds)
    wanted = "an integer" if kinds == (int,) else " or ".join(dict.fromkeys(names))
    raise InvalidRequest(
        f"Invalid type for '{param}': expected {wanted}, but got {_json_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _json_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return JSON_NAMES.get(type(value), "a value")
