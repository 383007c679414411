"""The echo model's ``/v1/files``: create, list, retrieve, download and delete, end to end,
over its bounded temporary store (``echo.store``). An upload is read as it arrives, its
``file`` part written to the store as its bytes come (``echo.form``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from proxy.errors import InvalidRequest, UpstreamStatusError
from proxy.forms import PartStart
from proxy.settings import EchoUpstream
from proxy.upstreams.base import Call, Reply, Route
from proxy.upstreams.echo.audio import bytes_body
from proxy.upstreams.echo.form import Sink, Text, read_form
from proxy.upstreams.echo.store import FileStore, FileWriter
from proxy.upstreams.transfer import Form, RawBody, Transfer


async def files(config: EchoUpstream, call: Call, route: Route) -> Reply:
    """One ``/v1/files`` request (``call.transfer`` says which)."""
    store = getattr(route.upstream, "files", None)  # the echo model's own store
    transfer = call.transfer
    if not isinstance(store, FileStore) or transfer is None:
        raise InvalidRequest("The echo model's files API takes file requests only.")
    method = transfer.method
    parts = [unquote(part) for part in transfer.path.split("/") if part]
    if not parts and method == "POST" and transfer.form is not None:
        return _json(await _create(store, transfer.form, route.upstream_model))
    if not parts and method == "GET":
        return _json(_list(store, transfer))
    if len(parts) == 1 and method == "GET":
        return _json(store.get(parts[0]))
    if len(parts) == 1 and method == "DELETE":
        return _json(store.delete(parts[0]))
    if len(parts) == 2 and parts[1] == "content" and method == "GET":
        size = store.get(parts[0])["bytes"]
        chunks = store.content(parts[0])
        headers = {"content-type": "application/octet-stream", "content-length": str(size)}
        return Reply(raw=RawBody(200, headers, chunks), closers=[chunks.aclose])
    raise UpstreamStatusError(f"No route for {method} /files{transfer.path}.", status=404)


async def _create(store: FileStore, form: Form, model: str) -> dict[str, Any]:
    """The form's ``file`` into the store, under its ``purpose``."""
    upload: FileWriter | None = None

    def sink(part: PartStart) -> Sink:
        nonlocal upload
        if part.name != "file" or upload is not None:
            return Text(part, limit=0)  # another file part: counted, not kept
        upload = store.writer((part.filename or b"").decode("utf-8", "replace"))
        return upload

    added = False
    try:
        fields = await read_form(form, model, sink)
        if not fields.get("purpose"):
            raise InvalidRequest(
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if upload is None:
            raise InvalidRequest("Missing required parameter: 'file'.", param="file")
        entry = store.add(upload, fields["purpose"])
        added = True
        return entry
    finally:
        if upload is not None and not added:
            upload.discard()


def _list(store: FileStore, transfer: Transfer) -> dict[str, Any]:
    query = {key: values[-1] for key, values in parse_qs(transfer.query).items()}
    try:
        limit = max(1, min(10_000, int(query.get("limit", "10000"))))
    except ValueError:
        raise InvalidRequest("Invalid 'limit': an integer.", param="limit") from None
    return store.list(query.get("purpose"), limit, query.get("order", "desc"), query.get("after"))


def _json(payload: dict[str, Any]) -> Reply:
    return Reply(raw=bytes_body(orjson.dumps(payload), "application/json"))
