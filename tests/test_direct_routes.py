"""The proxy's endpoints are reached from the router's own table past FastAPI's last layers
(``proxy.app.DirectRoutes``), with the same answers the router would give; everything else
still goes the whole way."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Match, Route, Router

from proxy.app import DirectRoutes, create_app
from proxy.endpoints import ENDPOINTS
from proxy.endpoints.chat import ChatCompletions
from proxy.endpoints.messages import Messages
from proxy.errors import InvalidRequest
from proxy.passthrough import Passthrough
from proxy.relay import Relay
from tests.helpers import echo_settings, run_server

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}


def direct_routes(app: Any) -> DirectRoutes:
    layer = app.build_middleware_stack()
    while not isinstance(layer, DirectRoutes):
        layer = layer.app
    return layer


def endpoint_at(app: Any, path: str) -> Any:
    return next(r.endpoint for r in app.router.routes if getattr(r, "path", None) == path)


def test_the_index_holds_each_fixed_path_as_the_router_matches_it() -> None:
    app = create_app(echo_settings())
    index = direct_routes(app).routes
    for (method, path), endpoint in index.items():
        probe = {"type": "http", "method": method, "path": path, "root_path": ""}
        first = next(r for r in app.router.routes if r.matches(probe)[0] is Match.FULL)
        assert first.endpoint is endpoint  # type: ignore[attr-defined]
    api = {("POST", p) for e in ENDPOINTS for p in (e.path, e.path.removeprefix("/v1"))}
    assert api <= set(index)
    assert {("POST", "/v1/files"), ("GET", "/v1/files"), ("POST", "/audio/translations")} <= set(
        index
    )
    assert not [path for _, path in index if "{" in path]  # parameters: the router's job
    assert ("GET", "/v1/models") not in index  # FastAPI's own routes: the whole way


def test_a_path_the_router_would_give_to_an_earlier_route_is_not_indexed() -> None:
    app = create_app(echo_settings())
    chat, files = endpoint_at(app, "/v1/chat/completions"), endpoint_at(app, "/v1/files")
    shadowing = Route("/v1/{name:path}", files, methods=["POST"])
    direct = Route("/v1/chat/completions", chat, methods=["POST"])
    assert DirectRoutes(app, Router([shadowing, direct])).routes == {}
    only = {("POST", "/v1/chat/completions"): chat}
    assert DirectRoutes(app, Router([direct, shadowing])).routes == only


@pytest.fixture
def entered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests that went through FastAPI's exception middleware."""
    paths: list[str] = []
    original = ExceptionMiddleware.__call__

    async def counted(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            paths.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(ExceptionMiddleware, "__call__", counted)
    return paths


def test_api_requests_skip_fastapis_last_layers_and_the_rest_do_not(entered: list[str]) -> None:
    with run_server(create_app(echo_settings(root_path="/p"))) as url:
        answers = [
            httpx.post(f"{url}/v1/chat/completions", json=CHAT),
            httpx.post(f"{url}/p/chat/completions", json=CHAT),  # under the root path
            httpx.post(f"{url}/v1/messages", json={**CHAT, "max_tokens": 5}),
        ]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert entered == []
        models = httpx.get(f"{url}/v1/models")
        wrong = httpx.get(f"{url}/v1/chat/completions")
        slash = httpx.post(f"{url}/v1/chat/completions/", json=CHAT, follow_redirects=True)
    assert models.status_code == 200
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert slash.status_code == 200  # the router's own redirect, then the direct route
    assert entered[:3] == ["/v1/models", "/v1/chat/completions", "/v1/chat/completions/"]


def chat_messages_and(path: str) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
    """A chat request, a Messages request and a GET of ``path``, to a fresh echo proxy."""
    with run_server(create_app(echo_settings())) as url:
        chat = httpx.post(f"{url}/v1/chat/completions", json=CHAT)
        messages = httpx.post(f"{url}/v1/messages", json={**CHAT, "max_tokens": 5})
        return chat, messages, httpx.get(f"{url}{path}")


def test_an_unexpected_error_in_a_direct_endpoint_meets_the_apps_one_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: Any, body: Any, request_id: str) -> Any:
        raise RuntimeError("a bug, with a secret sk-should-not-show")

    monkeypatch.setattr(ChatCompletions, "parse", broken)
    monkeypatch.setattr(Messages, "parse", broken)
    chat, messages, still = chat_messages_and("/v1/models")
    assert chat.status_code == 500 and messages.status_code == 500
    assert chat.json()["error"]["message"] == "The proxy had an internal error."
    assert messages.json()["type"] == "error"  # Anthropic's shape on its endpoint
    assert messages.json()["error"]["message"] == "The proxy had an internal error."
    assert "sk-should-not-show" not in chat.text + messages.text
    assert still.status_code == 200  # and the server keeps serving


def test_a_proxy_error_escaping_a_direct_endpoint_is_answered_as_the_router_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refusing(*args: Any, **kwargs: Any) -> None:
        raise InvalidRequest("Refused after admission.", param="x")

    monkeypatch.setattr(Relay, "serve", refusing)
    monkeypatch.setattr(Passthrough, "serve", refusing)
    chat, messages, files = chat_messages_and("/v1/files")
    assert [chat.status_code, messages.status_code, files.status_code] == [400, 400, 400]
    assert chat.json()["error"] == {
        "message": "Refused after admission.",
        "type": "invalid_request_error",
        "param": "x",
        "code": None,
    }
    assert messages.json()["type"] == "error"  # Anthropic's shape on its endpoint
    assert messages.json()["error"]["type"] == "invalid_request_error"
    assert files.json()["error"]["param"] == "x"


def test_a_root_path_equal_to_a_route_is_matched_as_the_router_matches_it() -> None:
    # The router takes such a path as "" (no route): a redirect to the slashed path, not the
    # endpoint. Odd as a configuration, but the index answers as the router does.
    app = create_app(echo_settings(root_path="/v1/files"))
    with run_server(app) as url:
        answer = httpx.get(f"{url}/v1/files")
    assert answer.status_code == 307


def test_routes_changed_before_the_app_starts_are_the_ones_served() -> None:
    app = create_app(echo_settings())

    class Mine:  # a plain ASGI app (a function would be taken for a request handler)
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 418, "headers": []})
            await send({"type": "http.response.body", "body": b"mine"})

    app.router.routes.insert(0, Route("/v1/chat/completions", Mine(), methods=["POST"]))
    app.router.routes[:] = [
        r for r in app.router.routes if getattr(r, "path", "") != "/v1/embeddings"
    ]
    with run_server(app) as url:
        chat = httpx.post(f"{url}/v1/chat/completions", json=CHAT)
        gone = httpx.post(f"{url}/v1/embeddings", json={"model": "echo", "input": "x"})
    assert (chat.status_code, chat.text) == (418, "mine")
    assert gone.status_code == 404
