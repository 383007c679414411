"""Attacks on the seams between keys and limits, routing, uploads and files, Anthropic Messages
and Responses, over real sockets: each test was written to fail on the code before its fix.

- an upstream header with a byte that is not UTF-8 (a 429's ``Retry-After``, a download's
  ``Content-Disposition``) was a 500 with a traceback;
- a file id of ``..`` or ``.`` reached the upstream's ``<base_url>/`` and
  ``<base_url>/content`` (``DELETE`` too) with the proxy's upstream key;
- a downloaded JSON file with a ``usage`` field was charged to the key's ``tpm`` as if it were
  an answer's usage (any key may download a file another key uploaded);
- ``/v1/messages/count_tokens`` refused by a limit was not counted in
  ``proxy_rate_limited_total`` nor marked ``limited`` in the access line;
- embeddings and token counts, which generate nothing, reserved the 1024 answer tokens of a
  request without ``max_tokens`` (which embeddings cannot send): a key with ``tpm: 3000`` got
  429s on its third concurrent small embedding;
- JSON nested deeper than orjson writes (255 levels; it reads 1,024), from a client (a Messages
  tool input, a token count's tools, a Responses request to the echo model) or from an upstream
  (a chat answer or chunk), was a 500 with a traceback; and a token count's ``tools`` that is
  not an array (a number) too;
- a path with an encoded line break wrote a forged line into the text access log;
- openai-python with a base URL without ``/v1`` (served for every API) got 404 for
  ``models.list()``, and ``models.retrieve()`` was a 404 for every model;

and, as regressions, what held already: a key on every route the app serves (every method,
with and without ``/v1``, under ``root_path``), and a ``max_parallel: 1`` key's slot freed on
every way a request of each API ends, and ``tpm`` charged what the upstream reported in each
API's own usage shape (Messages with its cache counts, Responses, a transcription).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
import requests

from proxy import Settings, create_app
from proxy.observability.logs import JSONFormatter, TextFormatter
from tests.anthropic_fakes import frame, native_events, native_message
from tests.fake_upstream import Handler, Recorded, Reply, serve_fake
from tests.helpers import echo_settings, eventually, run_server, upstream_settings
from tests.test_uploads import files_answer
from tests.upload_upstream import Answer, Seen, UploadUpstream, serve_uploads

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
KEY = "sk-seams-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}


def raw_answer(head: bytes, body: bytes) -> Handler:
    """An upstream that writes exactly ``head`` (status line and headers) and ``body``."""

    async def handler(request: Recorded, reply: Reply) -> None:
        reply.writer.write(head + b"\r\n\r\n" + body)
        await reply.writer.drain()

    return handler


# --- an upstream's header bytes ------------------------------------------------------------


def test_a_retry_after_that_is_not_utf8_is_passed_on_not_a_500() -> None:
    """aiohttp decodes a header's non-UTF-8 bytes as surrogates; encoding them strictly for the
    client raised, and the client got a 500 instead of the upstream's 429."""
    body = b'{"error": {"message": "slow down", "type": "rate_limit"}}'
    head = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\nretry-after: 1\xff" % len(body)
    with (
        serve_fake(raw_answer(head, body)) as fake,
        run_server(create_app(upstream_settings(fake.url, routing={"retries": 0}))) as url,
    ):
        for path, extra in (("/v1/chat/completions", {}), ("/v1/messages", {"max_tokens": 5})):
            answer = requests.post(f"{url}{path}", json={**CHAT, **extra}, timeout=10)
            assert answer.status_code == 429, answer.text
            assert "slow down" in answer.text
            assert answer.headers["retry-after"].encode("latin-1") == b"1\xff"  # as it came


def test_a_download_whose_headers_are_not_utf8_is_passed_on_as_it_came() -> None:
    content = b"file bytes"
    disposition = b'attachment; filename="r\xe9sum\xe9.txt"'  # Latin-1, as some servers send
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
    head += b"content-length: %d\r\ncontent-disposition: %s" % (len(content), disposition)
    with (
        serve_fake(raw_answer(head, content)) as fake,
        run_server(create_app(upstream_settings(fake.url))) as url,
    ):
        answer = requests.get(f"{url}/v1/files/file-1/content", timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.content == content
        assert answer.headers["content-disposition"].encode("latin-1") == disposition


# --- file ids ------------------------------------------------------------------------------


def raw_request(url: str, method: str, target: str) -> tuple[int, bytes]:
    """``method target`` sent as written (HTTP clients remove dot segments themselves)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_file_id_of_dots_never_leaves_the_files_path_upstream() -> None:
    with (
        serve_uploads(UploadUpstream(files_answer)) as fake,
        run_server(create_app(upstream_settings(fake.url))) as url,
    ):
        for method, target in [
            ("GET", "/v1/files/.."),
            ("DELETE", "/v1/files/.."),
            ("GET", "/v1/files/%2e%2e"),
            ("GET", "/v1/files/../content"),
            ("GET", "/v1/files/%2E%2E/content"),
            ("DELETE", "/v1/files/."),
            ("GET", "/files/%2e/content"),
        ]:
            status, body = raw_request(url, method, target)
            assert status == 400, (method, target, status, body)
            assert b"invalid_value" in body
        assert fake.seen == []
        status, _ = raw_request(url, "GET", "/v1/files/file-..x")  # dots inside an id are fine
        assert status == 200
        assert [seen.path for seen in fake.seen] == ["/v1/files/file-..x"]


# --- what is charged to a key ----------------------------------------------------------------


def test_a_downloaded_files_content_is_not_charged_as_usage() -> None:
    """Only a transcription's JSON answer carries usage; a file's content is data."""
    usage = {"prompt_tokens": 90000, "completion_tokens": 0, "total_tokens": 90000}

    async def answer(seen: Seen) -> Answer:
        return Answer(body=json.dumps({"text": "t", "usage": usage}).encode())

    with serve_uploads(UploadUpstream(answer)) as fake:
        config = upstream_settings(fake.url, keys=[{"name": "k", "key": KEY, "tpm": 100000}])
        with run_server(create_app(config)) as url:
            for _ in range(2):
                got = requests.get(f"{url}/v1/files/file-1/content", headers=AUTH, timeout=10)
                assert got.status_code == 200 and got.json()["usage"] == usage
                assert requests.get(f"{url}/v1/files/file-1", headers=AUTH, timeout=10).ok
            listed = requests.get(f"{url}/v1/files", headers=AUTH, timeout=10)
            # four file requests: one token each, settled as it was reserved
            assert listed.headers["x-ratelimit-remaining-tokens"] == str(100000 - 5)
            # a transcription's usage is charged: 90000, then the next request sees it
            form = {"file": ("a.wav", b"RIFF")}
            heard = requests.post(
                f"{url}/v1/audio/transcriptions", data={"model": "m"}, files=form, headers=AUTH
            )
            assert heard.status_code == 200
            after = requests.get(f"{url}/v1/files", headers=AUTH, timeout=10)
            assert after.headers["x-ratelimit-remaining-tokens"] == str(100000 - 6 - 90000)


def rate_limited(url: str) -> float:
    """``proxy_rate_limited_total{key="k", reason="requests"}``."""
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith('proxy_rate_limited_total{key="k",reason="requests"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/messages"])
def test_a_limited_count_tokens_is_counted_and_logged_as_limited(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="proxy.access")
    body = {"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    config = echo_settings(keys=[{"name": "k", "key": KEY, "rpm": 1}])
    with run_server(create_app(config)) as url:
        assert requests.post(f"{url}{path}", json=body, headers=AUTH, timeout=10).ok
        refused = requests.post(f"{url}{path}", json=body, headers=AUTH, timeout=10)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"  # Anthropic's shape
        assert int(refused.headers["retry-after"]) >= 1
        assert rate_limited(url) == 1
    lines = [r.fields for r in caplog.records if r.name == "proxy.access"]  # type: ignore[attr-defined]
    assert [(line["status"], line["limited"]) for line in lines if line["path"] == path] == [
        (200, None),
        (429, "requests"),
    ]


EMBEDDING = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.5]}],
    "model": "up",
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}


def test_embeddings_and_counts_reserve_no_answer_tokens() -> None:
    """Six small embeddings in flight at once under ``tpm: 3000``: each reserves its body's
    share (about 20 tokens), not 1024 more for an answer it will never generate; then each is
    charged what the upstream reported. A token count reserves nothing and is charged nothing."""

    async def slow(request: Recorded, reply: Reply) -> None:
        await asyncio.sleep(1.0)  # all six in flight together
        await reply.json(200, EMBEDDING)

    body = {"model": "m", "input": "two words"}
    size = len(json.dumps(body, separators=(",", ":")))
    with serve_fake(slow) as fake:
        config = upstream_settings(fake.url, keys=[{"name": "k", "key": KEY, "tpm": 3000}])
        with run_server(create_app(config)) as url:
            answers: list[requests.Response] = []

            def embed() -> None:
                data = json.dumps(body, separators=(",", ":"))
                answers.append(
                    requests.post(f"{url}/v1/embeddings", data=data, headers=AUTH, timeout=10)
                )

            threads = [threading.Thread(target=embed) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(answer.status_code for answer in answers) == [200] * 6
            remaining = sorted(int(a.headers["x-ratelimit-remaining-tokens"]) for a in answers)
            assert remaining[0] == 3000 - 6 * (size // 4)  # the last admitted saw all six

            count = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            counted = requests.post(
                f"{url}/v1/messages/count_tokens", json=count, headers=AUTH, timeout=10
            )
            assert counted.status_code == 200
            # six embeddings charged 2 each; the count reserved its one token, then nothing
            assert counted.headers["x-ratelimit-remaining-tokens"] == str(3000 - 12 - 1)


# --- what held already, kept so -------------------------------------------------------------

PUBLIC = {"/", "/healthz", "/readyz", "/metrics", "/openapi.json"}


def served(routes: Any) -> Iterator[tuple[str, set[str]]]:
    """Each (path, methods) of a router, into included routers (FastAPI wraps them)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from served(included.routes)
        else:
            yield route.path, set(route.methods or ())


def test_every_route_but_the_public_ones_needs_a_key() -> None:
    """Every route of the app (enumerated, so a route added later is covered), every method it
    takes (and HEAD), as served and under ``root_path``: 401 without a key, in its API's shape;
    ``x-api-key`` works wherever ``Authorization`` does."""
    app = create_app(echo_settings(keys=[{"name": "k", "key": KEY}], root_path="/llm"))
    routes = list(served(app.router.routes))
    assert len([path for path, _ in routes if path not in PUBLIC]) >= 20
    with run_server(app) as url:
        for path, methods in routes:
            if path in PUBLIC:
                continue
            target = re.sub(r"\{[^}]+\}", "x", path)  # a file id, a model name
            heads = {"HEAD"} if "GET" in methods else set()
            for method in sorted(methods | heads):
                for prefix in ("", "/llm"):
                    answer = requests.request(method, f"{url}{prefix}{target}", timeout=10)
                    allowed = (401, 405) if method == "HEAD" else (401,)  # 405: nothing served
                    assert answer.status_code in allowed, (method, prefix + target, answer.text)
                    if method == "HEAD":
                        continue
                    error = answer.json()
                    assert error["error"]["type"] == (
                        "authentication_error" if "/messages" in path else "invalid_request_error"
                    )
                    keyed = requests.request(
                        method, f"{url}{prefix}{target}", headers={"x-api-key": KEY}, timeout=10
                    )
                    assert keyed.status_code != 401, (method, prefix + target)


MiB = 1024 * 1024
TRANSCRIBE = "/v1/audio/transcriptions"
FORM = "multipart/form-data; boundary=xYzZy"
MODEL_PART = b'--xYzZy\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
FILE_HEAD = b'--xYzZy\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'


def test_a_max_parallel_slot_is_freed_on_every_ending_of_every_api() -> None:
    """A ``max_parallel: 1`` key ends a request of each API in each way that could leak its
    slot (an upload refused with 413 or abandoned after its admission, a download or a stream
    abandoned, a token count); after each, its next request is admitted at once."""

    async def answer(seen: Seen) -> Answer:
        if seen.path.endswith("/content"):  # a download far larger than what is read of it
            return Answer(content_type="application/octet-stream", body=b"x" * (32 * MiB))
        return Answer(body=b'{"text": "ok"}')

    words = " ".join(f"w{index}" for index in range(40))

    def too_large(url: str) -> None:
        def body() -> Iterator[bytes]:  # chunked: no length to refuse it by before admission
            yield MODEL_PART + FILE_HEAD
            for _ in range(3):
                yield b"x" * MiB  # admitted once 1 MiB is held, refused past 2 MiB
            yield b"\r\n--xYzZy--\r\n"

        headers = {**AUTH, "content-type": FORM}
        answer = requests.post(f"{url}{TRANSCRIBE}", data=body(), headers=headers, timeout=10)
        assert answer.status_code == 413

    def abandoned_upload(path: str, head: bytes) -> Any:
        def act(url: str) -> None:
            parts = urlsplit(url)
            with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
                request = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                request += f"Content-Type: {FORM}\r\nContent-Length: {2 * MiB}\r\n\r\n"
                # past the 1 MiB held before sending: admitted, streaming upstream; then gone
                sock.sendall(request.encode() + head + b"x" * (MiB + MiB // 2))
                time.sleep(0.5)

        return act

    def abandoned(path: str, marker: str, **request: Any) -> Any:
        def act(url: str) -> None:
            with requests.post(
                f"{url}{path}", headers=AUTH, stream=True, timeout=10, **request
            ) as streamed:
                assert streamed.status_code == 200, streamed.text
                for line in streamed.iter_lines(decode_unicode=True):
                    if marker in line:
                        return  # gone mid-stream
            raise AssertionError(f"no {marker} in the stream")

        return act

    def download(url: str) -> None:
        target = f"{url}/v1/files/file-1/content"
        with requests.get(target, headers=AUTH, stream=True, timeout=10) as got:
            next(got.iter_content(65536))  # then gone

    def count(url: str) -> None:
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        answer = requests.post(
            f"{url}/v1/messages/count_tokens", json=body, headers=AUTH, timeout=10
        )
        assert answer.ok

    messages = {"model": "echo", "max_tokens": 99, "stream": True}
    endings = {
        "upload 413 after admission": too_large,
        "upload abandoned after admission": abandoned_upload(TRANSCRIBE, MODEL_PART + FILE_HEAD),
        "file upload abandoned": abandoned_upload("/v1/files", FILE_HEAD),
        "download abandoned": download,
        "messages stream abandoned": abandoned(
            "/v1/messages",
            "content_block_delta",
            json={**messages, "messages": [{"role": "user", "content": words}]},
        ),
        "responses stream abandoned": abandoned(
            "/v1/responses",
            "output_text.delta",
            json={"model": "echo", "stream": True, "input": words},
        ),
        "transcript stream abandoned": abandoned(
            TRANSCRIBE,
            "transcript.text.delta",
            data={"model": "echo", "stream": "true"},
            files={"file": ("a.txt", words.encode(), "text/plain")},
        ),
        "token count": count,
    }
    with serve_uploads(UploadUpstream(answer)) as fake:
        config = Settings(
            upstreams={
                "up": {"type": "openai", "base_url": fake.url},
                "echo": {"type": "echo", "delay_ms": 50},
            },
            models={"m": {"upstream": "up"}, "echo": {"upstream": "echo"}},
            keys=[{"name": "solo", "key": KEY, "max_parallel": 1}],
            max_upload_bytes=2 * MiB,
        )
        chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}

        def admitted() -> bool:
            answer = requests.post(f"{url}/v1/chat/completions", json=chat, headers=AUTH, timeout=9)
            return answer.status_code == 200

        with run_server(create_app(config)) as url:
            for ending, act in endings.items():
                act(url)
                assert eventually(admitted, timeout=2), ending


RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1,
    "status": "completed",
    "model": "up",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hi", "annotations": []}],
        }
    ],
    "usage": {"input_tokens": 40, "output_tokens": 2, "total_tokens": 42},
}


def sse(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


async def native(request: Recorded, reply: Reply) -> None:
    """A server that speaks Messages, Responses and transcriptions, reporting usage."""
    streamed = request.path.endswith(("/messages", "/responses")) and request.json().get("stream")
    if request.path.endswith("/messages"):
        if not streamed:
            await reply.json(200, native_message())  # 21 in, 7 out
            return
        await reply.start()
        for event in native_events():  # 21 in + 5 cache read, 7 out
            await reply.send(frame(event))
        await reply.end()
    elif request.path.endswith("/responses"):
        if not streamed:
            await reply.json(200, RESPONSE)
            return
        await reply.start()
        started = {**RESPONSE, "status": "in_progress", "output": [], "usage": None}
        await reply.send(sse("response.created", response=started))
        delta = {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "hi"}
        await reply.send(sse("response.output_text.delta", **delta))
        await reply.send(sse("response.completed", response=RESPONSE))
        await reply.end()
    else:
        usage = {"type": "tokens", "input_tokens": 50, "output_tokens": 5, "total_tokens": 55}
        await reply.json(200, {"text": "heard", "usage": usage})


@pytest.mark.parametrize(
    ("path", "request_kwargs", "charged"),
    [
        ("/v1/messages", {"json": {"max_tokens": 99}}, 28),
        ("/v1/messages", {"json": {"max_tokens": 99, "stream": True}}, 33),
        ("/v1/responses", {"json": {"input": "hi"}}, 42),
        ("/v1/responses", {"json": {"input": "hi", "stream": True}}, 42),
        (TRANSCRIBE, {"data": {}, "files": {"file": ("a.wav", b"RIFF")}}, 55),
    ],
)
def test_tpm_is_charged_what_each_api_reported(
    path: str, request_kwargs: dict[str, Any], charged: int
) -> None:
    if "json" in request_kwargs:
        request_kwargs["json"] = {
            **request_kwargs["json"],
            "model": "m",
            "messages": CHAT["messages"],
        }
    else:
        request_kwargs["data"] = {"model": "m"}
    tpm = 100000
    with serve_fake(native) as fake:
        config = Settings(
            upstreams={
                "up": {
                    "type": "openai",
                    "base_url": fake.url,
                    "apis": ["messages", "responses", "audio"],
                },
                "echo": {"type": "echo", "delay_ms": 0},
            },
            models={"m": {"upstream": "up"}, "echo": {"upstream": "echo"}},
            keys=[{"name": "k", "key": KEY, "tpm": tpm}],
        )
        with run_server(create_app(config)) as url:
            answer = requests.post(f"{url}{path}", headers=AUTH, timeout=10, **request_kwargs)
            assert answer.status_code == 200, answer.text
            probe = json.dumps({**CHAT, "model": "echo", "max_tokens": 1}, separators=(",", ":"))
            after = requests.post(f"{url}/v1/chat/completions", data=probe, headers=AUTH, timeout=9)
            reserved = len(probe) // 4 + 1  # the probe's own reservation
            assert int(after.headers["x-ratelimit-remaining-tokens"]) == tpm - charged - reserved


# --- the model list --------------------------------------------------------------------------


def test_models_are_listed_and_retrieved_with_or_without_v1() -> None:
    """openai-python's ``models.list()`` and ``models.retrieve()``, with either base URL: only
    what the key may use; another model (or none) is a 404 ``model_not_found``."""
    config = Settings(
        upstreams={"echo": {"type": "echo"}},
        models={"echo": {"upstream": "echo"}, "org/other": {"upstream": "echo"}},
        keys=[{"name": "k", "key": KEY, "models": ["echo"]}, {"name": "all", "key": KEY[::-1]}],
    )
    with run_server(create_app(config)) as url:
        for base in (f"{url}/v1", url):
            client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
            assert [model.id for model in client.models.list()] == ["echo"]
            assert client.models.retrieve("echo").id == "echo"
            for hidden in ("org/other", "nope"):
                with pytest.raises(openai.NotFoundError) as refused:
                    client.models.retrieve(hidden)
                assert refused.value.code == "model_not_found"
            every = openai.OpenAI(base_url=base, api_key=KEY[::-1], max_retries=0)
            assert every.models.retrieve("org/other").owned_by == "echo"
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
            client.close()
            every.close()


# --- the access log --------------------------------------------------------------------------


def test_a_path_cannot_forge_a_line_of_the_text_access_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="proxy.access")
    forged = "2026-01-01 00:00:00 INFO proxy.access: key=admin status=200"
    with run_server(create_app(echo_settings())) as url:
        status, _ = raw_request(url, "GET", "/v1/x%0d%0a" + forged.replace(" ", "%20"))
        assert status == 404
    (record,) = [r for r in caplog.records if r.name == "proxy.access"]
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line, line
    assert 'path="/v1/x\\r\\n2026-01-01' in line  # escaped, quoted: one field
    assert json.loads(JSONFormatter().format(record))["path"].startswith("/v1/x\r\n")


# --- JSON nested deeper than orjson writes ---------------------------------------------------

DEEP = "[" * 300 + "]" * 300  # orjson reads it (up to 1,024 levels), cannot write it (254)


def deep_requests() -> list[tuple[str, str]]:
    user = '{"role": "user", "content": "hi"}'
    tool_use = '{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", '
    tool_use += '"input": {"a": ' + DEEP + "}}]}"
    result = '{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}'
    history = f"[{user}, {tool_use}, {result}]"
    return [
        ("/v1/messages", '{"model": "echo", "max_tokens": 5, "messages": ' + history + "}"),
        (
            "/v1/messages",
            '{"model": "echo", "stream": true, "max_tokens": 5, "messages": ' + history + "}",
        ),
        ("/v1/messages/count_tokens", '{"model": "echo", "messages": ' + history + "}"),
        (
            "/v1/messages/count_tokens",
            '{"model": "echo", "messages": [' + user + '], "tools": [{"a": ' + DEEP + "}]}",
        ),
        (
            "/v1/responses",
            '{"model": "echo", "input": "hi", "tools": [{"type": "function", "name": "f", '
            '"parameters": {"a": ' + DEEP + "}}]}",
        ),
        (
            "/v1/chat/completions",
            '{"model": "echo", "messages": [' + user + '], "x": ' + DEEP + "}",
        ),
    ]


def test_a_client_body_nested_too_deep_to_write_is_a_400() -> None:
    with run_server(create_app(echo_settings())) as url:
        for path, body in deep_requests():
            answer = requests.post(f"{url}{path}", data=body, timeout=10)
            assert answer.status_code == 400, (path, answer.text)
            assert "nested" in answer.text, answer.text
        count = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "tools": 1.5}
        answer = requests.post(f"{url}/v1/messages/count_tokens", json=count, timeout=10)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert requests.post(f"{url}/v1/chat/completions", json={**CHAT, "model": "echo"}).ok


def test_json_that_a_translation_writes_deeper_is_judged_where_it_will_be_written() -> None:
    """orjson writes 254 levels; a value of 254 could be written alone, not 3 deep in a Messages
    answer's tool_use block (it was a 500), nor one deeper in chat's tools: it is refused where
    it is parsed, or passed on as a string where the API allows it."""
    arguments = '{"a": ' + "[" * 253 + "]" * 253 + "}"  # 254 levels

    async def tool_call(request: Recorded, reply: Reply) -> None:
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        body = {"id": "u", "object": "chat.completion", "created": 1, "model": "x",
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}  # fmt: skip
        await reply.json(200, json.dumps(body).encode())

    messages = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with (
        serve_fake(tool_call) as fake,
        run_server(create_app(upstream_settings(fake.url, routing={"retries": 0}))) as url,
    ):
        got = requests.post(f"{url}/v1/messages", json=messages, timeout=10)
        assert got.status_code == 200, got.text
        [block] = got.json()["content"]
        assert block["type"] == "tool_use" and block["input"] == {"_raw": arguments}
    deep = "[" * 240 + "]" * 240
    responses = '{"model": "echo", "input": "hi", "tools": [{"type": "function", "name": "f", '
    responses += '"parameters": {"a": ' + deep + "}}]}"
    with run_server(create_app(echo_settings())) as url:
        got = requests.post(f"{url}/v1/responses", data=responses, timeout=10)
        assert got.status_code == 400 and "nested more than 238" in got.text, got.text


def test_an_upstream_answer_nested_too_deep_to_write_is_an_upstream_error() -> None:
    chunk = '{"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "x", '
    chunk += '"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}], '
    chunk += '"x": ' + DEEP + "}"
    answer = '{"id": "u", "object": "chat.completion", "created": 1, "model": "x", "choices": '
    answer += '[{"index": 0, "message": {"role": "assistant", "content": "hi"}, '
    answer += '"finish_reason": "stop"}], "x": ' + DEEP + "}"

    async def deep(request: Recorded, reply: Reply) -> None:
        if request.json().get("stream"):
            await reply.start()
            await reply.send(b"data: " + chunk.encode() + b"\n\n")
            await reply.end()
        else:
            await reply.json(200, answer.encode())

    with (
        serve_fake(deep) as fake,
        run_server(create_app(upstream_settings(fake.url, routing={"retries": 0}))) as url,
    ):
        for stream in (False, True):
            got = requests.post(
                f"{url}/v1/chat/completions", json={**CHAT, "stream": stream}, timeout=10
            )
            assert got.status_code == 502, got.text
            assert got.json()["error"]["code"] == "upstream_malformed"
