"""Property-based fuzzing of /v1/messages and /v1/messages/count_tokens (hypothesis), over a
real socket, translated to the echo model.

Every answer to a malformed request is a 4xx in Anthropic's error shape: never a 5xx, never a
traceback, nothing logged at ERROR; a stream that was accepted ends with ``message_stop``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import create_app
from tests.anthropic_fakes import frames
from tests.helpers import echo_settings, run_server

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def client() -> Iterator[tuple[httpx.Client, str]]:
    with run_server(create_app(echo_settings())) as url, httpx.Client(timeout=30) as http:
        yield http, url


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.ERROR)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def post(client: tuple[httpx.Client, str], path: str, body: Any) -> httpx.Response:
    http, url = client
    response = http.post(f"{url}{path}", content=json.dumps(body).encode())
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if response.status_code != 200:
        assert 400 <= response.status_code < 500
        error = response.json()
        assert error["type"] == "error" and set(error["error"]) == {"type", "message"}
        assert error["error"]["message"]
    return response


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
kinds = st.sampled_from(
    ["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "document", "x"]
)
blocks = st.fixed_dictionaries(
    {"type": kinds | json_values},
    optional={
        "text": st.text() | json_values,
        "source": st.fixed_dictionaries(
            {"type": st.sampled_from(["base64", "url", "file"]) | json_values},
            optional={"media_type": json_values, "data": json_values, "url": json_values},
        )
        | json_values,
        "id": st.text(max_size=5) | json_values,
        "name": st.text(max_size=5) | json_values,
        "input": json_values,
        "tool_use_id": st.text(max_size=5) | json_values,
        "content": st.text() | st.lists(st.fixed_dictionaries({"type": kinds})) | json_values,
        "is_error": json_values,
        "signature": json_values,
    },
)
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["user", "assistant", "system", "tool", ""]) | json_values,
            "content": st.text() | st.lists(blocks, max_size=3) | json_values,
        },
    )
    | json_values,
    max_size=3,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["echo", "nope", ""]) | json_values,
        "messages": messages | json_values,
        "max_tokens": st.integers(min_value=-2, max_value=2**40) | json_values,
        "stream": st.booleans() | json_values,
        "system": st.text() | st.lists(blocks, max_size=2) | json_values,
        "tools": st.lists(
            st.fixed_dictionaries(
                {}, optional={"name": json_values, "input_schema": json_values, "type": json_values}
            ),
            max_size=2,
        )
        | json_values,
        "tool_choice": st.fixed_dictionaries({"type": json_values}) | json_values,
        "thinking": st.fixed_dictionaries(
            {"type": st.sampled_from(["enabled", "disabled", "adaptive"]) | json_values},
            optional={"budget_tokens": json_values},
        )
        | json_values,
        "stop_sequences": json_values,
        "temperature": json_values,
        "metadata": json_values,
        "output_config": json_values,
    },
)


# The fields checked first, valid, so the fuzzing reaches the translation of the rest.
valid_messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system"]),
            "content": st.text(min_size=1) | st.lists(blocks, min_size=1, max_size=3),
        }
    ),
    min_size=1,
    max_size=3,
)
deep_bodies = st.builds(
    lambda body, messages, max_tokens: {
        **body,
        "model": "echo",
        "messages": messages,
        "max_tokens": max_tokens,
    },
    bodies,
    valid_messages,
    st.integers(min_value=1, max_value=64),
)


@FUZZ
@given(body=bodies | deep_bodies)
def test_messages_shaped_bodies(client: tuple[httpx.Client, str], body: dict[str, Any]) -> None:
    response = post(client, "/v1/messages", body)
    if response.status_code == 200 and body.get("stream") is True:
        assert [name for name, _ in frames(response.content)][-1] == "message_stop"
    elif response.status_code == 200:
        assert response.json()["type"] == "message"


@FUZZ
@given(body=bodies | deep_bodies | json_values)
def test_count_tokens_bodies(client: tuple[httpx.Client, str], body: Any) -> None:
    response = post(client, "/v1/messages/count_tokens", body)
    if response.status_code == 200:
        assert response.json()["estimated"] is True and response.json()["input_tokens"] >= 0
