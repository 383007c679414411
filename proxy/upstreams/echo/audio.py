"""The echo model's transcriptions and translations.

The transcript of an uploaded text file (``text/*``, a ``.txt`` name, or UTF-8 without a
declared type; up to 1 MiB) is its text; of anything else, one line naming its size, type and
name. With ``stream=true`` it is streamed word by word (or char by char, as the echo upstream's
``chunk`` says), ``delay_ms`` apart, as ``transcript.text.delta`` events then one
``transcript.text.done`` with the whole text and usage (a token is one piece, as for chat).
Otherwise ``response_format`` says how: ``json`` (the default), ``verbose_json``, ``text``,
``srt``, ``vtt``. The upload is read as it arrives, never held (``echo.form``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import PurePosixPath
from typing import Any

import orjson

from proxy.errors import InvalidRequest
from proxy.forms import PartStart
from proxy.settings import EchoUpstream
from proxy.upstreams.base import Call, Reply, Route
from proxy.upstreams.echo.chat import split_pieces
from proxy.upstreams.echo.form import Text, read_form
from proxy.upstreams.transfer import RawBody

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md"})
SECONDS_PER_PIECE = 0.5  # the transcript's made-up timing (srt, vtt, verbose_json)


async def audio(config: EchoUpstream, call: Call, route: Route) -> Reply:
    """A transcript of the uploaded ``file``; see the module docstring."""
    form = call.transfer.form if call.transfer is not None else None
    if form is None:
        raise InvalidRequest("The echo model's audio API takes a multipart upload.")
    upload: Text | None = None

    def keep(part: PartStart) -> Text:
        # Only the first ``file`` is transcribed: any other file part is counted, not kept
        # (keeping 1 MiB of each let a form of many files grow the process by its size).
        nonlocal upload
        if part.name != "file" or upload is not None:
            return Text(part, limit=0)
        upload = Text(part)
        return upload

    fields = await read_form(form, route.upstream_model, keep)
    text = transcript(upload) if upload is not None else ""
    pieces = split_pieces(text, config.chunk)
    usage = {
        "type": "tokens",
        "input_tokens": len(pieces),
        "output_tokens": len(pieces),
        "total_tokens": 2 * len(pieces),
    }
    if call.stream:
        return Reply(chunks=_events(text, pieces, usage, config.delay_ms / 1000))
    translating = call.transfer is not None and call.transfer.path == "/translations"
    task = "translate" if translating else "transcribe"
    body, kind = _answer(fields.get("response_format") or "json", text, len(pieces), usage, task)
    return Reply(raw=bytes_body(body, kind))


def transcript(upload: Text) -> str:
    """The text of a text file, else the line that names the file."""
    part = upload.part
    kind = (part.content_type or b"").decode("latin-1").split(";")[0].strip().lower()
    name = (part.filename or b"").decode("utf-8", "replace")
    texty = kind.startswith("text/") or PurePosixPath(name).suffix.lower() in TEXT_SUFFIXES
    if upload.whole and (texty or not kind):
        try:
            text = bytes(upload.data).decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if texty or "\x00" not in text:
                return text
    named = f": {name}" if name else ""
    return f"[{upload.size} bytes of {kind or 'an unknown type'}{named}]"


def bytes_body(body: bytes, content_type: str) -> RawBody:
    """A whole answer as a passed-on body."""
    headers = {"content-type": content_type, "content-length": str(len(body))}
    return RawBody(200, headers, _once(body))


def _answer(
    style: str, text: str, pieces: int, usage: dict[str, Any], task: str
) -> tuple[bytes, str]:
    end = _clock(pieces * SECONDS_PER_PIECE)
    if style == "json":
        return orjson.dumps({"text": text, "usage": usage}), "application/json"
    if style == "verbose_json":
        duration = pieces * SECONDS_PER_PIECE
        segment = {"id": 0, "start": 0.0, "end": duration, "text": text}
        verbose = {"task": task, "language": "english", "duration": duration, "text": text}
        return orjson.dumps({**verbose, "segments": [segment]}), "application/json"
    if style == "text":
        return text.encode(), "text/plain; charset=utf-8"
    if style == "srt":
        return f"1\n00:00:00,000 --> {end}\n{text}\n".encode(), "text/plain; charset=utf-8"
    if style == "vtt":
        cue = f"00:00:00.000 --> {end.replace(',', '.')}"
        return f"WEBVTT\n\n{cue}\n{text}\n".encode(), "text/vtt; charset=utf-8"
    raise InvalidRequest(
        f"Invalid value for 'response_format': '{style}'. Supported values are: 'json', "
        "'text', 'srt', 'verbose_json' and 'vtt'.",
        param="response_format",
        code="invalid_value",
    )


def _clock(seconds: float) -> str:
    whole = int(seconds)
    millis = round((seconds - whole) * 1000)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d},{millis:03d}"


async def _events(
    text: str, pieces: list[str], usage: dict[str, Any], delay: float
) -> AsyncGenerator[dict[str, Any], None]:
    for number, piece in enumerate(pieces):
        if number and delay:
            await asyncio.sleep(delay)
        yield {"type": "transcript.text.delta", "delta": piece, "logprobs": None}
    yield {"type": "transcript.text.done", "text": text, "logprobs": None, "usage": usage}


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data
