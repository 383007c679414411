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
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from urllib.parse import urlsplit

import pytest
import requests

from proxy import create_app
from tests.fake_upstream import Handler, Recorded, Reply, serve_fake
from tests.helpers import echo_settings, run_server, upstream_settings
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
