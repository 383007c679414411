"""Uploads at and past their limits, over real sockets: 413 while uploading, 400 for bad
multipart, 408 for a client that stalls, a client that abandons its upload halfway, the key
checked before a byte is read, the retry policy, an upstream that stops reading, streamed
transcripts that break, and the metrics and access log of uploads."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
import requests

from proxy import create_app
from proxy.settings import Settings
from tests.helpers import eventually, free_port, proxy_for, run_server, upstream_settings
from tests.test_forms import form, spool_descriptors
from tests.test_observability import scrape
from tests.test_uploads import (
    TRANSCRIBE,
    big_form,
    client_for,
    files_answer,
    through,
)
from tests.upload_upstream import Answer, Seen, UploadUpstream, default_answer, serve_uploads

MiB = 1024 * 1024
KIND = "multipart/form-data; boundary=xYzZy"
MODEL_PART = b'--xYzZy\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
FILE_HEAD = b'--xYzZy\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n\r\n'


class RawClient:
    """A client on a plain socket: it sends what it is told, when it is told."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.sent = 0

    def head(self, path: str, headers: dict[str, str]) -> None:
        lines = [f"POST {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes, chunked: bool = False) -> None:
        self.sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
        self.sent += len(data)

    def answered(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def response(self, timeout: float = 10) -> tuple[int, dict[str, Any]]:
        """The status and JSON body of the answer (Content-Length or chunked)."""
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        if "content-length" in headers:
            while len(body) < int(headers["content-length"]):
                body += self._recv()
        else:
            while not body.endswith(b"0\r\n\r\n"):
                body += self._recv()
            body = _unchunk(body)
        return int(lines[0].split()[1]), json.loads(body)

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        return data

    def close(self) -> None:
        self.sock.close()


def _unchunk(body: bytes) -> bytes:
    out = b""
    while True:
        size, rest = body.split(b"\r\n", 1)
        if int(size, 16) == 0:
            return out
        out, body = out + rest[: int(size, 16)], rest[int(size, 16) + 2 :]


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    with through(max_upload_bytes=MiB) as (url, fake):
        client = RawClient(url)
        client.head(TRANSCRIBE, {"content-type": KIND, "content-length": str(MiB + 1)})
        status, body = client.response()
        client.close()
    assert status == 413 and body["error"]["code"] == "request_too_large"
    assert fake.seen == []


def test_413_as_soon_as_the_limit_is_crossed_and_the_upstream_request_aborted() -> None:
    """Model first, then a file sent chunked with no end in sight: the 413 arrives while the
    client is still sending, shortly after the limit, and the upstream request (already
    streaming) is cut off."""
    limit = 4 * MiB
    with through(max_upload_bytes=limit) as (url, fake):
        client = RawClient(url)
        client.head(TRANSCRIBE, {"content-type": KIND, "transfer-encoding": "chunked"})
        client.send(MODEL_PART + FILE_HEAD, chunked=True)
        block = b"\xab" * 65536
        while not client.answered() and client.sent < 64 * MiB:
            client.send(block, chunked=True)
        status, body = client.response()
        client.close()
        assert eventually(lambda: bool(fake.seen) and fake.seen[0].done.is_set())
    assert status == 413, body
    assert body["error"] == {
        "message": f"The upload is larger than the limit of {limit} bytes (max_upload_bytes).",
        "type": "invalid_request_error",
        "param": "file",
        "code": "request_too_large",
    }
    assert client.sent < limit + 16 * MiB  # answered while sending, not after 64 MiB
    [seen] = fake.seen
    assert seen.closed and not seen.complete and seen.received < limit


def test_413_while_spooling_sends_nothing_upstream_and_frees_the_spool() -> None:
    body, kind, _ = big_form(5 * MiB, model_first=False)
    before = spool_descriptors()
    with through(max_upload_bytes=2 * MiB) as (url, fake):
        response = requests.post(
            f"{url}{TRANSCRIBE}", data=iter([body]), headers={"content-type": kind}, timeout=30
        )
        assert response.status_code == 413
        assert eventually(lambda: spool_descriptors() == before)
    assert fake.seen == []


GOOD = form(("model", None, None, b"m"), ("file", "a.txt", None, b"x"))


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        ("multipart/form-data", GOOD, 400, "has no boundary"),
        (
            "application/json",
            b'{"model": "m"}',
            400,
            "must be multipart/form-data, not application/json",
        ),
        (None, GOOD, 400, "must be multipart/form-data, not none"),
        (KIND, b"this is not multipart", 400, "The multipart body is malformed"),
        (KIND, GOOD.replace(b"\r\n\r\nm", b"\r\nm"), 400, "malformed"),
        (KIND, GOOD[:-12], 400, "ended before its closing boundary"),
        (
            KIND,
            b"--xYzZy\r\nContent-Type: text/plain\r\n\r\nm\r\n--xYzZy--\r\n",
            400,
            "has no Content-Disposition",
        ),
        (KIND, form(("model", None, None, b"m")), 400, "Missing required parameter: 'file'"),
        (KIND, form(("file", "a", None, b"x")), 400, "Missing required parameter: 'model'"),
        (
            KIND,
            form(
                ("model", None, None, b"m"), ("model", None, None, b"m"), ("file", "a", None, b"x")
            ),
            400,
            "more than one 'model'",
        ),
        (
            KIND,
            form(("model", None, None, b"nope"), ("file", "a", None, b"x")),
            404,
            "The model `nope` does not exist",
        ),
    ],
)
def test_bad_uploads_get_an_error_naming_the_problem(
    content_type: str | None, body: bytes, status: int, message: str
) -> None:
    with through() as (url, fake):
        headers = {"content-type": content_type} if content_type else {}
        response = requests.post(f"{url}{TRANSCRIBE}", data=body, headers=headers, timeout=10)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert message in error["message"]
        assert error["type"] == "invalid_request_error"
        assert fake.seen == []  # refused before anything went upstream
        ok = requests.post(
            f"{url}{TRANSCRIBE}", data=GOOD, headers={"content-type": KIND}, timeout=10
        )
        assert ok.status_code == 200  # and the server goes on serving


def test_a_late_stream_field_after_a_large_file_is_a_400_and_aborts_the_upstream() -> None:
    data = b"\x01" * (3 * MiB)
    body = form(
        ("model", None, None, b"m"), ("file", "a", None, data), ("stream", None, None, b"true")
    )
    with through() as (url, fake):
        response = requests.post(
            f"{url}{TRANSCRIBE}", data=body, headers={"content-type": KIND}, timeout=10
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "stream"
        assert eventually(lambda: fake.seen[0].done.is_set())
    assert fake.seen[0].closed and not fake.seen[0].complete


@pytest.mark.parametrize("sent", [MODEL_PART[:20], MODEL_PART + FILE_HEAD + b"\x00" * (2 * MiB)])
def test_a_client_that_stalls_mid_upload_gets_408(sent: bytes) -> None:
    """Before anything went upstream, and once the upload streams (then the upstream request
    is aborted too)."""
    with through(body_timeout_seconds=0.5) as (url, fake):
        client = RawClient(url)
        client.head(TRANSCRIBE, {"content-type": KIND, "content-length": str(10 * MiB)})
        client.send(sent)
        started = time.monotonic()
        status, body = client.response()
        waited = time.monotonic() - started
        client.close()
        assert eventually(lambda: all(seen.done.is_set() for seen in fake.seen))
    assert status == 408 and body["error"]["code"] == "body_timeout", body
    assert "stalled" in body["error"]["message"]
    assert 0.3 < waited < 5
    assert all(seen.closed and not seen.complete for seen in fake.seen)
    assert len(fake.seen) == (1 if len(sent) > MiB else 0)


@pytest.mark.parametrize("model_first", [True, False])
def test_an_upload_abandoned_halfway_aborts_the_upstream_request_and_frees_the_spool(
    model_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body, kind, _ = big_form(6 * MiB, model_first=model_first)
    before = spool_descriptors()
    with through() as (url, fake):
        client = RawClient(url)
        client.head(TRANSCRIBE, {"content-type": kind, "content-length": str(len(body))})
        client.send(body[: len(body) // 2])
        time.sleep(0.3)
        client.close()  # gone halfway
        assert eventually(lambda: spool_descriptors() == before)
        if model_first:  # the upload was streaming: the upstream sees its connection close
            assert eventually(lambda: bool(fake.seen) and fake.seen[0].done.is_set(), 2)
            assert fake.seen[0].closed and not fake.seen[0].complete
        else:  # still spooling, waiting for its model: nothing went upstream
            assert fake.seen == []
        assert eventually(lambda: any(r.name == "proxy.access" for r in caplog.records))
    [record] = [r for r in caplog.records if r.name == "proxy.access"]
    assert record.fields["outcome"] == "client_disconnect"  # type: ignore[attr-defined]


def test_the_key_is_checked_before_a_byte_is_read() -> None:
    with through(api_keys=["sk-proxy-uploads-1"]) as (url, fake):
        refused = requests.post(
            f"{url}{TRANSCRIBE}", data=GOOD, headers={"content-type": KIND}, timeout=10
        )
        assert refused.status_code == 401
        assert fake.seen == []
        headers = {"content-type": KIND, "authorization": "Bearer sk-proxy-uploads-1"}
        assert requests.post(f"{url}{TRANSCRIBE}", data=GOOD, headers=headers, timeout=10).ok
        assert requests.get(f"{url}/v1/files", timeout=10).status_code == 401


def test_draining_refuses_new_uploads() -> None:
    with serve_uploads() as fake:
        app = create_app(upstream_settings(fake.url))
        with run_server(app) as url:
            app.state.services.drain.draining = True
            response = requests.post(
                f"{url}{TRANSCRIBE}", data=GOOD, headers={"content-type": KIND}, timeout=10
            )
            assert (
                response.status_code == 503 and response.json()["error"]["code"] == "shutting_down"
            )
        assert fake.seen == []


def failing_first(status: int = 500) -> UploadUpstream:
    """An upstream answering ``status`` to its first request, then the default answer."""

    async def answer(seen: Seen) -> Answer:
        if len(upstream.seen) == 1:
            return Answer(status=status, body=b'{"error": {"message": "try again"}}')
        return Answer(body=b'{"text": "ok"}')

    upstream = UploadUpstream(answer)
    return upstream


def test_a_small_upload_is_retried_like_chat() -> None:
    with through(failing_first(), routing={"backoff_seconds": 0}) as (url, fake):
        response = requests.post(
            f"{url}{TRANSCRIBE}", data=GOOD, headers={"content-type": KIND}, timeout=10
        )
        assert response.status_code == 200 and response.json() == {"text": "ok"}
        assert response.headers["x-proxy-attempts"] == "2"
    first, second = fake.seen
    assert first.complete and second.complete
    assert first.email_parts() == second.email_parts()  # the same form, sent again


def test_a_large_upload_is_not_retried_once_its_bytes_are_spent() -> None:
    body, kind, _ = big_form(3 * MiB)
    with through(failing_first(), routing={"backoff_seconds": 0}) as (url, fake):
        response = requests.post(
            f"{url}{TRANSCRIBE}", data=body, headers={"content-type": kind}, timeout=10
        )
        assert response.status_code == 500
        assert response.json()["error"]["message"] == "try again"
    assert len(fake.seen) == 1


def test_a_large_upload_falls_over_when_the_first_upstream_cannot_be_reached() -> None:
    """A failure before any byte read live was sent (here: the connection refused) can still
    go elsewhere."""
    body, kind, digest = big_form(3 * MiB)
    with serve_uploads() as fake:
        settings = Settings(
            upstreams={
                "dead": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
                "up": {"type": "openai", "base_url": fake.url},
            },
            models={"m": {"upstream": "dead", "fallbacks": ["m2"]}, "m2": {"upstream": "up"}},
            routing={"retries": 0},
        )
        with run_server(create_app(settings)) as url:
            response = requests.post(
                f"{url}{TRANSCRIBE}", data=body, headers={"content-type": kind}, timeout=10
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-proxy-model"] == "m2"
    [seen] = fake.seen
    assert seen.complete and seen.part("model").value == b"m2"
    assert seen.part("file").sha256 == digest


def test_an_upstream_that_stops_reading_the_upload_gets_504() -> None:
    body, kind, _ = big_form(64 * MiB)  # more than the sockets between us can buffer
    up = {"timeouts": {"write": 0.5}}
    with through(UploadUpstream(stall_after=MiB), up=up, routing={"retries": 0}) as (url, _):
        started = time.monotonic()
        response = requests.post(
            f"{url}{TRANSCRIBE}", data=body, headers={"content-type": kind}, timeout=30
        )
        assert time.monotonic() - started < 20
    assert response.status_code == 504
    assert "stopped taking the upload for more than 0.5 s" in response.json()["error"]["message"]


def sse(*events: dict[str, Any]) -> list[bytes]:
    return [b"data: " + json.dumps(event).encode() + b"\n\n" for event in events]


DELTAS = [{"type": "transcript.text.delta", "delta": word} for word in ("one", " two", " three")]
DONE = {
    "type": "transcript.text.done",
    "text": "one two three",
    "usage": {"type": "tokens", "input_tokens": 5, "output_tokens": 3, "total_tokens": 8},
}


@pytest.mark.parametrize(
    ("answer", "ending"),
    [
        (Answer(events=sse(*DELTAS, DONE), pause=0.05), "complete"),
        (Answer(events=[*sse(*DELTAS, DONE), b"data: [DONE]\n\n"]), "complete"),
        (Answer(body=json.dumps({"text": "one two three"}).encode()), "complete"),
        (Answer(events=sse(*DELTAS)), "upstream_truncated"),
    ],
)
def test_an_upstreams_streamed_transcript_comes_back_event_by_event(
    answer: Answer, ending: str
) -> None:
    async def reply(seen: Seen) -> Answer:
        assert seen.fields["stream"] == "true"
        return answer

    with through(UploadUpstream(reply), routing={"retries": 0}) as (url, _):
        client = client_for(url)
        events: list[Any] = []
        stream = client.audio.transcriptions.create(model="m", file=("a.wav", b"RIFF"), stream=True)
        if ending == "complete":
            events = list(stream)
            assert events[-1].type == "transcript.text.done" and events[-1].text == "one two three"
            assert "".join(e.delta for e in events[:-1]) == "one two three"
        else:
            with pytest.raises(
                openai.APIError, match=r"ended before its 'transcript\.text\.done' event"
            ):
                events.extend(stream)
            assert [e.delta for e in events] == ["one", " two", " three"]


def test_uploads_have_chats_metrics_and_access_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    usage = {"type": "tokens", "input_tokens": 5, "output_tokens": 7, "total_tokens": 12}

    async def reply(seen: Seen) -> Answer:
        return Answer(body=json.dumps({"text": "hi", "usage": usage}).encode())

    with through(UploadUpstream(reply)) as (url, _):
        assert requests.post(
            f"{url}{TRANSCRIBE}", data=GOOD, headers={"content-type": KIND}, timeout=10
        ).ok
        assert eventually(lambda: any(r.name == "proxy.access" for r in caplog.records))
        samples = scrape(url)
    labels = (("model", "m"), ("status", "200"), ("stream", "false"), ("upstream", "up"))
    assert samples[("proxy_requests_total", labels)] == 1
    assert (
        samples[("proxy_tokens_total", (("model", "m"), ("type", "prompt"), ("upstream", "up")))]
        == 5
    )
    record = next(r for r in caplog.records if r.name == "proxy.access")  # then /metrics'
    fields = record.fields  # type: ignore[attr-defined]
    assert (fields["path"], fields["model"], fields["upstream"], fields["outcome"]) == (
        TRANSCRIBE,
        "m",
        "up",
        "complete",
    )
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == (5, 7)


def test_a_download_that_breaks_upstream_reaches_the_client_as_a_truncated_response() -> None:
    """A file's content is passed on as it arrives: when the upstream breaks after 1 MB of
    3 MB, the client's response is cut off (never a complete-looking one), the server logs a
    warning and no ERROR, and goes on serving."""

    async def handler(request: Any, reply: Any) -> None:
        headers = {"content-type": "application/octet-stream", "content-length": str(3 * MiB)}
        await reply.start(200, headers, chunked=False)
        reply.writer.write(b"x" * MiB)
        await reply.writer.drain()
        await asyncio.sleep(0.2)
        reply.reset()

    errors: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.ERROR)
    catcher.emit = errors.append  # type: ignore[method-assign]
    with proxy_for(handler) as (url, _):
        logging.getLogger("uvicorn.error").addHandler(catcher)  # after uvicorn configured it
        try:
            with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
                requests.get(f"{url}/v1/files/file-1/content", timeout=10)
            assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        finally:
            logging.getLogger("uvicorn.error").removeHandler(catcher)
    assert errors == []


def test_log_bodies_logs_an_uploads_fields_not_its_files(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = form(
        ("model", None, None, b"m"),
        ("prompt", None, None, b"key sk-abcdefghijklmnopqrstuvwx"),
        ("file", "secret.wav", None, b"the file's bytes"),
    )
    with through(log_bodies=True) as (url, _):
        response = requests.post(
            f"{url}{TRANSCRIBE}", data=body, headers={"content-type": KIND}, timeout=10
        )
        assert response.ok
    [record] = [r for r in caplog.records if r.name == "proxy.bodies"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["files"] == ["file"]
    assert "'model': 'm'" in fields["form"] and "sk-abcdefghijklmnopqrstuvwx" not in fields["form"]
    assert "the file's bytes" not in str(fields)


async def refuse(seen: Seen) -> Answer:
    return Answer(status=500, body=b'{"error": {"message": "no"}}')


@pytest.mark.parametrize(
    ("ending", "status"),
    [("complete", 200), ("stall", 408), ("broken", 400), ("upstream 500", 500), ("too large", 413)],
)
def test_the_spool_is_freed_on_every_way_a_request_ends(ending: str, status: int) -> None:
    """A file sent before its model (3 MiB: on disk), then the request ends one way or another:
    the temporary file is gone each time."""
    data = b"\x07" * (3 * MiB)
    head = FILE_HEAD + data + b"\r\n"
    tail = {"stall": b"", "broken": b"--xYzZy\r\nGarbage\r\n\r\n"}.get(
        ending, MODEL_PART + b"--xYzZy--\r\n"
    )
    upstream = UploadUpstream(refuse if ending == "upstream 500" else default_answer)
    settings: dict[str, Any] = {"body_timeout_seconds": 0.5, "routing": {"retries": 0}}
    if ending == "too large":
        settings["max_upload_bytes"] = 3 * MiB
    before = spool_descriptors()
    with through(upstream, **settings) as (url, _):
        client = RawClient(url)
        client.head(TRANSCRIBE, {"content-type": KIND, "transfer-encoding": "chunked"})
        client.send(head, chunked=True)
        if tail:
            client.send(tail, chunked=True)
            client.sock.sendall(b"0\r\n\r\n")
        assert client.response()[0] == status
        client.close()
        assert eventually(lambda: spool_descriptors() == before)


TEAM = "sk-uploads-team-0123456789"
OTHER = "sk-uploads-other-0123456789"
SOLO = "sk-uploads-solo-0123456789"


def test_keys_allowlists_and_limits_hold_for_uploads_and_files() -> None:
    """Per-key admission, once the form's model is known and before the upstream is asked: the
    allowlist (403, not counted, nothing sent), rpm and tpm (429 with ``Retry-After``; an upload
    reserves 1024 tokens), the ``x-ratelimit-*`` headers on the answer; ``/v1/files`` counted
    too, refused to a key that may use no model on the files upstream; and every ticket
    settled (a ``max_parallel: 1`` key uploads again and again)."""
    with serve_uploads(UploadUpstream(files_answer)) as fake:
        config = Settings(
            upstreams={"up": {"type": "openai", "base_url": fake.url}, "echo": {"type": "echo"}},
            models={"m": {"upstream": "up"}, "n": {"upstream": "up"}, "e": {"upstream": "echo"}},
            keys=[
                {"name": "team", "key": TEAM, "models": ["m"], "rpm": 3, "tpm": 100000},
                {"name": "other", "key": OTHER, "models": ["e"]},
                {"name": "solo", "key": SOLO, "max_parallel": 1},
            ],
        )

        def upload(key: str, model: str) -> requests.Response:
            body = form(("model", None, None, model.encode()), ("file", "a.txt", None, b"x"))
            headers = {"content-type": KIND, "authorization": f"Bearer {key}"}
            return requests.post(f"{url}{TRANSCRIBE}", data=body, headers=headers, timeout=10)

        def files(key: str) -> requests.Response:
            headers = {"authorization": f"Bearer {key}"}
            return requests.get(f"{url}/v1/files", headers=headers, timeout=10)

        with run_server(create_app(config)) as url:
            refused = upload(TEAM, "n")
            assert refused.status_code == 403, refused.text
            assert "may not use the model `n`" in refused.json()["error"]["message"]
            assert fake.seen == []  # not sent, and not counted (below: 3 admitted of rpm 3)
            first = upload(TEAM, "m")
            assert first.status_code == 200, first.text
            assert first.headers["x-ratelimit-remaining-requests"] == "2"
            assert first.headers["x-ratelimit-remaining-tokens"] == str(100000 - 1024)
            listed = files(TEAM)
            assert listed.status_code == 200 and listed.json()["path"] == "/v1/files"
            assert listed.headers["x-ratelimit-remaining-requests"] == "1"
            assert upload(TEAM, "m").status_code == 200
            over = upload(TEAM, "m")
            assert over.status_code == 429, over.text
            assert over.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(over.headers["retry-after"]) >= 1
            assert len(fake.seen) == 3
            assert files(TEAM).status_code == 429

            denied = files(OTHER)  # "e" is not served by the files upstream
            assert denied.status_code == 403
            assert "may not use /v1/files" in denied.json()["error"]["message"]
            assert upload(OTHER, "m").status_code == 403
            assert len(fake.seen) == 3

            for _ in range(3):  # each ticket is settled, or the second would be a 429
                assert upload(SOLO, "m").status_code == 200
                assert files(SOLO).status_code == 200
            assert upload("sk-nobody-0123456789", "m").status_code == 401
        assert len(fake.seen) == 9


def test_a_shutdown_mid_upload_ends_it_with_503_and_frees_the_spool() -> None:
    """A file before the model (spooled), the model, then a second file streaming live when the
    shutdown's grace runs out: the upload ends with 503 ``shutting_down``, the upstream request
    is aborted, the spool freed."""
    before = spool_descriptors()
    with serve_uploads() as fake:
        app = create_app(upstream_settings(fake.url))
        drain = app.state.services.drain
        with run_server(app) as url:
            client = RawClient(url)
            client.head(TRANSCRIBE, {"content-type": KIND, "transfer-encoding": "chunked"})
            client.send(FILE_HEAD + b"\x01" * (3 * MiB) + b"\r\n" + MODEL_PART, chunked=True)
            client.send(FILE_HEAD.replace(b'"file"', b'"more"') + b"\x02" * MiB, chunked=True)
            assert eventually(lambda: bool(drain._active))  # the request, tracked
            assert spool_descriptors() == before + 1
            # The upstream request under way (the model part went through admission first).
            assert eventually(lambda: bool(fake.seen))
            watchdog = next(iter(drain._active))
            watchdog._loop.call_soon_threadsafe(drain.expire)  # the grace is over, now
            status, body = client.response()
            client.close()
            assert (status, body["error"]["code"]) == (503, "shutting_down")
            assert eventually(lambda: spool_descriptors() == before)
            assert eventually(lambda: fake.seen[0].done.is_set())
    assert fake.seen[0].closed and not fake.seen[0].complete
