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
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.asgi import APP_SEND
from proxy.endpoints import ENDPOINTS, TRANSFERS, Endpoint, TransferEndpoint
from proxy.endpoints.service import service_routes
from proxy.errors import InvalidRequest, MethodNotAllowed, NotFound, ProxyError
from proxy.middleware import RootPath, TrustedProxies
from proxy.observability.access import AccessLog
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
        await super().__call__(scope, receive, send)


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
    app.user_middleware.append(Middleware(DirectRoutes, routes=list(app.router.routes)))
    app.openapi = lambda: _openapi(app, endpoints, transfers)  # type: ignore[method-assign]
    _add_error_handlers(app)
    return app


class DirectRoutes:
    """The router's fixed-path routes to the proxy's own endpoints, looked up by method and
    path, reached without FastAPI's last layers; every other request goes on through them.

    FastAPI's router stays the one routing table: this is an index of its routes, built from
    them, and answers exactly as the router would (a (method, path) is indexed only when the
    router's first full match for it is that route). Those last layers (the exception
    middleware with its ``Request``, the exit stack, the router's scan and the route's method
    check) serve FastAPI's routes: the proxy's endpoints answer their own errors in their API's
    shape (an unexpected one still reaches the app's one error policy, outermost), read their
    own bodies and hold no exit stack. Skipping them saves about 20 µs per request, and a
    stream's coroutine is four frames shallower on every resumption (README "Performance").
    """

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes: dict[tuple[str, str], ASGIApp] = {}
        for route in routes:
            if not _direct(route):
                continue
            assert isinstance(route, Route) and route.methods is not None
            for method in route.methods:
                probe = {"type": "http", "path": route.path, "method": method, "root_path": ""}
                first = next(r for r in routes if r.matches(probe)[0] is Match.FULL)
                if first is route:
                    self.routes[method, route.path] = route.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root = scope.get("root_path")
            if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
                path = path[len(root) :]  # as the router matches (``RootPath``)
            endpoint = self.routes.get((scope["method"], path))
            if endpoint is not None:
                scope["endpoint"] = endpoint
                scope["path_params"] = {}
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _direct(route: BaseRoute) -> bool:
    """A route ``DirectRoutes`` may take: a fixed path to one of the proxy's endpoints."""
    return (
        isinstance(route, Route)
        and isinstance(route.endpoint, Endpoint | TransferEndpoint)
        and not route.param_convertors
        and route.methods is not None
    )


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
        endpoint = request.scope.get("endpoint")  # an API's path (405): the API's error shape
        body = endpoint.format.error_body(exc) if isinstance(endpoint, Endpoint) else exc.to_json()
        return Response(body, exc.status, exc.headers, media_type="application/json")

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
