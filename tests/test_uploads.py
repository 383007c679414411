"""Uploads through the proxy over real sockets: every form of ``requests``' ``files=``,
openai-python's transcriptions (stream and not) and files, what the upstream receives (its
parts, their order and bytes, the framing), spooling, the echo model's answers and store.

Limits, bad input and failures are in ``test_upload_limits.py``; memory and the separate
process in ``test_upload_process.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import requests

from proxy import create_app
from proxy.settings import Settings
from tests.helpers import (
    BufferingWrapper,
    assert_true_streaming,
    echo_settings,
    eventually,
    run_server,
    upstream_settings,
)
from tests.test_forms import form, spool_descriptors
from tests.upload_upstream import Answer, Seen, UploadUpstream, serve_uploads

AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 40  # ~10 KB of not-text
TRANSCRIBE = "/v1/audio/transcriptions"


@contextmanager
def through(
    upstream: UploadUpstream | None = None, **settings: Any
) -> Iterator[tuple[str, UploadUpstream]]:
    """A fake upload upstream and the proxy in front of it: model ``m`` -> ``whisper-up``."""
    with (
        serve_uploads(upstream) as fake,
        run_server(create_app(upstream_settings(fake.url, model="whisper-up", **settings))) as url,
    ):
        yield url, fake


def prepared_parts(**kwargs: Any) -> list[tuple[str | None, str | None, bytes]]:
    """The parts of the body ``requests`` itself prepares for ``kwargs``, parsed by the
    standard library: what the client meant to send."""
    request = requests.Request("POST", "http://x/", **kwargs).prepare()
    assert isinstance(request.body, bytes)
    seen = Seen("POST", "/", {"content-type": request.headers["Content-Type"]})
    seen.raw = bytearray(request.body)
    return seen.email_parts()


def upstream_view(parts: list[tuple[str | None, str | None, bytes]]) -> list[Any]:
    """What the upstream must get for a client's parts: the model first, with the route's
    name for it, then every other part in the client's order."""
    others = [part for part in parts if part[0] != "model"]
    return [("model", None, b"whisper-up"), *others]


FORMS = [
    "a file object",
    "2-tuple",
    "3-tuple",
    "4-tuple",
    "several files",
    "fields before and after the file",
    "the model after the file",
]


@contextmanager
def requests_form(tmp_path: Path, name: str) -> Iterator[dict[str, Any]]:
    """One form of ``files=`` that requests' README documents, as ``requests.post`` kwargs."""
    speech = tmp_path / "speech.wav"
    speech.write_bytes(AUDIO)
    if name == "a file object":
        with speech.open("rb") as opened:
            yield {"data": {"model": "m"}, "files": {"file": opened}}
        return
    yield {
        "2-tuple": {"data": {"model": "m"}, "files": {"file": ("speech.wav", AUDIO)}},
        "3-tuple": {"data": {"model": "m"}, "files": {"file": ("speech.wav", AUDIO, "audio/wav")}},
        "4-tuple": {
            "data": {"model": "m", "language": "en"},
            "files": {"file": ("speech.wav", AUDIO, "audio/wav", {"Expires": "0"})},
        },
        "several files": {
            "data": {"model": "m"},
            "files": [
                ("file", ("a.wav", AUDIO, "audio/wav")),
                ("extra", ("notes.txt", b"some notes", "text/plain")),
                ("extra", ("more.bin", bytes(range(256)) * 12)),
            ],
        },
        "fields before and after the file": {
            "files": [
                ("model", (None, "m")),
                ("language", (None, "en")),
                ("file", ("speech.wav", AUDIO, "audio/wav")),
                ("prompt", (None, "after the file")),
                ("response_format", (None, "json")),
            ]
        },
        "the model after the file": {
            "files": [("file", ("speech.wav", AUDIO, "audio/wav")), ("model", (None, "m"))]
        },
    }[name]


@pytest.mark.parametrize("name", FORMS)
def test_every_requests_form_reaches_the_upstream_intact(name: str, tmp_path: Path) -> None:
    with requests_form(tmp_path, name) as kwargs:
        expected = upstream_view(prepared_parts(**kwargs))
    with through() as (url, fake), requests_form(tmp_path, name) as kwargs:
        response = requests.post(f"{url}{TRANSCRIBE}", timeout=10, **kwargs)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-proxy-model"] == "m"
        [seen] = fake.seen
    assert (seen.method, seen.path) == ("POST", TRANSCRIBE)
    assert seen.email_parts() == expected  # an independent parser agrees, part by part
    assert seen.framing == "content-length"  # small: held whole, sent with its length
    assert int(seen.headers["content-length"]) == seen.received and seen.complete
    assert seen.headers["content-type"].startswith(
        "multipart/form-data; boundary=chat-stream-proxy-"
    )
    assert "authorization" not in seen.headers  # no upstream key configured, none forwarded
    assert json.loads(response.content)["text"] == f"{seen.received} bytes"


def test_part_headers_are_the_form_ones_only(tmp_path: Path) -> None:
    """A 4-tuple's custom part headers stay behind; name, file name and type go on."""
    with through() as (url, fake), requests_form(tmp_path, "4-tuple") as kwargs:
        assert requests.post(f"{url}{TRANSCRIBE}", timeout=10, **kwargs).status_code == 200
    assert b"Expires" not in bytes(fake.seen[0].raw or b"")
    file = fake.seen[0].part("file")
    assert (file.filename, file.content_type) == ("speech.wav", "audio/wav")


def big_form(size: int, *, model_first: bool = True) -> tuple[bytes, str, str]:
    """A client body with a ``size``-byte file; (body, content type, the file's sha256)."""
    data = os.urandom(size)
    parts = [("model", None, None, b"m"), ("file", "big.bin", "application/octet-stream", data)]
    body = form(*(parts if model_first else parts[::-1]))
    return body, "multipart/form-data; boundary=xYzZy", hashlib.sha256(data).hexdigest()


def test_a_large_upload_streams_with_chunked_framing_and_no_spool() -> None:
    body, kind, digest = big_form(5 * 1024 * 1024)
    before = spool_descriptors()
    during: list[int] = []
    with through() as (url, fake):
        watcher = threading.Timer(0.5, lambda: during.append(spool_descriptors()))
        watcher.start()
        response = requests.post(
            f"{url}{TRANSCRIBE}",
            data=slow_body(body, 3 * 1024 * 1024, 1.0),  # paused mid-file: look then
            headers={"content-type": kind},
            timeout=30,
        )
        watcher.join()
        assert response.status_code == 200, response.text
    assert during == [before]  # the model came first: nothing went to disk
    [seen] = fake.seen
    assert seen.framing == "chunked" and "content-length" not in seen.headers
    assert seen.complete and [p.name for p in seen.parts] == ["model", "file"]
    assert seen.part("model").value == b"whisper-up"
    assert seen.part("file").sha256 == digest


def slow_body(body: bytes, pause_at: int, pause: float) -> Iterator[bytes]:
    """``body`` in 64 KiB pieces, pausing ``pause`` s once ``pause_at`` bytes are out."""
    paused = False
    for start in range(0, len(body), 65536):
        if not paused and start >= pause_at:
            time.sleep(pause)
            paused = True
        yield body[start : start + 65536]


def test_a_file_before_the_model_is_spooled_and_the_spool_removed() -> None:
    """3 MiB before the model: held in a temporary file (seen open while the client pauses),
    sent from there once the model is in, and the file gone afterwards."""
    body, kind, digest = big_form(3 * 1024 * 1024, model_first=False)
    before = spool_descriptors()
    during: list[int] = []
    with through() as (url, fake):

        def watch() -> None:
            time.sleep(0.6)
            during.append(spool_descriptors())

        watcher = threading.Thread(target=watch)
        watcher.start()
        response = requests.post(
            f"{url}{TRANSCRIBE}",
            data=slow_body(body, 5 * 512 * 1024, 1.2),  # 2.5 MiB of the file, then a pause
            headers={"content-type": kind},
            timeout=30,
        )
        watcher.join()
        assert response.status_code == 200, response.text
        assert eventually(lambda: spool_descriptors() == before)  # freed when it ended
    assert during == [before + 1]  # the spool, on disk, while the model had not come
    [seen] = fake.seen
    assert seen.complete and [p.name for p in seen.parts] == ["model", "file"]
    assert seen.part("file").sha256 == digest


# -- openai-python and the echo model -------------------------------------------------------


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def test_openai_transcriptions_and_translations_through_echo() -> None:
    with run_server(create_app(echo_settings())) as url:
        client = client_for(url)
        text = "the quick brown fox"
        result = client.audio.transcriptions.create(model="echo", file=("a.txt", text.encode()))
        assert result.text == text
        assert result.usage is not None and result.usage.output_tokens == 4  # type: ignore[union-attr]
        # openai-python marks translations deprecated (a warning: an error here): requests.
        translated = requests.post(
            f"{url}/v1/audio/translations",
            data={"model": "echo", "response_format": "verbose_json"},
            files={"file": ("a.txt", b"hola")},
            timeout=10,
        ).json()
        assert (translated["text"], translated["task"]) == ("hola", "translate")
        other = client.audio.transcriptions.create(model="echo", file=("a.mp3", AUDIO))
        assert other.text == f"[{len(AUDIO)} bytes of audio/mpeg: a.mp3]"
        verbose = client.audio.transcriptions.create(
            model="echo", file=("a.txt", b"one two"), response_format="verbose_json"
        )
        assert verbose.text == "one two" and verbose.duration == 1.0


def test_openai_transcription_stream_arrives_event_by_event() -> None:
    text = "one two three four five six"
    settings = echo_settings(echo={"delay_ms": 100})
    with run_server(create_app(settings)) as url:
        started, times, events = transcript_arrivals(url, text)
    assert [e.type for e in events] == ["transcript.text.delta"] * 6 + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == text  # type: ignore[union-attr]
    assert events[-1].text == text  # type: ignore[union-attr]
    assert_true_streaming(times, started, 0.1)


def test_negative_control_a_buffering_hop_fails_the_transcript_check() -> None:
    settings = echo_settings(echo={"delay_ms": 100})
    with run_server(BufferingWrapper(create_app(settings))) as url:
        started, times, _ = transcript_arrivals(url, "one two three four five six")
    with pytest.raises(AssertionError, match="buffered"):
        assert_true_streaming(times, started, 0.1)


def transcript_arrivals(url: str, text: str) -> tuple[float, list[float], list[Any]]:
    client = client_for(url)
    started = time.monotonic()
    events, times = [], []
    for event in client.audio.transcriptions.create(
        model="echo", file=("speech.txt", text.encode()), stream=True
    ):
        events.append(event)
        if event.type == "transcript.text.delta":
            times.append(time.monotonic())
    return started, times, events


@pytest.mark.parametrize(
    ("style", "content_type", "expected"),
    [
        ("text", "text/plain; charset=utf-8", "hello world"),
        ("srt", "text/plain; charset=utf-8", "1\n00:00:00,000 --> 00:00:01,000\nhello world\n"),
        (
            "vtt",
            "text/vtt; charset=utf-8",
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhello world\n",
        ),
    ],
)
def test_text_formats_pass_through_with_their_content_type(
    style: str, content_type: str, expected: str
) -> None:
    with run_server(create_app(echo_settings())) as url:
        response = requests.post(
            f"{url}{TRANSCRIBE}",
            data={"model": "echo", "response_format": style},
            files={"file": ("a.txt", b"hello world")},
            timeout=10,
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.text == expected


def test_openai_files_end_to_end_through_echo() -> None:
    app = create_app(echo_settings())
    data = os.urandom(200_000)
    with run_server(app) as url:
        client = client_for(url)
        created = client.files.create(file=("batch.jsonl", data), purpose="batch")
        assert (created.bytes, created.filename, created.purpose) == (
            len(data),
            "batch.jsonl",
            "batch",
        )
        other = client.files.create(file=("b.txt", b"b"), purpose="user_data")
        assert [f.id for f in client.files.list()] == [other.id, created.id]  # newest first
        assert [f.id for f in client.files.list(purpose="batch")] == [created.id]
        assert client.files.retrieve(created.id).bytes == len(data)
        assert client.files.content(created.id).content == data
        assert client.files.delete(created.id).deleted
        with pytest.raises(openai.NotFoundError, match="No such File object"):
            client.files.retrieve(created.id)
        store = app.state.services.upstreams["echo"].files
        assert store.directory is not None and store.directory.exists()
        directory = store.directory
    assert not directory.exists()  # removed at shutdown


def test_echo_file_store_is_bounded() -> None:
    from proxy.upstreams.echo.store import FileStore

    store = FileStore(max_files=2, max_bytes=10)

    def add(data: bytes) -> str:
        writer = store.writer("f")
        writer.write(data)
        return str(store.add(writer, "batch")["id"])

    first, second = add(b"1234"), add(b"5678")
    third = add(b"9")  # the third file: the oldest makes room
    assert [e["id"] for e in store.list(None, 10, "asc", None)["data"]] == [second, third]
    fourth = add(b"abcdefghij")  # 10 bytes: room only once both are dropped
    assert [e["id"] for e in store.list(None, 10, "asc", None)["data"]] == [fourth]
    writer = store.writer("too big")
    with pytest.raises(Exception, match="at most 10 bytes"):
        writer.write(b"x" * 11)
    assert not writer.path.exists()
    assert sorted(p.name for p in store.directory.iterdir()) == [fourth]  # type: ignore[union-attr]
    store.close()
    assert first not in str(store.list(None, 10, "asc", None))


# -- files through an HTTP upstream ----------------------------------------------------------


async def files_answer(seen: Seen) -> Answer:
    if seen.path.endswith("/content"):
        return Answer(content_type="application/octet-stream", body=CONTENT)
    return Answer(body=json.dumps({"method": seen.method, "path": seen.path}).encode())


CONTENT = os.urandom(3 * 1024 * 1024)


def test_files_go_to_the_first_models_upstream_as_they_came() -> None:
    with through(UploadUpstream(files_answer)) as (url, fake):
        listed = requests.get(f"{url}/v1/files?purpose=batch&limit=2", timeout=10).json()
        assert listed == {"method": "GET", "path": "/v1/files?purpose=batch&limit=2"}
        assert (
            requests.get(f"{url}/v1/files/file-a%20b", timeout=10).json()["path"]
            == "/v1/files/file-a%20b"
        )
        assert requests.delete(f"{url}/files/file-1", timeout=10).json() == {  # no /v1 prefix too
            "method": "DELETE",
            "path": "/v1/files/file-1",
        }
        content = requests.get(f"{url}/v1/files/file-1/content", timeout=10)
        assert content.headers["content-type"] == "application/octet-stream"
        assert content.content == CONTENT
        created = requests.post(
            f"{url}/v1/files",
            data={"purpose": "batch", "model": "not routed"},
            files={"file": ("x.jsonl", b"{}")},
            timeout=10,
        )
        assert created.json() == {"method": "POST", "path": "/v1/files"}
        assert requests.head(f"{url}/v1/files/file-1/content", timeout=10).status_code == 405
    upload = fake.seen[-1]
    assert upload.email_parts() == [
        ("purpose", None, b"batch"),
        ("model", None, b"not routed"),  # a files form is passed on as it came
        ("file", "x.jsonl", b"{}"),
    ]


def test_files_upstream_names_another_upstream() -> None:
    with serve_uploads(UploadUpstream(files_answer)) as files, serve_uploads() as audio:
        settings = Settings(
            upstreams={
                "audio": {"type": "openai", "base_url": audio.url, "apis": ["audio"]},
                "files": {"type": "openai", "base_url": files.url, "apis": ["files"]},
            },
            models={"m": {"upstream": "audio"}},
            files_upstream="files",
        )
        with run_server(create_app(settings)) as url:
            assert httpx.get(f"{url}/v1/files").json()["path"] == "/v1/files"
            response = requests.post(
                f"{url}{TRANSCRIBE}", data={"model": "m"}, files={"file": ("a", b"x")}, timeout=10
            )
            assert response.status_code == 200
        assert [s.path for s in files.seen] == ["/v1/files"]
        assert [s.path for s in audio.seen] == [TRANSCRIBE]
    with pytest.raises(ValueError, match="files_upstream: unknown upstream 'nope'"):
        Settings(files_upstream="nope")


def test_an_upstream_without_the_api_is_not_asked() -> None:
    with through(up={"apis": ["chat"]}) as (url, fake):
        response = requests.post(
            f"{url}{TRANSCRIBE}", data={"model": "m"}, files={"file": ("a", b"x")}, timeout=10
        )
        assert response.status_code == 400
        assert "does not serve the audio API" in response.json()["error"]["message"]
        assert requests.get(f"{url}/v1/files", timeout=10).status_code == 400
    assert fake.seen == []


def test_openapi_documents_the_multipart_endpoints() -> None:
    with run_server(create_app(echo_settings())) as url:
        paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    upload = paths[TRANSCRIBE]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["file", "model"]
    assert set(paths["/v1/files"]) == {"get", "post"}
    assert set(paths["/v1/files/{file_id}"]) == {"get", "delete"}
    assert "get" in paths["/v1/files/{file_id}/content"]
