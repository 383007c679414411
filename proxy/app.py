"""``create_app(settings)``: builds the whole proxy. Nothing is created at import time.

One routing table serves everything: the API endpoints (``proxy.endpoints.ENDPOINTS``, pure
ASGI apps, each on its route) and the small FastAPI routes (models, health, metrics), all in
FastAPI's router and all in ``/openapi.json``. One policy for errors: a ``ProxyError`` is
answered in its API's shape (by the endpoint, or here for the FastAPI routes); anything
unexpected is a 500 in OpenAI's shape, and uvicorn logs its traceback once.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.asgi import APP_SEND, send_json
from proxy.endpoints import ENDPOINTS, TRANSFERS, Endpoint, TransferEndpoint
from proxy.endpoints.service import service_routes
from proxy.errors import InvalidRequest, MethodNotAllowed, NotFound, ProxyError
from proxy.middleware import RootPath, TrustedProxies
from proxy.observability.access import Access, AccessLog
from proxy.services import Services
from proxy.settings import Settings

# FastAPI's native OpenTelemetry (newer FastAPI versions) asks OpenTelemetry's global providers
# on every request whether to trace it: 3 µs per request, even with none configured. The
# proxy's observability is its own (Prometheus metrics, the access log), so it is off.
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


class ProxyApp(FastAPI):
    """FastAPI, noting in each scope the ``send`` it was called with (``asgi.body_sender``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[APP_SEND] = send
        try:
            await super().__call__(scope, receive, send)
        finally:
            # The server's send is a method of its request cycle, which holds the scope: kept
            # here, each request's cycle, scope, access record... would be a reference cycle,
            # left for the garbage collector (about 20 µs a request, measured, with uvicorn).
            scope.pop(APP_SEND, None)


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The ASGI app for ``settings``.

    ``transport`` replaces the network under every HTTP upstream (tests pass an
    ``httpx.MockTransport``). The upstream wire is opened by the lifespan and closed with it.
    """
    services = Services.build(settings, transport)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.wire.start()
        services.drain.install_signal_hooks()
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            services.drain.remove_signal_hooks()
            await services.aclose()

    app = ProxyApp(
        title="chat-stream-proxy",
        lifespan=lifespan,
        middleware=_middleware(settings, services),
        docs_url=None,
        redoc_url=None,
        **_NO_TELEMETRY,
    )
    app.state.ready = False
    app.state.services = services
    app.state.max_header_bytes = settings.max_header_bytes  # read by proxy.server
    endpoints = [endpoint(services) for endpoint in ENDPOINTS]
    for endpoint in endpoints:
        # openai-python's base_url may or may not end in /v1: both spellings are served.
        for path in (endpoint.path, endpoint.path.removeprefix("/v1")):
            app.router.routes.append(Route(path, endpoint, methods=["POST"]))
    transfers = [transfer(services) for transfer in TRANSFERS]
    for transfer in transfers:
        for route, methods in transfer.paths().items():
            for path in (route, route.removeprefix("/v1")):
                app.router.routes.append(Route(path, transfer, methods=methods))
    app.include_router(service_routes(services))
    # Innermost of the app's middleware, now that the router's table is complete.
    app.user_middleware.append(Middleware(DirectRoutes, router=app.router))
    app.openapi = lambda: _openapi(app, endpoints, transfers)  # type: ignore[method-assign]
    _add_error_handlers(app)
    return app


class DirectRoutes:
    """The router's fixed-path routes to the proxy's own endpoints, looked up by method and
    path, reached without FastAPI's last layers; every other request goes on through them.

    FastAPI's router stays the one routing table: this is an index of its routes, built from
    them when the app starts (its lifespan builds the middleware), and answers exactly as the
    router would (a (method, path) is indexed only when the router's first full match for it
    is that route; the path is taken as the router takes it, ``root_path`` and all). Routes
    changed after the app started are not seen here: the proxy changes none.

    Those last layers (the exception middleware with its ``Request``, the exit stack, the
    router's scan and the route's method check) serve FastAPI's routes: the proxy's endpoints
    read their own bodies, hold no exit stack and answer their own errors in their API's shape.
    A ``ProxyError`` that escapes one anyway is answered here as the app's handler would
    (``_error_response``); anything unexpected still reaches the app's one error policy,
    outermost. Skipping them saves about 11 µs per request, and a stream's coroutine is four
    frames shallower on every resumption (README "Performance").
    """

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router
        self.routes: dict[tuple[str, str], Endpoint | TransferEndpoint] = {}
        routes = list(router.routes)
        for route in routes:
            # Only a fixed path to one of the proxy's own endpoints.
            endpoint = getattr(route, "endpoint", None)
            if not isinstance(endpoint, Endpoint | TransferEndpoint):
                continue
            assert isinstance(route, Route)
            if route.param_convertors or not route.methods:
                continue
            for method in route.methods:
                probe = {"type": "http", "path": route.path, "method": method, "root_path": ""}
                first = next(r for r in routes if r.matches(probe)[0] is Match.FULL)
                if first is route:
                    self.routes[method, route.path] = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.routes.get((scope["method"], _route_path(scope)))
            if endpoint is not None:
                scope["endpoint"] = endpoint
                scope["path_params"] = {}
                scope.setdefault("router", self.router)
                try:
                    await endpoint(scope, receive, send)
                except ProxyError as error:
                    access: Access | None = scope.get("state", {}).get("access")
                    if access is not None and access.status:
                        raise  # the response began: nothing an answer can mend
                    status, body, headers = _error_response(endpoint, error)
                    await send_json(send, status, body, headers)
                return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path as the router matches it (Starlette's own rule for ``root_path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


# Middleware that look at a response's start alone and pass its body on untouched: a stream's
# body skips them (``proxy.asgi.body_sender``). FastAPI's own (error handling, exit stacks) are
# such too; tests/test_body_send.py walks the built stack and fails on any other, which would
# have to be added here only if it leaves bodies alone (a GZip middleware may not).
START_ONLY: frozenset[type] = frozenset(
    {TrustedProxies, AccessLog, RootPath, CORSMiddleware, DirectRoutes}
)


def _middleware(settings: Settings, services: Services) -> list[Middleware]:
    middleware = [
        # Outermost: the client address and scheme a trusted gateway forwarded, for the rest.
        Middleware(TrustedProxies, trusted=settings.trusted_proxies),
        Middleware(AccessLog, metrics=services.metrics),
    ]
    if settings.root_path:
        middleware.append(Middleware(RootPath, prefix=settings.root_path))
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["x-request-id"],
                max_age=600,
            ),
        )
    return middleware


def _openapi(
    app: FastAPI, endpoints: list[Endpoint], transfers: list[TransferEndpoint]
) -> dict[str, Any]:
    """FastAPI's schema of its own routes, plus the API endpoints with their request bodies."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    refs, defs = models_json_schema(
        [(endpoint.schema, "validation") for endpoint in endpoints],
        ref_template="#/components/schemas/{model}",
    )
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    for endpoint in endpoints:
        ref = refs[(endpoint.schema, "validation")]
        schema["paths"][endpoint.path] = {
            "post": {
                "summary": endpoint.summary,
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
                "responses": {
                    "200": {"description": "A JSON answer, or text/event-stream with stream"},
                    "4XX": {"description": "An error in the API's shape"},
                },
            }
        }
    for transfer in transfers:
        for operation in transfer.operations:
            paths = schema["paths"].setdefault(operation.path, {})
            paths[operation.method.lower()] = operation.openapi()
    app.openapi_schema = schema
    return schema


def _add_error_handlers(app: FastAPI) -> None:
    async def proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        # An API's path (405 on it, say): the API's error shape.
        status, body, headers = _error_response(request.scope.get("endpoint"), exc)
        return Response(body, status, headers, media_type="application/json")

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
        # uvicorn logs the traceback (Starlette re-raises after this answer): once, not twice.
        return await proxy_error(request, ProxyError("The proxy had an internal error."))

    app.add_exception_handler(ProxyError, proxy_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _error_response(endpoint: Any, error: ProxyError) -> tuple[int, bytes, dict[str, str]]:
    """A ``ProxyError`` as an HTTP answer: in the shape of the API ``endpoint`` serves (an
    ``Endpoint``'s format), else OpenAI's."""
    body = endpoint.format.error_body(error) if isinstance(endpoint, Endpoint) else error.to_json()
    return error.status, body, error.headers


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used with several workers): settings from env. Each
    worker is a new process: its logging is set up here, as ``serve`` did for the parent."""
    from proxy.heap import freeze_startup
    from proxy.observability.logs import setup_logging
    from proxy.settings import load_settings

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    freeze_startup()
    return app
