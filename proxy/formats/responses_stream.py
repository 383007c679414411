"""Chat completion chunks translated into the Responses API's event lifecycle, and back to one
``response`` object for non-stream calls.

Pure: chunks (dicts as the proxy normalises them) in, event dicts out; ``frames`` writes them
as OpenAI frames them, ``event: <type>`` + ``data: <json>``, and the relay does all I/O.

Decisions:

* Reasoning (``delta.reasoning_content``) becomes a ``reasoning`` item whose content part is
  ``reasoning_text``, streamed as ``response.reasoning_text.delta``/``.done``, as OpenAI does
  for gpt-oss and vLLM does for its reasoning parsers; openai-python types these events
  (``ResponseReasoningTextDeltaEvent``) and a ``reasoning_text`` part. The
  ``reasoning_summary_text`` events are for *summaries* a model writes of hidden reasoning;
  upstream ``reasoning_content`` is the raw reasoning, so calling it a summary would lie.
* A message or reasoning item ends when an item of another kind starts or a finish_reason
  arrives. Function calls stay open until the finish_reason, because a chat stream may
  interleave the fragments of parallel calls by ``index``; a call is announced once its name
  is known (``output_item.added`` needs one) and the argument fragments before it are sent as
  one delta.
* The terminal event comes only from ``finish()`` or ``fail()``, never on the finish chunk: the
  usage chunk may come after it, and ``response.completed`` must carry usage.
  ``finish_reason`` ``length`` gives ``response.incomplete`` (``max_output_tokens``),
  ``content_filter`` gives ``response.incomplete`` (``content_filter``), items ``incomplete``.
* ``fail()`` sends ``response.failed`` only, no ``error`` event before it: ``response.failed``
  is the terminal event openai-python's ``responses.stream()`` and Codex act on, while a
  client that stops at an ``error`` event (openai-python raises on one that carries an
  ``error`` object, as OpenAI's do) would miss the terminal event. Open items are closed
  ``incomplete`` first, so every ``output_item.added`` has its ``output_item.done``; the
  error's message is kept.
* ``store`` is echoed as false: the proxy stores nothing.

The shapes (ids, items, parts, usage, error codes, framing) are ``responses_objects``.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from proxy.errors import ProxyError
from proxy.formats.responses_objects import (
    OutputItem,
    content_part,
    responses_error,
    responses_usage,
)

Json = dict[str, Any]

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
TEXT_EVENTS = {
    "message": ("response.output_text.delta", "response.output_text.done"),
    "reasoning": ("response.reasoning_text.delta", "response.reasoning_text.done"),
}


class ResponsesStream:
    """One streamed Responses request: chat chunks in, Responses events out, in order.

    Every method returns the events it produced; ``sequence_number`` counts from 0 across all
    calls, without gaps. ``start()`` is implied by the first other call. After ``finish()`` or
    ``fail()`` every call returns no events, so a relay's cleanup path may call ``fail()``
    after ``finish()`` without harm.
    """

    def __init__(self, *, response_id: str, model: str, request: Json, created_at: int) -> None:
        self._id = response_id
        self._model = model
        self._request = request
        self._created_at = created_at
        self._seq = 0
        self._started = False
        self._ended = False
        self._items: list[OutputItem] = []
        self._text: OutputItem | None = None
        self._calls: dict[int, OutputItem] = {}
        self._finish_reason: str | None = None
        self._usage: Json | None = None

    @property
    def usage(self) -> Json | None:
        """The chat-shaped usage last seen, for the proxy's accounting."""
        return self._usage

    @property
    def content_started(self) -> bool:
        """Whether an output item went out: before that, a retry elsewhere is invisible."""
        return bool(self._items)

    def start(self) -> list[Json]:
        """``response.created`` then ``response.in_progress``."""
        if self._started:
            return []
        self._started = True
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def feed(self, chunk: Json) -> list[Json]:
        """The events one chat chunk causes (none for a usage-only or empty chunk)."""
        events = self.start()
        if self._ended:
            return events
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 has no Responses form; the first choice is the response
            delta = choice.get("delta") or {}
            events += self._text_delta("reasoning", delta.get("reasoning_content"))
            events += self._text_delta("message", delta.get("content"))
            for position, fragment in enumerate(delta.get("tool_calls") or []):
                events += self._call_delta(fragment, position)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                events += self._close_all()
        return events

    def finish(self) -> list[Json]:
        """The upstream ended cleanly: close what is open, then the terminal event."""
        events = self.start()
        if self._ended:
            return events
        events += self._close_all()
        self._ended = True
        reason = INCOMPLETE.get(self._finish_reason or "")
        if reason is None:
            return [
                *events,
                self._event("response.completed", response=self._response("completed")),
            ]
        response = self._response("incomplete", incomplete_details={"reason": reason})
        return [*events, self._event("response.incomplete", response=response)]

    def fail(self, error: ProxyError) -> list[Json]:
        """The stream failed after it started: close open items, then ``response.failed``."""
        events = self.start()
        if self._ended:
            return events
        events += self._close_all("incomplete")
        self._ended = True
        failure = responses_error(error)
        return [*events, self._event("response.failed", response=self._response("failed", failure))]

    def _text_delta(self, kind: str, text: Any) -> list[Json]:
        """A message or reasoning delta, opening its item (and closing the other) if needed."""
        if not isinstance(text, str) or not text:
            return []
        events: list[Json] = []
        item = self._text
        if item is None or item.kind != kind:
            events += self._close_text()
            item = self._text = OutputItem(kind)
            events += self._open(item)
        item.parts.append(text)
        extra: Json = {"logprobs": []} if kind == "message" else {}
        delta = self._event(
            TEXT_EVENTS[kind][0],
            item_id=item.id,
            output_index=item.index,
            content_index=0,
            delta=text,
            **extra,
        )
        return [*events, delta]

    def _call_delta(self, fragment: Json, position: int) -> list[Json]:
        """One tool call fragment: announce the call once named, then stream its arguments.

        A fragment without ``index`` (whole calls in one delta) is placed by its position.
        """
        index = fragment.get("index")
        if not isinstance(index, int):
            index = position
        item = self._calls.get(index)
        if item is None:
            item = self._calls[index] = OutputItem("function_call")
        function = fragment.get("function") or {}
        item.call_id = item.call_id or fragment.get("id") or ""
        item.name = item.name or function.get("name") or ""
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # Ollama-style parsed arguments
            arguments = orjson.dumps(arguments).decode()
        if isinstance(arguments, str) and arguments:
            item.parts.append(arguments)
            if item.index is not None:
                return [self._arguments_delta(item, arguments)]
        if item.index is None and item.name:
            return self._open_call(item)
        return []

    def _open_call(self, item: OutputItem) -> list[Json]:
        """Announce a call, with the arguments that came before its name as one delta."""
        item.call_id = item.call_id or f"call_{os.urandom(12).hex()}"
        events = [*self._close_text(), *self._open(item)]
        if item.parts:
            events.append(self._arguments_delta(item, item.text))
        return events

    def _arguments_delta(self, item: OutputItem, arguments: str) -> Json:
        return self._event(
            "response.function_call_arguments.delta",
            item_id=item.id,
            output_index=item.index,
            delta=arguments,
        )

    def _open(self, item: OutputItem) -> list[Json]:
        """``output_item.added`` (and ``content_part.added`` for text) for a new item."""
        item.index = len(self._items)
        self._items.append(item)
        events = [
            self._event("response.output_item.added", output_index=item.index, item=item.to_dict())
        ]
        if item.kind != "function_call":
            part = content_part(item.kind, "")
            events.append(self._event("response.content_part.added", **self._at(item), part=part))
        return events

    def _close_text(self) -> list[Json]:
        item, self._text = self._text, None
        return self._close(item, "completed") if item is not None else []

    def _close_all(self, status: str | None = None) -> list[Json]:
        """Close every open item in output order; a call never named is announced first."""
        if status is None:
            status = "incomplete" if self._finish_reason in INCOMPLETE else "completed"
        self._text = None
        events: list[Json] = []
        for call in self._calls.values():
            if call.index is None:
                events += self._open_call(call)
        self._calls = {}
        for item in self._items:
            if item.status == "in_progress":
                events += self._close(item, status)
        return events

    def _close(self, item: OutputItem, status: str) -> list[Json]:
        """The ``.done`` events of one item, innermost first, its status set."""
        item.status = status
        if item.kind == "function_call":
            events = [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.index,
                    arguments=item.text,
                )
            ]
        else:
            extra: Json = {"logprobs": []} if item.kind == "message" else {}
            part = content_part(item.kind, item.text)
            events = [
                self._event(TEXT_EVENTS[item.kind][1], **self._at(item), text=item.text, **extra),
                self._event("response.content_part.done", **self._at(item), part=part),
            ]
        done = self._event(
            "response.output_item.done", output_index=item.index, item=item.to_dict()
        )
        return [*events, done]

    def _at(self, item: OutputItem) -> Json:
        return {"item_id": item.id, "output_index": item.index, "content_index": 0}

    def _event(self, kind: str, **fields: Any) -> Json:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def _response(
        self, status: str, error: Json | None = None, incomplete_details: Json | None = None
    ) -> Json:
        """The ``response`` object: the request's settings echoed, output and usage so far."""
        request = self._request
        final = status != "in_progress"
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete_details,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "model": self._model,
            "output": [item.to_dict() for item in self._items] if final else [],
            "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
            "previous_response_id": None,
            "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
            "store": False,
            "temperature": request.get("temperature"),
            "text": request.get("text") or {"format": {"type": "text"}},
            "tool_choice": request.get("tool_choice") or "auto",
            "tools": request.get("tools") or [],
            "top_p": request.get("top_p"),
            "truncation": request.get("truncation") or "disabled",
            "usage": responses_usage(self._usage) if final else None,
            "user": request.get("user"),
            "metadata": request.get("metadata") or {},
        }


def response_from_completion(
    completion: Json, *, response_id: str, model: str, request: Json, created_at: int
) -> Json:
    """A non-stream chat completion as one Responses ``response`` object.

    The message is fed through ``ResponsesStream`` as a single chunk, so the items, ids,
    statuses and usage are built by the same code as a stream's.
    """
    stream = ResponsesStream(
        response_id=response_id, model=model, request=request, created_at=created_at
    )
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    calls = [{**call, "index": i} for i, call in enumerate(message.get("tool_calls") or [])]
    delta = {
        "reasoning_content": message.get("reasoning_content"),
        "content": message.get("content"),
        "tool_calls": calls,
    }
    finish = choice.get("finish_reason")
    stream.feed(
        {"choices": [{"delta": delta, "finish_reason": finish}], "usage": completion.get("usage")}
    )
    response: Json = stream.finish()[-1]["response"]
    return response
