"""Behind a gateway: real nginx in front of the proxy (the shipped example and a default-style
config), trusted X-Forwarded-*, a path prefix, and request ids."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import requests

from proxy import create_app
from proxy.asgi import ASGIApp
from tests.conftest import DELAY
from tests.helpers import (
    StripHeader,
    assert_true_streaming,
    echo_settings,
    eventually,
    free_port,
    openai_arrivals,
    run_server,
    upstream_settings,
)
from tests.test_streaming import BODY, TEXT, content_of

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

# What a first-time user writes: nginx defaults, i.e. buffering on and HTTP/1.0 upstream.
DEFAULT_STYLE = """
server {
    listen 8080;
    location / {
        proxy_pass http://127.0.0.1:8000;
    }
}
"""


def need_nginx() -> str:
    if NGINX is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed: .ci/run must install it")
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    return NGINX


@contextmanager
def nginx_in_front(site: str, proxy_url: str, tmp: Path) -> Iterator[str]:
    """Run nginx with ``site`` (an http-context config for port 8080 -> 127.0.0.1:8000),
    rewritten to a free port in front of ``proxy_url``; yields nginx's URL."""
    binary = need_nginx()
    port = free_port()
    site = site.replace("127.0.0.1:8000", proxy_url.removeprefix("http://"))
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (tmp / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"""
{user}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""
    )
    stderr = tmp / "stderr.log"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [binary, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {stderr.read_text()}") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


# A common production addition: compress event streams too. nginx's gzip holds a response
# back until the end unless buffering is off for it, which the proxy's X-Accel-Buffering does.
GZIP_ON = DEFAULT_STYLE.replace(
    "proxy_pass", "gzip on; gzip_types text/event-stream; gzip_min_length 1;\n        proxy_pass"
)

CONFIGS = {
    "example": (ROOT / "config" / "nginx.conf").read_text(),
    "default-style": DEFAULT_STYLE,
    "gzip-on": GZIP_ON,
}


def echo_app() -> ASGIApp:
    return create_app(echo_settings(echo={"delay_ms": DELAY * 1000}))


def openai_times(url: str) -> tuple[float, list[float]]:
    return openai_arrivals(url, TEXT)


def requests_times(url: str) -> tuple[float, list[float]]:
    started = time.monotonic()
    with requests.post(f"{url}/v1/chat/completions", json=BODY, stream=True, timeout=30) as r:
        times = [time.monotonic() for line in r.iter_lines() if content_of(line)]
    return started, times


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("client", ["openai", "requests"])
def test_true_streaming_through_nginx(config: str, client: str, tmp_path: Path) -> None:
    with run_server(echo_app()) as proxy, nginx_in_front(CONFIGS[config], proxy, tmp_path) as url:
        started, times = (openai_times if client == "openai" else requests_times)(url)
    assert len(times) == 10
    first, duration = times[0] - started, times[-1] - started
    print(
        f"\nnginx {config}, {client}: first chunk {first * 1000:.0f} ms of {duration * 1000:.0f} ms"
    )
    assert_true_streaming(times, started, DELAY)


def test_negative_control_gzip_nginx_buffers_without_our_header(tmp_path: Path) -> None:
    # The gzip-on nginx with X-Accel-Buffering: no stripped from our response: nginx holds the
    # whole stream back, and the streaming assertion catches it.
    app = StripHeader(echo_app(), b"x-accel-buffering")
    with run_server(app) as proxy, nginx_in_front(GZIP_ON, proxy, tmp_path) as url:
        started, times = requests_times(url)
    assert len(times) == 10
    with pytest.raises(AssertionError, match="buffered"):
        assert_true_streaming(times, started, DELAY)


def test_request_id_through_nginx(tmp_path: Path) -> None:
    with (
        run_server(echo_app()) as proxy,
        nginx_in_front(CONFIGS["example"], proxy, tmp_path) as url,
    ):
        response = httpx.get(f"{url}/v1/models")
    assert len(response.headers["x-request-id"]) == 32  # nginx's $request_id, passed back


# --- X-Forwarded-*, root_path, request ids (no nginx needed) ---------------------------------


def access_fields(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, object]:
    """The access line's fields for ``request_id``."""
    lines = [getattr(r, "fields", {}) for r in caplog.records if r.name == "proxy.access"]
    return next(fields for fields in lines if fields.get("request_id") == request_id)


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [(["127.0.0.1"], "203.0.113.7"), (["10.9.9.9"], "127.0.0.1"), (["*"], "203.0.113.7")],
)
def test_forwarded_for_only_from_trusted(
    trusted: list[str], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "proxy.access")
    with run_server(create_app(echo_settings(trusted_proxies=trusted))) as url:
        httpx.get(
            f"{url}/healthz",
            headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "fwd-1"},
        )
    assert access_fields(caplog, "fwd-1")["client"] == expected


def test_root_path_prefix(caplog: pytest.LogCaptureFixture) -> None:
    with run_server(create_app(echo_settings(root_path="/llm"))) as url:
        client = openai.OpenAI(base_url=f"{url}/llm/v1", api_key="x", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "a b"}], stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a b"
        assert [m.id for m in client.models.list().data] == ["echo"]
        # A gateway that strips the prefix itself works too.
        assert (
            httpx.post(f"{url}/v1/chat/completions", json={**BODY, "stream": False}).status_code
            == 200
        )
        assert httpx.get(f"{url}/llm/healthz").status_code == 200


def test_request_id_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "proxy.access")
    with run_server(create_app(echo_settings())) as url:
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={**BODY, "stream": True},
            headers={"X-Request-ID": "trace-77"},
        )
    assert response.headers["x-request-id"] == "trace-77"
    fields = access_fields(caplog, "trace-77")
    assert (fields["method"], fields["path"], fields["status"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )


# --- uploads through the shipped nginx config ------------------------------------------------

MiB = 1024 * 1024
BUFFERED_UPLOADS = CONFIGS["example"].replace("proxy_request_buffering off;", "")


def upload_through(site: str, tmp: Path, size: int) -> tuple[int, bool, int]:
    """Upload a ``size``-byte file (model first) through nginx running ``site``: the status,
    whether the upstream got bytes while the client was still holding back the last 1 MiB,
    and how many file bytes it got in all."""
    from tests.test_forms import form
    from tests.upload_upstream import serve_uploads

    body = form(("model", None, None, b"m"), ("file", "a.bin", None, b"\x01" * size))
    head, tail = body[: -MiB - 64], body[-MiB - 64 :]
    early: list[bool] = []
    with (
        serve_uploads() as fake,
        run_server(create_app(upstream_settings(fake.url))) as url,
        nginx_in_front(site, url, tmp) as gateway,
    ):

        def pieces() -> Iterator[bytes]:
            for start in range(0, len(head), MiB):
                yield head[start : start + MiB]
            early.append(eventually(lambda: bool(fake.seen) and fake.seen[0].received > 0, 3))
            yield tail

        response = requests.post(
            f"{gateway}/v1/audio/transcriptions",
            data=pieces(),
            headers={"content-type": "multipart/form-data; boundary=xYzZy"},
            timeout=60,
        )
        received = fake.seen[0].part("file").size if fake.seen else 0
    return response.status_code, early[0], received


def test_uploads_stream_through_the_shipped_nginx_config(tmp_path: Path) -> None:
    """30 MiB (over the 20 MiB of other requests) passes, and the upstream gets the upload
    while the client is still sending it: nginx does not store it first."""
    status, early, received = upload_through(CONFIGS["example"], tmp_path, 30 * MiB)
    assert status == 200
    assert early, "nginx held the upload back until it was whole"
    assert received == 30 * MiB


def test_negative_control_nginx_buffering_uploads_holds_them_back(tmp_path: Path) -> None:
    status, early, received = upload_through(BUFFERED_UPLOADS, tmp_path, 8 * MiB)
    assert status == 200 and received == 8 * MiB
    assert not early  # the same check fails against a gateway that buffers request bodies
