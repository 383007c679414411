"""Client mistakes: every one gets OpenAI's error shape and the right status, over a real socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from proxy import create_app
from proxy.jsondepth import writable
from tests.helpers import echo_settings, run_server

OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = echo_settings(
        api_keys=["sk-proxy-1", "sk-proxy-2"],
        max_body_bytes=4096,
        cors_origins=["https://app.example"],
    )
    with run_server(create_app(settings)) as base:
        yield base


AUTH = {"Authorization": "Bearer sk-proxy-1"}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert "Traceback" not in response.text and "detail" not in body
    return body["error"]  # type: ignore[no-any-return]


BAD_BODIES = [
    # (name, raw body, param, code)
    ("not json", b"{not json", None, "invalid_json"),
    ("empty body", b"", None, "invalid_json"),
    ("json array", b"[1, 2]", None, "invalid_json"),
    ("invalid utf-8", b'{"model": "\xff"}', None, "invalid_json"),
    (
        "no model",
        b'{"messages": [{"role": "user", "content": "x"}]}',
        "model",
        "missing_required_parameter",
    ),
    ("model not a string", b'{"model": 5, "messages": []}', "model", "invalid_type"),
    (
        "empty model",
        b'{"model": "", "messages": [{"role": "user", "content": "x"}]}',
        "model",
        "invalid_value",
    ),
    ("no messages", b'{"model": "echo"}', "messages", "missing_required_parameter"),
    ("messages not a list", b'{"model": "echo", "messages": "hi"}', "messages", "invalid_type"),
    ("messages empty", b'{"model": "echo", "messages": []}', "messages", "invalid_value"),
    (
        "message not an object",
        b'{"model": "echo", "messages": ["hi"]}',
        "messages[0]",
        "invalid_type",
    ),
    (
        "no role",
        b'{"model": "echo", "messages": [{"content": "x"}]}',
        "messages[0].role",
        "missing_required_parameter",
    ),
    (
        "bad role",
        b'{"model": "echo", "messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "x"}]}',
        "messages[1].role",
        "invalid_value",
    ),
    (
        "role not a string",
        b'{"model": "echo", "messages": [{"role": 1, "content": "x"}]}',
        "messages[0].role",
        "invalid_type",
    ),
    (
        "content a number",
        b'{"model": "echo", "messages": [{"role": "user", "content": 5}]}',
        "messages[0].content",
        "invalid_type",
    ),
    (
        "stream not a bool",
        b'{"model": "echo", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
        "stream",
        "invalid_type",
    ),
    (
        "stream_options not an object",
        b'{"model": "echo", "stream_options": 1, "messages": [{"role": "user", "content": "x"}]}',
        "stream_options",
        "invalid_type",
    ),
    (
        "include_usage not a bool",
        b'{"model": "echo", "stream_options": {"include_usage": 1}, "messages": [{"role": "user", "content": "x"}]}',
        "stream_options.include_usage",
        "invalid_type",
    ),
    (
        "max_tokens not an int",
        b'{"model": "echo", "max_tokens": "5", "messages": [{"role": "user", "content": "x"}]}',
        "max_tokens",
        "invalid_type",
    ),
    (
        "max_tokens a bool",
        b'{"model": "echo", "max_tokens": true, "messages": [{"role": "user", "content": "x"}]}',
        "max_tokens",
        "invalid_type",
    ),
    (
        "max_tokens zero",
        b'{"model": "echo", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}',
        "max_tokens",
        "invalid_value",
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "param", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_bad_body_is_400_naming_param(
    url: str, name: str, body: bytes, param: str | None, code: str
) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", content=body, headers=AUTH)
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    if param:
        assert param in error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "sk-proxy-1"},
        {"Authorization": "Basic eDp5"},
        {"Authorization": "Bearer sk-proxy-1x"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "no scheme", "basic", "longer", "empty"],
)
def test_missing_or_wrong_key_is_401(url: str, headers: dict[str, str]) -> None:
    body = {"model": "echo", "messages": OK_MESSAGES}
    error = assert_openai_error(
        httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers), 401
    )
    assert error["code"] == "invalid_api_key"
    assert "sk-proxy" not in str(error)
    assert_openai_error(httpx.get(f"{url}/v1/models", headers=headers), 401)


def test_every_configured_key_works(url: str) -> None:
    for key in ("sk-proxy-1", "sk-proxy-2"):
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "echo", "messages": OK_MESSAGES},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200


def test_auth_is_checked_before_the_body(url: str) -> None:
    # A 401 comes back even for an oversized body: refused clients cost no reading.
    response = httpx.post(f"{url}/v1/chat/completions", content=b"x" * 100_000)
    assert_openai_error(response, 401)


def test_unknown_model_is_404(url: str) -> None:
    body = {"model": "gpt-9", "messages": OK_MESSAGES}
    error = assert_openai_error(
        httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH), 404
    )
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert "gpt-9" in error["message"]


def test_body_over_limit_is_413(url: str) -> None:
    big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 5000}]}
    error = assert_openai_error(
        httpx.post(f"{url}/v1/chat/completions", json=big, headers=AUTH), 413
    )
    assert "4096" in error["message"]


def test_body_over_limit_without_content_length_is_413(url: str) -> None:
    # Chunked upload: the limit is enforced while reading, not from the header.
    def parts() -> Iterator[bytes]:
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = httpx.post(f"{url}/v1/chat/completions", content=parts(), headers=AUTH)
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("POST", "/v1/images/generations", 404),
        ("GET", "/v1/chat/completions", 405),
        ("PUT", "/v1/chat/completions", 405),
        ("DELETE", "/v1/models", 405),
        ("POST", "/healthz", 405),
    ],
)
def test_unknown_routes_and_methods(url: str, method: str, path: str, status: int) -> None:
    assert_openai_error(httpx.request(method, f"{url}{path}", headers=AUTH), status)


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "text/plain", "application/x-www-form-urlencoded"]
)
def test_json_accepted_whatever_the_content_type(url: str, content_type: str | None) -> None:
    # requests.post(data=json.dumps(...)) sends no Content-Type; curl -d sends a form type.
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "hi there"}]}'
    response = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "hi there"


def test_cors_preflight_and_response(url: str) -> None:
    preflight = httpx.options(
        f"{url}/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "echo", "messages": OK_MESSAGES},
        headers={**AUTH, "Origin": "https://app.example"},
    )
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(
        f"{url}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_without_config(fast_url: str) -> None:
    response = httpx.get(f"{fast_url}/v1/models", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


def test_server_keeps_serving_after_bad_requests(url: str) -> None:
    for body, _, _, _ in [(b[1], 0, 0, 0) for b in BAD_BODIES]:
        httpx.post(f"{url}/v1/chat/completions", content=body, headers=AUTH)
    response = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "echo", "messages": OK_MESSAGES}, headers=AUTH
    )
    assert response.status_code == 200


def test_request_id_returned_and_accepted(url: str) -> None:
    given = httpx.get(f"{url}/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = httpx.get(f"{url}/nope")
    assert len(made.headers["x-request-id"]) == 32
    bad = httpx.get(f"{url}/healthz", headers={"X-Request-ID": "x" * 500})
    assert bad.headers["x-request-id"] != "x" * 500


def _nested(depth: int, padding: int = 0) -> bytes:
    return b"[" * depth + b" " * padding + b"]" * depth


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_nested(238), True),  # the deepest accepted: 254 (orjson's most) less a margin of 16
        (_nested(239), False),  # 478 bytes: just past the length that cannot be that deep
        (_nested(239, padding=10_000), False),
        (_nested(254), False),  # orjson writes it alone, not inside a translation's 3+ levels
        (b'{"a":' * 300 + b"1" + b"}" * 300, False),
        (b"[" + b"[1]," * 1_000 + b"[1]]", True),  # many brackets, shallow
        (b'{"content":"' + b"[" * 600 + b'"}', True),  # brackets inside a string
    ],
)
def test_writable_tells_json_too_deep_for_orjson(raw: bytes, expected: bool) -> None:
    """The depth check before anything parsed is written again (``proxy.jsondepth``), with its
    shortcut for short texts and for texts with few brackets."""
    assert writable(raw, orjson.loads(raw)) is expected
