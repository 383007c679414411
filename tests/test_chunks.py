"""Chunk normalisation, aggregation and conversion: pure functions, table-driven."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.errors import UpstreamError
from proxy.formats.chunks import (
    Aggregator,
    StreamNormalizer,
    completion_to_chunks,
    normalize_completion,
)
from proxy.upstreams.failures import payload_error


def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish}


NORMALIZE = [
    # (name, chunks in, chunks out; None = dropped)
    (
        "qwen: no id, no created",
        [
            {
                "model": "Qwen",
                "object": "chat.completion.chunk",
                "choices": [choice({"role": "assistant"})],
            },
            {"model": "Qwen", "choices": [choice({"content": "a"})]},
        ],
        [
            {
                "model": "pub",
                "object": "chat.completion.chunk",
                "choices": [choice({"role": "assistant"})],
                "id": "ID",
                "created": "T",
            },
            {
                "model": "pub",
                "choices": [choice({"content": "a"})],
                "id": "ID",
                "object": "chat.completion.chunk",
                "created": "T",
            },
        ],
    ),
    (
        "id and created kept constant",
        [
            {"id": "a", "created": 5, "choices": [choice({"role": "assistant"})]},
            {"id": "b", "created": 6, "choices": [choice({"content": "x"})]},
        ],
        [
            {
                "id": "a",
                "created": 5,
                "choices": [choice({"role": "assistant"})],
                "object": "chat.completion.chunk",
                "model": "pub",
            },
            {
                "id": "a",
                "created": 5,
                "choices": [choice({"content": "x"})],
                "object": "chat.completion.chunk",
                "model": "pub",
            },
        ],
    ),
    (
        "role added to the first chunk",
        [{"id": "a", "created": 1, "choices": [choice({"content": "x"})]}],
        [
            {
                "id": "a",
                "created": 1,
                "choices": [choice({"role": "assistant", "content": "x"})],
                "object": "chat.completion.chunk",
                "model": "pub",
            }
        ],
    ),
    (
        "reasoning renamed",
        [{"id": "a", "created": 1, "choices": [choice({"role": "assistant", "reasoning": "hm"})]}],
        [
            {
                "id": "a",
                "created": 1,
                "choices": [choice({"role": "assistant", "reasoning_content": "hm"})],
                "object": "chat.completion.chunk",
                "model": "pub",
            }
        ],
    ),
    (
        "both reasoning names: one kept",
        [
            {
                "id": "a",
                "created": 1,
                "choices": [
                    choice({"role": "assistant", "reasoning_content": "hm", "reasoning": "hm"})
                ],
            }
        ],
        [
            {
                "id": "a",
                "created": 1,
                "choices": [choice({"role": "assistant", "reasoning_content": "hm"})],
                "object": "chat.completion.chunk",
                "model": "pub",
            }
        ],
    ),
    (
        "empty and ping-like chunks dropped",
        [{}, {"choices": []}, {"choices": None}],
        [None, None, None],
    ),
    (
        "usage chunk dropped when not asked",
        [{"id": "a", "created": 1, "choices": [], "usage": {"total_tokens": 3}}],
        [None],
    ),
]


@pytest.mark.parametrize(("name", "given", "expected"), NORMALIZE, ids=[n[0] for n in NORMALIZE])
def test_normalize(name: str, given: list[Any], expected: list[Any]) -> None:
    normalizer = StreamNormalizer("pub", include_usage=False)
    got = [normalizer.normalize(copy.deepcopy(c)) for c in given]
    ids = {c["id"] for c in got if c}
    created = {c["created"] for c in got if c}
    assert len(ids) <= 1 and len(created) <= 1
    for out, want in zip(got, expected, strict=True):
        if want is None:
            assert out is None
            continue
        assert out is not None
        want = {**want}
        if want.get("id") == "ID":
            assert out["id"].startswith("chatcmpl-")
            want["id"] = out["id"]
        if want.get("created") == "T":
            assert isinstance(out["created"], int)
            want["created"] = out["created"]
        assert out == want
        assert list(out) == list(want)  # and in that key order


def test_usage_chunk_kept_when_asked_and_choices_null_fixed() -> None:
    normalizer = StreamNormalizer("pub", include_usage=True)
    out = normalizer.normalize(
        {"id": "a", "created": 1, "choices": None, "usage": {"total_tokens": 3}}
    )
    assert out is not None and out["choices"] == [] and out["usage"] == {"total_tokens": 3}


def test_finished_only_on_finish_reason() -> None:
    normalizer = StreamNormalizer("pub", include_usage=False)
    normalizer.normalize({"choices": [choice({"content": "x"})]})
    assert not normalizer.finished
    normalizer.normalize({"choices": [choice({"content": "y"}, "stop")]})  # vLLM: text + finish
    assert normalizer.finished


ERRORS = [
    ({"error": {"message": "boom", "type": "server_error"}}, "boom"),
    ({"error": "plain text"}, "plain text"),
    ({"error": {"type": "x"}}, "upstream error"),
    ({"object": "error", "message": "legacy", "type": "BadRequestError"}, "legacy"),
    ({"error": None, "choices": []}, None),
    ({"choices": []}, None),
    ([1, 2], None),
]


@pytest.mark.parametrize(("payload", "message"), ERRORS)
def test_upstream_error_shapes(payload: Any, message: str | None) -> None:
    error = payload_error(payload)
    assert (error.message if error is not None else None) == message


@pytest.mark.parametrize(
    "bad",
    [
        [1],
        "text",
        5,
        {"choices": ["x"]},
        {"choices": 5},
        {"choices": [{"delta": "hi"}]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"delta": {"tool_calls": "x"}}]},
        {"choices": [{"delta": {"tool_calls": [1]}}]},
    ],
)
def test_malformed_chunks_raise_upstream_error(bad: Any) -> None:
    with pytest.raises(UpstreamError):
        StreamNormalizer("pub", False).normalize(bad)


def test_aggregate_two_choices_and_tools() -> None:
    aggregator = Aggregator()
    for chunk in [
        {
            "id": "a",
            "created": 1,
            "model": "pub",
            "system_fingerprint": "fp",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}},
                {"index": 1, "delta": {"role": "assistant"}},
            ],
        },
        {
            "choices": [
                {"index": 1, "delta": {"content": "B"}},
                {"index": 0, "delta": {"content": "A"}},
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{"}}
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]},
                    "finish_reason": "tool_calls",
                },
                {"index": 1, "delta": {}, "finish_reason": "length"},
            ]
        },
        {"choices": [], "usage": {"total_tokens": 9}},
    ]:
        aggregator.add(chunk)
    assert aggregator.result() == {
        "id": "a",
        "object": "chat.completion",
        "created": 1,
        "model": "pub",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "A",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "B", "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
            },
        ],
        "system_fingerprint": "fp",
        "usage": {"total_tokens": 9},
    }


def test_tool_only_answer_has_null_content() -> None:
    aggregator = Aggregator()
    aggregator.add(
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}
                        ]
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        }
    )
    assert aggregator.result()["choices"][0]["message"]["content"] is None


def test_completion_round_trip() -> None:
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 3,
        "model": "pub",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "hi",
                    "reasoning_content": "r",
                    "tool_calls": [
                        {
                            "id": "t",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    chunks = completion_to_chunks(completion)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1] == {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 3,
        "model": "pub",
        "choices": [],
        "usage": completion["usage"],
    }
    aggregator = Aggregator()
    for c in chunks:
        aggregator.add(c)
    result = aggregator.result()
    message = result["choices"][0]["message"]
    assert (
        message["content"],
        message["reasoning_content"],
        message["tool_calls"][0]["function"],
    ) == ("hi", "r", {"name": "f", "arguments": "{}"})
    assert (
        result["usage"] == completion["usage"]
        and result["choices"][0]["finish_reason"] == "tool_calls"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"error": {"message": "x"}},
        {"object": "error", "message": "x"},
        {"choices": "x"},
        [1],
        "text",
    ],
)
def test_normalize_completion_rejects_errors_and_garbage(bad: Any) -> None:
    with pytest.raises(UpstreamError):
        normalize_completion(bad, "pub")
