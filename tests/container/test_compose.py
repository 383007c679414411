"""compose.yaml as a user brings it up (podman-compose here; `docker compose` reads the same
file): nginx in front of two read-only proxy replicas, streaming end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from tests.container.engine import IMAGE, ROOT, Container, podman, stream, wait_healthy
from tests.helpers import assert_true_streaming, free_port

pytestmark = pytest.mark.usefixtures("image")

# scripts/container-test.sh names the project (to clean up after a killed run) and gives the
# nginx image: the official one, or a stand-in built from Debian's nginx where it cannot be pulled.
PROJECT = os.environ.get("PROXY_CONTAINER_COMPOSE_PROJECT", "csp-compose-test")
NGINX_IMAGE = os.environ.get("PROXY_CONTAINER_NGINX_IMAGE", "")


def compose(*args: str, env: dict[str, str]) -> str:
    command = [sys.executable, "-m", "podman_compose", "-f", str(ROOT / "compose.yaml")]
    command += ["-p", PROJECT, *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=180, check=False
    )
    assert done.returncode == 0, f"podman-compose {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def service(name: str) -> Container:
    """The running container of compose service ``name`` (its port: unpublished, 0)."""
    names = podman(
        "ps",
        "--all",
        "--filter",
        f"label=io.podman.compose.project={PROJECT}",
        "--filter",
        f"label=io.podman.compose.service={name}",
        "--format",
        "{{.Names}}",
    ).split()
    assert len(names) == 1, names
    return Container(names[0], 0)


@contextmanager
def compose_up() -> Iterator[tuple[str, dict[str, str]]]:
    """``up --detach``; yields nginx's URL and the environment for more compose commands."""
    if not NGINX_IMAGE:
        pytest.fail("PROXY_CONTAINER_NGINX_IMAGE is not set: scripts/container-test.sh sets it")
    port = free_port()
    env = {**os.environ, "PROXY_IMAGE": IMAGE, "NGINX_IMAGE": NGINX_IMAGE}
    env["PROXY_HTTP_PORT"] = str(port)
    try:
        compose("up", "--detach", env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nnginx: {service('nginx').logs()}") from None
        yield url, env
    finally:
        compose("down", env=env)


def test_compose_up_streams_through_nginx_to_both_read_only_replicas() -> None:
    with compose_up() as (url, env):
        answer = stream(url)
        quick = [requests.get(f"{url}/v1/models", timeout=10) for _ in range(10)]
        replicas = [service("proxy-1"), service("proxy-2")]
        front = json.loads(podman("inspect", service("nginx").name))[0]
        nginx_addresses = {
            network["IPAddress"] for network in front["NetworkSettings"]["Networks"].values()
        }
        configs = [json.loads(podman("inspect", replica.name))[0] for replica in replicas]
        compose("stop", env=env)  # SIGTERM, as `docker compose stop` sends
        codes = [replica.state()["ExitCode"] for replica in replicas]
        logs = [replica.access_log() for replica in replicas]
    assert answer.last == "[DONE]"
    assert_true_streaming(answer.times, answer.started, 0.05)  # config/proxy.yaml: 50 ms
    ids = [response.headers["x-request-id"] for response in quick]
    where = Counter(
        next((i for i, lines in enumerate(logs) if rid in {ln["request_id"] for ln in lines}), None)
        for rid in ids
    )
    assert where[0] >= 3 and where[1] >= 3 and where[None] == 0, where
    for config in configs:
        assert config["HostConfig"]["ReadonlyRootfs"] is True
        assert "/tmp" in config["HostConfig"]["Tmpfs"]
    # trusted_proxies: the replicas log the address nginx saw, not nginx's own.
    clients = {line["client"] for lines in logs for line in lines}
    assert clients and not clients & nginx_addresses, (clients, nginx_addresses)
    assert codes == [0, 0]
