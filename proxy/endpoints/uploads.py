"""Reading an upload for an endpoint, and the audio endpoints.

``read_upload`` checks the Content-Type (multipart/form-data with a boundary), refuses a
declared ``Content-Length`` over ``max_upload_bytes`` before reading, then holds the form's
first parts (``Upload.hold``: up to ``model`` for a routed upload). ``POST
/v1/audio/transcriptions`` and ``/v1/audio/translations`` are routed by the form's
``model``, like chat; the upload streams on to the model's upstream, and the answer comes
back as it came (a transcript streamed as SSE with ``stream=true``).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from proxy.asgi import Receive, Scope, header
from proxy.endpoints.body import content_length
from proxy.endpoints.transfer import Operation, Prepared, TransferEndpoint
from proxy.forms import ClientBody, Upload, boundary_of
from proxy.services import Services
from proxy.upstreams.base import Call
from proxy.upstreams.transfer import Transfer

body_log = logging.getLogger("proxy.bodies")

AUDIO_FORM: dict[str, Any] = {
    "file": {"type": "string", "format": "binary"},
    "model": {"type": "string"},
    "stream": {"type": "boolean", "description": "stream the transcript as SSE"},
    "response_format": {"type": "string", "enum": ["json", "text", "srt", "verbose_json", "vtt"]},
    "language": {"type": "string"},
    "prompt": {"type": "string"},
}


async def read_upload(
    services: Services, scope: Scope, receive: Receive, *, routed: bool
) -> Upload:
    """The request's upload, held up to what routing needs (see the module docstring)."""
    settings = services.settings
    boundary = boundary_of(header(scope, b"content-type"))
    declared = content_length(header(scope, b"content-length"))
    body = ClientBody(receive, settings.max_upload_bytes, declared, settings.body_timeout_seconds)
    upload = Upload(body, boundary, routed=routed)
    try:
        await upload.hold()
    except BaseException:
        await upload.aclose()
        raise
    if settings.log_bodies:
        fields = services.scrubber.text(repr(upload.fields))
        files = [part.name for part in upload.seen if part.filename is not None]
        extra = {"request_id": scope["state"]["request_id"], "form": fields, "files": files}
        body_log.info("upload", extra={"fields": extra})
    return upload


class Transcriptions(TransferEndpoint):
    """``POST /v1/audio/transcriptions``: speech to text, streamed with ``stream=true``."""

    suffix: ClassVar[str] = "/transcriptions"
    operations = (
        Operation(
            "POST",
            "/v1/audio/transcriptions",
            "Transcribe audio (multipart; stream=true: Server-Sent Events)",
            AUDIO_FORM,
            ("file", "model"),
        ),
    )

    async def accept(self, scope: Scope, receive: Receive) -> Prepared:
        upload = await read_upload(self.services, scope, receive, routed=True)
        try:
            model = upload.model
            assert model is not None  # hold() raises without one
            router = self.services.router
            plan = router.plan(model)
            call = Call(
                api="audio",
                body=dict(upload.fields),
                model=model,
                stream=upload.stream,
                request_id=scope["state"]["request_id"],
                transfer=Transfer("POST", self.suffix, form=upload),
            )
            return Prepared(call, plan, router.deadline(model), upload.watch, upload)
        except BaseException:
            await upload.aclose()
            raise


class Translations(Transcriptions):
    """``POST /v1/audio/translations``: speech to English text."""

    suffix = "/translations"
    operations = (
        Operation(
            "POST",
            "/v1/audio/translations",
            "Translate audio into English (multipart)",
            AUDIO_FORM,
            ("file", "model"),
        ),
    )
