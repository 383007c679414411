"""nginx on the host in front of proxy containers, with the project's own config/nginx.conf."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.container.engine import ROOT

NGINX_CONF = ROOT / "config" / "nginx.conf"
# The example's upstream: one replica, "server 127.0.0.1:8000 <parameters>;".
SINGLE_SERVER = re.compile(r"^(\s*)server 127\.0\.0\.1:8000([^;]*);$", re.MULTILINE)


def replicas_site(ports: list[int], listen: int) -> str:
    """config/nginx.conf with one upstream ``server`` line per replica, listening on ``listen``
    (as compose.yaml rewrites it for its two replicas)."""
    site = NGINX_CONF.read_text()
    assert len(SINGLE_SERVER.findall(site)) == 1, "config/nginx.conf: no single server line"
    assert site.count("listen 8080;") == 1
    site = SINGLE_SERVER.sub(
        lambda match: "\n".join(f"{match[1]}server 127.0.0.1:{port}{match[2]};" for port in ports),
        site,
    )
    return site.replace("listen 8080;", f"listen 127.0.0.1:{listen};")


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        pytest.fail("nginx is not installed: scripts/container-test.sh installs it")
    return found


@contextmanager
def nginx(site: str, tmp: Path, port: int) -> Iterator[str]:
    """Run the host's nginx with ``site`` (an http-context snippet); yields its URL."""
    (tmp / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"""
{user}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""
    )
    process = subprocess.Popen(
        [nginx_binary(), "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"nginx did not start: {(tmp / 'error.log').read_text()}"
                    ) from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)
