"""Anthropic ``system`` and ``messages`` -> chat completions ``messages``.

* ``system`` (a string or text blocks, ``cache_control`` ignored) and every ``system`` role a
  client put inside ``messages`` (recent Claude Code does) become ONE leading ``system``
  message: the chat templates of vLLM/Qwen/Gemma reject a system message anywhere but first.
* Text-only content becomes a plain string, several text blocks joined by a blank line: the
  form every upstream accepts, Qwen's ``openai_api.py`` included. Content with images stays a
  list of parts (base64 sources as ``data:`` URIs, URL sources as they are).
* ``tool_use`` blocks become the assistant's ``tool_calls`` (``arguments`` = the JSON of
  ``input``); ``tool_result`` blocks one ``tool`` message each, before the rest of that user
  turn, as chat wants tool answers right after the calls. Images inside a tool result cannot
  ride in a ``tool`` message: they move to the user message that follows, with a note.
* ``thinking``/``redacted_thinking`` blocks in the history are dropped: their signatures mean
  nothing to a chat upstream and chat has no field to carry them back.
* Adjacent user messages are then merged, as Anthropic itself does, because strict chat
  templates want roles to alternate (dropping a thinking-only turn can leave two).
* Blocks a chat upstream cannot take (``document``, ``search_result``, server tool results,
  file sources) are a 400 naming the block, never silently lost.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.formats.anthropic.errors import invalid, missing, unsupported

Body = dict[str, Any]


def chat_messages(body: Body) -> list[Body]:
    """The chat ``messages`` of an Anthropic request body (its ``system`` included)."""
    messages = body.get("messages")
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "it must be a non-empty array of messages")
    system = _system_texts(body.get("system"), "system")
    chat: list[Body] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(where, "each message must be an object")
        role = message.get("role")
        content = _content_blocks(message.get("content"), f"{where}.content")
        if role == "system":
            system.extend(_system_texts(content, f"{where}.content"))
        elif role == "user":
            chat.extend(_user_turn(content, f"{where}.content"))
        elif role == "assistant":
            chat.extend(_assistant_turn(content, f"{where}.content"))
        else:
            raise invalid(f"{where}.role", f"{role!r} is not 'user' or 'assistant'")
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return head + _merge_user_messages(chat)


def _content_blocks(content: Any, where: str) -> list[Body]:
    """A message's content as a list of blocks: a string is shorthand for one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(where, "content must be a string or an array of content blocks")
    for index, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid(f"{where}[{index}]", "a content block must be an object with a 'type'")
    return content


def _system_texts(system: Any, where: str) -> list[str]:
    """``system`` (string or text blocks, ``cache_control`` ignored) as a list of texts."""
    if system is None:
        return []
    if isinstance(system, str):
        return [system] if system else []
    texts = []
    for index, block in enumerate(_content_blocks(system, where)):
        if block["type"] != "text":
            raise unsupported(f"{where}[{index}].type", block["type"], "in a system prompt")
        texts.append(_text(block, f"{where}[{index}]"))
    return [text for text in texts if text]


def _user_turn(blocks: list[Body], where: str) -> list[Body]:
    """Tool results first (one ``tool`` message each), then the rest as one user message."""
    tools: list[Body] = []
    parts: list[Body] = []
    for index, block in enumerate(blocks):
        here = f"{where}[{index}]"
        kind = block["type"]
        if kind == "tool_result":
            tools.append(_tool_message(block, here, parts))
        elif kind in ("text", "image"):
            parts.append(_user_part(block, here))
        else:
            raise unsupported(f"{here}.type", kind, "in a user message")
    user = [{"role": "user", "content": _join_parts(parts)}] if parts else []
    return tools + user


def _tool_message(block: Body, where: str, images: list[Body]) -> Body:
    """A ``tool_result`` as a chat ``tool`` message; its images are appended to ``images``."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise missing(f"{where}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    moved = 0
    if content is not None:
        for index, part in enumerate(_content_blocks(content, f"{where}.content")):
            here = f"{where}.content[{index}]"
            if part["type"] == "text":
                texts.append(_text(part, here))
            elif part["type"] == "image":
                images.append(_user_part(part, here))
                moved += 1
            else:
                raise unsupported(f"{here}.type", part["type"], "in a tool result")
    text = "\n\n".join(texts)
    if moved:
        text += f"\n\n[{moved} image(s) of this result follow in the next user message]"
    if block.get("is_error"):
        text = "[tool error] " + text
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _user_part(block: Body, where: str) -> Body:
    if block["type"] == "text":
        return {"type": "text", "text": _text(block, where)}
    return {"type": "image_url", "image_url": {"url": _image_url(block.get("source"), where)}}


def _image_url(source: Any, where: str) -> str:
    """An image source as the URL chat wants: a data URI for base64, else the URL itself."""
    if not isinstance(source, dict):
        raise missing(f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise invalid(f"{where}.source", "a base64 source needs 'media_type' and 'data'")
        return f"data:{media_type};base64,{data}"
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise unsupported(f"{where}.source.type", str(kind), "as an image source")


def _join_parts(parts: list[Body]) -> str | list[Body]:
    """Text-only content as one string (what every upstream accepts), else the part list."""
    if all(part["type"] == "text" for part in parts):
        return "\n\n".join(part["text"] for part in parts)
    return parts


def _assistant_turn(blocks: list[Body], where: str) -> list[Body]:
    """Text and ``tool_use`` blocks as one assistant message; thinking blocks dropped."""
    texts: list[str] = []
    calls: list[Body] = []
    for index, block in enumerate(blocks):
        here = f"{where}[{index}]"
        kind = block["type"]
        if kind == "text":
            texts.append(_text(block, here))
        elif kind == "tool_use":
            calls.append(_tool_call(block, here))
        elif kind not in ("thinking", "redacted_thinking"):
            raise unsupported(f"{here}.type", kind, "in an assistant message")
    text = "\n\n".join(text for text in texts if text)
    if not text and not calls:
        return []  # only thinking: chat has nothing to carry, and an empty turn is invalid
    message: Body = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool_call(block: Body, where: str) -> Body:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise missing(f"{where}.id")
    if not isinstance(name, str) or not name:
        raise missing(f"{where}.name")
    arguments = orjson.dumps(block.get("input") or {}).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _merge_user_messages(messages: list[Body]) -> list[Body]:
    """Adjacent user messages as one (dropping a thinking-only turn or a hoisted system
    message can leave two side by side; strict templates want roles to alternate)."""
    merged: list[Body] = []
    for message in messages:
        last = merged[-1] if merged else None
        if last is not None and last["role"] == message["role"] == "user":
            last["content"] = _join_content(last["content"], message["content"])
        else:
            merged.append(message)
    return merged


def _join_content(first: str | list[Body], second: str | list[Body]) -> str | list[Body]:
    if isinstance(first, str) and isinstance(second, str):
        return first + "\n\n" + second
    return _as_parts(first) + _as_parts(second)


def _as_parts(content: str | list[Body]) -> list[Body]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _text(block: Body, where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise missing(f"{where}.text")
    return text
