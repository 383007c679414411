"""Uploads through the proxy running as its own process (``python -m proxy``), as deployed:
a few hundred MB streamed through at a memory cost that does not depend on the file's size,
in either order of the form (model first: streamed; file first: spooled to disk), a form of
tens of thousands of text fields and file parts at the same cost, and an upload abandoned
halfway (the upstream request aborted, the spool gone)."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import eventually, free_port
from tests.test_attacks import rss_mib
from tests.test_process import proxy_process
from tests.upload_upstream import UploadUpstream, serve_uploads

MiB = 1024 * 1024
SIZE = 300 * MiB
BOUNDARY = "bigUploadBoundary"
BLOCK = os.urandom(MiB)  # the file: this block over and over (cheap to make, to check)


def parts(size: int, model_first: bool) -> tuple[bytes, bytes, bytes]:
    """(what comes before the file's bytes, between them and the end, the end)."""
    model = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'.encode()
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    end = f"--{BOUNDARY}--\r\n".encode()
    return (model + head, b"\r\n", end) if model_first else (head, b"\r\n" + model, end)


def body(size: int, model_first: bool, stop_at: int | None = None) -> Iterator[bytes]:
    before, after, end = parts(size, model_first)
    yield before
    for start in range(0, size, MiB):
        if stop_at is not None and start >= stop_at:
            return
        yield BLOCK[: min(MiB, size - start)]
    yield after + end


def length(size: int, model_first: bool) -> int:
    return size + sum(len(piece) for piece in parts(size, model_first))


def upload(url: str, size: int, model_first: bool) -> int:
    """Stream an upload of ``size`` bytes through the proxy; the answer's status."""
    port = int(url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {
        "content-type": f"multipart/form-data; boundary={BOUNDARY}",
        "content-length": str(length(size, model_first)),
    }
    connection.request("POST", "/v1/audio/transcriptions", body(size, model_first), headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


def digest(size: int) -> str:
    sha = hashlib.sha256()
    for start in range(0, size, MiB):
        sha.update(BLOCK[: min(MiB, size - start)])
    return sha.hexdigest()


def spool_files(pid: int) -> int:
    """The process's open, unlinked temporary files (its upload spools)."""
    count = 0
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        count += target.startswith("/tmp/") and target.endswith("(deleted)")
    return count


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        f"upstreams:\n  up: {{type: openai, base_url: '{url}'}}\n  echo: {{type: echo}}\n"
        "models:\n  m: {upstream: up, model: whisper-up}\n  echo: {upstream: echo}\n"
        "routing: {retries: 0}\n"
    )
    return path


def test_a_few_hundred_mb_stream_through_at_a_memory_cost_independent_of_their_size(
    tmp_path: Path,
) -> None:
    with serve_uploads() as fake:
        port = free_port()
        args = [sys.executable, "-m", "proxy", "--config", str(config(tmp_path, fake.url))]
        with proxy_process([*args, "--port", str(port)], tmp_path, port=port) as (proc, url, _):
            for model_first in (True, False):  # warm up every path once
                assert upload(url, 3 * MiB, model_first) == 200
            baseline, _ = rss_mib(proc.pid)
            for model_first in (True, False):
                started = time.monotonic()
                assert upload(url, SIZE, model_first) == 200
                seconds = time.monotonic() - started
                current, peak = rss_mib(proc.pid)
                print(  # the figures, for the README (pytest -s)
                    f"{'model first' if model_first else 'file first (spooled)'}: "
                    f"{SIZE // MiB} MiB in {seconds:.1f} s, RSS {baseline:.0f} MiB before, "
                    f"peak {peak:.0f} MiB, {current:.0f} MiB after"
                )
                assert peak < baseline + 60, (baseline, peak)
            assert eventually(lambda: spool_files(proc.pid) == 0)
    for seen, model_first in zip(fake.seen[-2:], (True, False), strict=True):
        assert seen.complete and seen.part("file").size == SIZE, model_first
        assert seen.part("file").sha256 == digest(SIZE)
        assert seen.part("model").value == b"whisper-up"
        assert seen.framing == "chunked"


@pytest.mark.parametrize("model_first", [True, False])
def test_an_upload_abandoned_halfway_in_a_real_process(tmp_path: Path, model_first: bool) -> None:
    with serve_uploads(UploadUpstream()) as fake:
        port = free_port()
        args = [sys.executable, "-m", "proxy", "--config", str(config(tmp_path, fake.url))]
        with proxy_process([*args, "--port", str(port)], tmp_path, port=port) as (proc, url, log):
            sock = socket.create_connection(("127.0.0.1", port))
            size = 64 * MiB
            head = (
                "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                f"content-type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"content-length: {length(size, model_first)}\r\n\r\n"
            )
            sock.sendall(head.encode())
            for piece in body(size, model_first, stop_at=size // 2):
                sock.sendall(piece)
            if not model_first:
                assert eventually(lambda: spool_files(proc.pid) == 1)  # the file, spooled
            sock.close()  # gone halfway
            assert eventually(lambda: spool_files(proc.pid) == 0)
            if model_first:
                assert eventually(lambda: bool(fake.seen) and fake.seen[0].done.is_set())
                assert fake.seen[0].closed and not fake.seen[0].complete
                assert fake.seen[0].received < size
            else:
                assert fake.seen == []
            assert upload(url, MiB, True) == 200  # and it goes on serving
        assert "Traceback" not in log.read_text()


def many_parts(model: str, count: int, size: int, *, files: bool) -> Iterator[bytes]:
    """A form of ``count`` parts of ``size`` bytes each (text fields with distinct names, or
    file parts), then the model and the file."""
    for index in range(0, count, 64):
        block = b""
        for name in range(index, min(count, index + 64)):
            filename = f'; filename="f{name}.txt"' if files else ""
            block += (
                (
                    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{name}"{filename}\r\n\r\n'
                ).encode()
                + b"v" * size
                + b"\r\n"
            )
        yield block
    yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode()
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
        f"the file\r\n--{BOUNDARY}--\r\n"
    ).encode()


def test_a_form_of_many_parts_costs_no_more_memory_than_a_file(tmp_path: Path) -> None:
    """Text fields were each kept (4 KiB of every one, for the logs), and the echo model kept
    1 MiB of every file part: a form of 25,000 fields, or of 100 files, grew the process by its
    size. Now each is streamed on like a file's bytes."""
    with serve_uploads(UploadUpstream(record=False)) as fake:
        port = free_port()
        args = [sys.executable, "-m", "proxy", "--config", str(config(tmp_path, fake.url))]
        with proxy_process([*args, "--port", str(port)], tmp_path, port=port) as (proc, url, _):
            port = int(url.rsplit(":", 1)[1])
            headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}

            def send(model: str, count: int, size: int, files: bool) -> http.client.HTTPResponse:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                form = many_parts(model, count, size, files=files)
                connection.request("POST", "/v1/audio/transcriptions", form, headers)
                response = connection.getresponse()
                response.read()
                connection.close()
                return response

            for model in ("m", "echo"):  # warm up every path once
                assert send(model, 10, 10, files=False).status == 200
            baseline, _ = rss_mib(proc.pid)
            assert send("m", 25_000, 4096, files=False).status == 200  # 100 MiB of fields
            assert send("echo", 25_000, 4096, files=False).status == 200
            assert send("echo", 100, MiB, files=True).status == 200  # 100 files of 1 MiB
            _, peak = rss_mib(proc.pid)
            assert peak < baseline + 40, (baseline, peak)
