"""``/v1/files``: upload, list, retrieve, download and delete files on one upstream.

These requests name no model, so they go to one upstream: ``files_upstream``, else the
upstream of the first model in the config (its first deployment). Always the same one, since
a file lives where it was uploaded: no load balancing, no fallbacks; a failed attempt is
retried on it as ``routing`` says (an upload as far as it can be sent again). It has a circuit
breaker of its own, shared by these routes. An upload streams through as for audio
(``proxy.forms``), the form passed on as it came; every answer is passed on as it came, a
file's content however large.

Keys: a file belongs to the upstream's account, not to a key, so every key that may reach that
upstream sees every file on it. A key with a model allowlist may use these routes only if it
lists a model served there (403 otherwise); each request counts against the key's ``rpm`` and
``max_parallel`` (and one token of its ``tpm``: a file is not priced in tokens).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from proxy.asgi import Receive, Scope
from proxy.endpoints.transfer import Operation, Prepared, TransferEndpoint
from proxy.endpoints.uploads import read_upload
from proxy.errors import InvalidRequest, MethodNotAllowed, NotFound, PermissionDenied
from proxy.keys import Key
from proxy.limits import Ticket
from proxy.observability.access import Access
from proxy.routing import Plan
from proxy.routing.breaker import Breaker
from proxy.routing.deployments import Deployment
from proxy.routing.plan import Model
from proxy.services import Services
from proxy.settings import HTTPUpstream
from proxy.upstreams.base import Call, Route
from proxy.upstreams.transfer import Transfer

log = logging.getLogger(__name__)

FILE_FORM: dict[str, Any] = {
    "file": {"type": "string", "format": "binary"},
    "purpose": {"type": "string", "description": "assistants, batch, fine-tune, user_data, ..."},
}
MAX_ID = 256  # characters of a file id


class Files(TransferEndpoint):
    """Every ``/v1/files`` route; see the module docstring."""

    operations = (
        Operation("POST", "/v1/files", "Upload a file (multipart)", FILE_FORM, ("file",)),
        Operation("GET", "/v1/files", "List files"),
        Operation("GET", "/v1/files/{file_id}", "Retrieve a file object"),
        Operation("DELETE", "/v1/files/{file_id}", "Delete a file"),
        Operation("GET", "/v1/files/{file_id}/content", "Download a file's content"),
    )

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.deployment = _deployment(services)
        # The models served on the files upstream: a key allowed one of them may use files.
        name = services.settings.files_upstream_name()
        self.models = frozenset(
            public
            for public, model in services.router.models.items()
            if any(deployment.route.upstream_name == name for deployment in model.deployments)
        )

    async def admit(self, key: Key, call: Call, access: Access) -> Ticket:
        if key.models is not None and not key.models & self.models:
            raise PermissionDenied(
                f"The key '{key.name}' may not use /v1/files: it may use no model served by "
                "the files upstream."
            )
        return await self.services.admit(key, None, 1, access)

    async def accept(self, scope: Scope, receive: Receive) -> Prepared:
        method, path = scope["method"], _path(scope)
        if method not in ("GET", "POST", "DELETE"):  # HEAD: it would fetch a whole file
            raise MethodNotAllowed(f"Method {method} is not allowed on {scope['path']}.")
        plan = self.plan()
        upload = None
        if method == "POST":
            upload = await read_upload(self.services, scope, receive, routed=False)
        call = Call(
            api="files",
            body=dict(upload.fields) if upload is not None else {},
            model="",
            stream=False,
            request_id=scope["state"]["request_id"],
            transfer=Transfer(method, path, scope["query_string"].decode("latin-1"), upload),
        )
        assert self.deployment is not None
        watch = upload.watch if upload is not None else receive
        return Prepared(call, plan, self.deployment.route.deadline, watch, upload)

    def plan(self) -> Plan:
        """The one upstream of files, with the usual retries and backoff."""
        if self.deployment is None:
            raise NotFound("No upstream serves /v1/files: configure a model or files_upstream.")
        router = self.services.router
        model = Model("", [self.deployment], "weighted", [], [])
        hook = router.metrics.attempt if router.metrics is not None else None
        return Plan([model], [], router.routing, router.rng, on_attempt=hook)


def _path(scope: Scope) -> str:
    """The path under the upstream's ``/files``: "", "/<id>" or "/<id>/content"."""
    file_id = scope.get("path_params", {}).get("file_id")
    if file_id is None:
        return ""
    # "." and ".." are dot segments, which the upstream URL resolves (quote leaves dots alone):
    # /files/.. would reach <base_url>/ and /files/../content <base_url>/content, with the
    # proxy's upstream key. No file id is one.
    if not file_id or len(file_id) > MAX_ID or file_id in (".", ".."):
        raise InvalidRequest("Invalid file id.", param="file_id", code="invalid_value")
    path = "/" + quote(file_id, safe="")
    # The router matched /files/{file_id}/content, or /files/{file_id} with an id "content".
    return path + "/content" if scope["path"].endswith(f"/{file_id}/content") else path


def _deployment(services: Services) -> Deployment | None:
    settings = services.settings
    name = settings.files_upstream_name()
    if name is None:
        return None
    config = settings.upstreams[name]
    total = config.timeouts.total if isinstance(config, HTTPUpstream) else None
    route = Route("", name, services.upstreams[name], "files", deadline=total)
    cooldown = settings.routing.cooldown
    metrics = services.metrics

    def changed(state: str) -> None:
        log.warning("breaker of %s/files (/v1/files) is now %s", name, state)
        if metrics is not None:
            metrics.breaker_changed(f"{name}/files", state)

    return Deployment(route, 1.0, None, Breaker(cooldown.failures, cooldown.seconds, changed))
