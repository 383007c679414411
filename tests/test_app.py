"""The app's shape: one routing table, every public endpoint in /openapi.json, and a new endpoint
being one class plus one line in ``ENDPOINTS``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from proxy import create_app
from proxy.endpoints import ENDPOINTS, Endpoint
from proxy.formats.chat import ChatFormat
from proxy.upstreams.base import Call
from tests.helpers import echo_settings, run_server


def test_openapi_lists_every_public_endpoint_with_its_request_schema() -> None:
    with run_server(create_app(echo_settings())) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/chat/completions", "/v1/models", "/healthz", "/readyz", "/metrics"):
        assert path in paths, path
    chat = paths["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ChatCompletionRequest"
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(request["required"])
    assert "stream" in request["properties"]


class Echoes(BaseModel):
    text: str


class Shout(Endpoint):
    """An endpoint as a reader of the README would add one: it answers in chat's shape."""

    path = "/v1/shout"
    summary = "Shout the text back"
    schema = Echoes
    format = ChatFormat

    def parse(self, body: dict[str, Any], request_id: str) -> Call:
        text = str(body.get("text", "")).upper()
        messages = [{"role": "user", "content": text}]
        return Call("chat", {"messages": messages}, "echo", stream=False, request_id=request_id)


def test_a_new_endpoint_is_one_class_and_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.app.ENDPOINTS", (*ENDPOINTS, Shout))
    with run_server(create_app(echo_settings())) as url:
        answer = httpx.post(f"{url}/v1/shout", json={"text": "hello there"}).json()
        documented = httpx.get(f"{url}/openapi.json").json()["paths"]
        wrong_method = httpx.get(f"{url}/v1/shout")
    assert answer["choices"][0]["message"]["content"] == "HELLO THERE"
    assert documented["/v1/shout"]["post"]["summary"] == "Shout the text back"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
