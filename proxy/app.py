"""``create_app(settings)``: builds the whole proxy. Nothing is created at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from proxy.auth import Authenticator
from proxy.chat import ChatCompletions
from proxy.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ProxyError,
)
from proxy.metrics import Metrics
from proxy.middleware import AccessLog, FastPath, RootPath, TrustedProxies
from proxy.settings import Settings
from proxy.shutdown import Drain
from proxy.transport import build_transport
from proxy.upstreams import build_routes

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The ASGI app for ``settings``.

    ``transport`` replaces the network under the shared upstream client (tests pass an
    ``httpx.MockTransport``). The client and the upstreams are created by the lifespan and
    closed when the app shuts down.
    """
    auth = Authenticator(settings.api_keys)
    drain = Drain(settings.shutdown_grace_seconds)
    metrics = Metrics() if settings.metrics else None
    routes: dict[str, Any] = {}
    chat = ChatCompletions(
        routes,
        auth,
        drain=drain,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        keepalive=settings.keepalive_seconds,
        send_timeout=settings.send_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        log_bodies=settings.log_bodies,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(
            max_connections=settings.pool.max_connections,
            max_keepalive_connections=settings.pool.max_keepalive,
            keepalive_expiry=settings.pool.keepalive_expiry,
        )
        # One client shared by all users: it must keep no upstream cookies between requests.
        jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        wire = transport or build_transport(settings.pool.transport, limits)
        async with httpx.AsyncClient(
            transport=wire, cookies=jar, trust_env=settings.pool.transport == "httpx"
        ) as client:
            app.state.http_client = client
            upstreams, built = build_routes(settings, _sender(client, wire))
            routes.update(built)
            drain.install_signal_hooks()
            app.state.ready = True
            try:
                yield
            finally:
                app.state.ready = False
                drain.remove_signal_hooks()
                routes.clear()
                for upstream in upstreams:
                    await upstream.aclose()

    middleware = [
        # Outermost: the client address and scheme a trusted gateway forwarded, for the rest.
        Middleware(TrustedProxies, trusted=settings.trusted_proxies),
        Middleware(AccessLog, metrics=metrics),
    ]
    if settings.root_path:
        middleware.append(Middleware(RootPath, prefix=settings.root_path))
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["x-request-id"],
                max_age=600,
            ),
        )
    # openai-python's base_url may or may not end in /v1; both spellings are common.
    paths = ("/v1/chat/completions", "/chat/completions")
    middleware.append(Middleware(FastPath, endpoint=chat, paths=paths))
    app = FastAPI(
        title="chat-stream-proxy",
        lifespan=lifespan,
        middleware=middleware,
        docs_url=None,
        redoc_url=None,
    )
    app.state.ready = False
    app.state.drain = drain
    _add_small_routes(app, settings, auth)
    if metrics is not None:

        @app.get("/metrics")
        async def metrics_endpoint() -> Response:
            body, content_type = metrics.render()
            return Response(body, media_type=content_type)

    _add_error_handlers(app)
    return app


def _sender(client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport) -> Any:
    """How upstream requests are sent: the client, or its transport directly.

    The client layer (cookies, redirects, auth, URL merging) cost about a third of the proxy's
    CPU per request in the profile and does nothing we want, so with our own transport (or a
    test's MockTransport) requests go straight to it. httpx's default transport is used
    through the client, whose mounts carry proxies from the environment.
    """
    if isinstance(transport, httpx.AsyncHTTPTransport):

        async def through_client(request: httpx.Request) -> httpx.Response:
            return await client.send(request, stream=True)

        return through_client

    async def direct(request: httpx.Request) -> httpx.Response:
        response = await transport.handle_async_request(request)
        response.request = request
        return response

    return direct


def _add_small_routes(app: FastAPI, settings: Settings, auth: Authenticator) -> None:
    playground = (Path(__file__).parent / "playground.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        # The page calls the API itself, with the key typed into it when api_keys is set.
        return HTMLResponse(playground)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        auth.check(request.scope)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": route.upstream}
            for name, route in settings.models.items()
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        if request.app.state.ready and not request.app.state.drain.draining:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)


def _add_error_handlers(app: FastAPI) -> None:
    async def proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        return Response(exc.to_json(), exc.status, exc.headers, media_type="application/json")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: ProxyError
        if exc.status_code == 404:
            error = NotFound(f"No route for {request.method} {request.url.path}.")
        elif exc.status_code == 405:
            error = MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.url.path}."
            )
        else:
            error = ProxyError(
                str(exc.detail), status=exc.status_code, type="invalid_request_error"
            )
        return await proxy_error(request, error)

    async def validation_error(request: Request, exc: Exception) -> Response:
        return await proxy_error(request, InvalidRequest("The request is invalid."))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return await proxy_error(request, ProxyError("The proxy had an internal error."))

    app.add_exception_handler(ProxyError, proxy_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used with several workers): settings from env."""
    from proxy.settings import load_settings

    return create_app(load_settings())
