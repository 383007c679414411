"""Property-based fuzzing of /v1/chat/completions (hypothesis), over a real socket.

Every answer to a malformed request is a 4xx in OpenAI's error shape: never a 5xx, never a
traceback, nothing logged at ERROR; and the server serves a normal request afterwards.
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
from tests.helpers import echo_settings, run_server

LIMIT = 64 * 1024
FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def client() -> Iterator[tuple[httpx.Client, str]]:
    with (
        run_server(create_app(echo_settings(max_body_bytes=LIMIT))) as url,
        httpx.Client(timeout=30) as http,
    ):
        yield http, url


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.ERROR)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if response.status_code != 200:
        assert 400 <= response.status_code < 500
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]


def post(
    client: tuple[httpx.Client, str], body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    http, url = client
    response = http.post(f"{url}/v1/chat/completions", content=body, headers=headers or {})
    check(response)
    return response


def still_serves(client: tuple[httpx.Client, str]) -> None:
    http, url = client
    body = {"model": "echo", "messages": [{"role": "user", "content": "still here"}]}
    response = http.post(f"{url}/v1/chat/completions", json=body)
    assert response.json()["choices"][0]["message"]["content"] == "still here"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
anything = json_values | st.integers(min_value=-(2**70), max_value=2**70)
roles = (
    st.sampled_from(
        ["user", "system", "assistant", "tool", "developer", "function", "bot", "", "USER"]
    )
    | st.text(max_size=6)
    | anything
)
contents = (
    st.text()
    | st.none()
    | anything
    | st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "x"])}, optional={"text": anything}
        )
    )
)
messages = st.lists(
    st.fixed_dictionaries({}, optional={"role": roles, "content": contents, "name": anything})
    | anything,
    max_size=4,
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["echo", "gpt-4o", ""]) | anything,
        "messages": messages | anything,
        "stream": st.booleans() | anything,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": anything})
        | anything,
        "max_tokens": st.integers(min_value=-5, max_value=2**40) | anything,
        "max_completion_tokens": anything,
        "temperature": anything,
        "n": anything,
        "tools": anything,
    },
)


@FUZZ
@given(body=json_values)
def test_any_json_value(client: tuple[httpx.Client, str], body: Any) -> None:
    post(client, json.dumps(body).encode())


@FUZZ
@given(body=chat_bodies)
def test_chat_shaped_bodies(client: tuple[httpx.Client, str], body: dict[str, Any]) -> None:
    response = post(client, json.dumps(body).encode())
    if response.status_code == 200 and body.get("stream") is True:
        assert response.text.endswith("data: [DONE]\n\n")


@FUZZ
@given(body=st.binary(max_size=2000))
def test_raw_bytes_and_invalid_utf8(client: tuple[httpx.Client, str], body: bytes) -> None:
    post(client, body)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(depth=st.integers(min_value=1, max_value=100_000), kind=st.sampled_from(["[", '{"a":']))
def test_deeply_nested(client: tuple[httpx.Client, str], depth: int, kind: str) -> None:
    close = "]" if kind == "[" else "}"
    body = (kind * depth + "1" + close * depth).encode()
    response = post(client, body)
    assert response.status_code in (400, 413)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=st.integers(min_value=LIMIT - 200, max_value=4 * LIMIT))
def test_huge_bodies(client: tuple[httpx.Client, str], size: int) -> None:
    text = "x" * size
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": text}]}).encode()
    response = post(client, body)
    assert response.status_code == (200 if len(body) <= LIMIT else 413)


# h11 (the client) refuses leading/trailing whitespace in header values: not a server input.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)


@FUZZ
@given(
    content_type=header_text,
    request_id=header_text,
    authorization=header_text,
    extra=st.dictionaries(
        st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,15}\Z"), header_text, max_size=3
    ),
)
def test_bad_headers(
    client: tuple[httpx.Client, str],
    content_type: str,
    request_id: str,
    authorization: str,
    extra: dict[str, str],
) -> None:
    headers = {
        **extra,
        "Content-Type": content_type,
        "X-Request-ID": request_id,
        "Authorization": authorization,
    }
    headers = {
        k: v
        for k, v in headers.items()
        if k.lower() not in ("content-length", "transfer-encoding", "host", "connection")
    }
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}).encode()
    response = post(client, body, headers)
    assert response.status_code == 200  # no api_keys: nothing in these headers may break a request
    rid = response.headers["x-request-id"]
    assert 1 <= len(rid) <= 128


@FUZZ
@given(
    method=st.sampled_from(
        ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "POST"]
    ),
    path=st.sampled_from(
        ["/v1/chat/completions", "/chat/completions", "/v1/models", "/healthz", "/readyz", "/"]
    )
    | st.from_regex(r"\A/[A-Za-z0-9._~%/-]{0,40}\Z"),
)
def test_methods_and_paths(client: tuple[httpx.Client, str], method: str, path: str) -> None:
    http, url = client
    response = http.request(method, f"{url}{path}", content=b"{}")
    check(response)


def test_still_serves_after_fuzzing(client: tuple[httpx.Client, str]) -> None:
    still_serves(client)
