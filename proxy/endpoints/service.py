"""The small routes: the model list, health, readiness, metrics and the playground page."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from proxy.errors import ModelNotFound
from proxy.services import Services


def service_routes(services: Services) -> APIRouter:
    router = APIRouter()
    playground = files("proxy.tools").joinpath("playground.html").read_text(encoding="utf-8")
    settings = services.settings

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        # The page calls the API itself, with the key typed into it when api_keys is set.
        return HTMLResponse(playground)

    def model(name: str) -> dict[str, Any]:
        owner = settings.models[name].targets()[0].upstream
        return {"id": name, "object": "model", "created": 0, "owned_by": owner}

    # Also without /v1, as every API endpoint: openai-python with a base URL without it lists
    # models at /models.
    @router.get("/v1/models", summary="List the public models (those the key may use)")
    @router.get("/models", include_in_schema=False)
    async def models(request: Request) -> Response:
        key = services.keys.identify(request.scope)
        data = [model(name) for name in services.keys.visible(key, settings.models)]
        return JSONResponse({"object": "list", "data": data})

    # openai-python's models.retrieve(); a public name may hold a "/" (org/model).
    @router.get("/v1/models/{name:path}", summary="Retrieve a public model (if the key may)")
    @router.get("/models/{name:path}", include_in_schema=False)
    async def retrieve(request: Request, name: str) -> Response:
        key = services.keys.identify(request.scope)
        if name not in settings.models or not key.may_use(name):
            raise ModelNotFound(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
            )
        return JSONResponse(model(name))

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @router.get("/readyz", summary="Ready (503 while starting, draining, or Redis is down)")
    async def readyz(request: Request) -> Response:
        if not request.app.state.ready or services.drain.draining:
            return JSONResponse({"status": "not ready"}, status_code=503)
        if await services.limits_ready():
            return JSONResponse({"status": "ready"})
        # Redis cannot answer: with on_backend_error deny every limited request gets 503, so
        # the process is not ready; with allow it serves unchecked, and says so.
        if settings.limits.on_backend_error == "deny":
            return JSONResponse({"status": "not ready", "limits": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready", "limits": "unavailable"})

    metrics = services.metrics
    if metrics is not None:

        @router.get("/metrics", summary="Prometheus metrics")
        async def metrics_endpoint() -> Response:
            body, content_type = metrics.render()
            return Response(body, media_type=content_type)

    return router
