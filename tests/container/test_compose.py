"""compose.yaml as a user brings it up (podman-compose here; `docker compose` reads the same
file): nginx in front of two read-only proxy replicas sharing one Redis for their keys' limits
(config/proxy-redis.yaml), streaming end to end, one limit held exactly across both replicas,
and Redis stopped and started again.

The stack comes up once for this module (about 5 s): the tests run in file order against it,
and the last one stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import yaml

from tests.container.engine import ROOT, Container, podman, stream, wait_healthy
from tests.helpers import assert_true_streaming, free_port

pytestmark = pytest.mark.usefixtures("image")

# scripts/container-test.sh names the project (to clean up after a killed run) and gives the
# nginx and Redis images: the official ones, or stand-ins built from Debian's nginx and
# redis-server where they cannot be pulled.
PROJECT = os.environ.get("PROXY_CONTAINER_COMPOSE_PROJECT", "csp-compose-test")
NGINX_IMAGE = os.environ.get("PROXY_CONTAINER_NGINX_IMAGE", "")
REDIS_IMAGE = os.environ.get("PROXY_CONTAINER_REDIS_IMAGE", "")

# What compose.yaml mounts into the replicas: the demo key and its limit.
REPLICA_CONFIG = yaml.safe_load((ROOT / "config" / "proxy-redis.yaml").read_text())
DEMO = REPLICA_CONFIG["keys"][0]
AUTH = {"Authorization": f"Bearer {DEMO['key']}"}
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}


def compose(*args: str, env: dict[str, str]) -> str:
    command = [sys.executable, "-m", "podman_compose", "-f", str(ROOT / "compose.yaml")]
    command += ["-p", PROJECT, *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=180, check=False
    )
    assert done.returncode == 0, f"podman-compose {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def service(name: str) -> Container:
    """The container of compose service ``name`` (its port: unpublished, 0)."""
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


# Run in a replica by its own python (the image's): asks the replica itself, on 127.0.0.1:8000,
# past nginx, which would pass a 503 on to the other replica.
INSIDE = """
import json, sys, time, urllib.error, urllib.request

KEY = sys.argv[1]
BODY = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "one"}]}).encode()

def ask(path):
    headers = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}
    body = BODY if path == "/v1/chat/completions" else None
    request = urllib.request.Request("http://127.0.0.1:8000" + path, body, headers)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, payload = error.code, error.headers, error.read()
    code = json.loads(payload).get("error", {}).get("code") if status >= 400 else None
    return {"status": status, "code": code, "seconds": round(time.monotonic() - started, 3),
            "retry_after": headers.get("retry-after")}

def answered(path):
    # The status, or 0 while nothing listens yet (a replica still starting: nginx may be
    # healthy through the other one already).
    try:
        return ask(path)["status"]
    except urllib.error.URLError:
        return 0

def until(paths, timeout):
    # Seconds until every path answers 200 once in a row, or None.
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(answered(path) == 200 for path in paths):
            return round(time.monotonic() - started, 2)
        time.sleep(0.1)
    return None

"""


def inside(replica: Container, code: str) -> Any:
    """Run ``INSIDE`` + ``code`` in ``replica``; what it printed, as JSON."""
    done = replica.exec("python", "-c", INSIDE + code, DEMO["key"])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def on_both(code: str) -> list[Any]:
    """``inside`` on both replicas at once."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda name: inside(service(name), code), ["proxy-1", "proxy-2"]))


@dataclass
class Stack:
    url: str  # nginx
    env: dict[str, str]  # for more compose commands


@pytest.fixture(scope="module")
def stack(image: str) -> Iterator[Stack]:
    """``compose up --detach``, until nginx answers and both replicas reach Redis."""
    if not NGINX_IMAGE or not REDIS_IMAGE:
        pytest.fail(
            "PROXY_CONTAINER_{NGINX,REDIS}_IMAGE unset: scripts/container-test.sh sets them"
        )
    port = free_port()
    env = {**os.environ, "PROXY_IMAGE": image, "NGINX_IMAGE": NGINX_IMAGE}
    env.update(REDIS_IMAGE=REDIS_IMAGE, PROXY_HTTP_PORT=str(port))
    try:
        compose("up", "--detach", env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nnginx: {service('nginx').logs()}") from None
        ready = on_both('print(json.dumps(until(["/readyz"], 20)))')
        assert None not in ready, f"a replica never reached Redis: {ready}"
        yield Stack(url, env)
    finally:
        compose("down", env=env)


def test_compose_up_streams_through_nginx_to_both_read_only_replicas(stack: Stack) -> None:
    url = stack.url
    answer = stream(url, headers=AUTH)
    quick = [requests.get(f"{url}/v1/models", headers=AUTH, timeout=10) for _ in range(10)]
    anonymous = requests.get(f"{url}/v1/models", timeout=10)
    replicas = [service("proxy-1"), service("proxy-2")]
    front = json.loads(podman("inspect", service("nginx").name))[0]
    nginx_addresses = {
        network["IPAddress"] for network in front["NetworkSettings"]["Networks"].values()
    }
    configs = [json.loads(podman("inspect", c.name))[0] for c in [*replicas, service("redis")]]
    logs = [replica.access_log() for replica in replicas]
    assert answer.last == "[DONE]"
    assert_true_streaming(answer.times, answer.started, 0.05)  # config/proxy-redis.yaml: 50 ms
    assert anonymous.status_code == 401  # the replicas' config has keys
    ids = [response.headers["x-request-id"] for response in quick]
    where = Counter(
        next((i for i, lines in enumerate(logs) if rid in {ln["request_id"] for ln in lines}), None)
        for rid in ids
    )
    assert where[0] >= 3 and where[1] >= 3 and where[None] == 0, where
    for config in configs:  # the replicas and Redis
        assert config["HostConfig"]["ReadonlyRootfs"] is True
        assert config["HostConfig"]["Tmpfs"], config["HostConfig"]["Tmpfs"]
    assert all("/tmp" in config["HostConfig"]["Tmpfs"] for config in configs[:2])
    # trusted_proxies: the replicas log the address nginx saw, not nginx's own.
    clients = {line["client"] for lines in logs for line in lines}
    assert clients and not clients & nginx_addresses, (clients, nginx_addresses)


def test_a_limit_holds_exactly_across_both_replicas_sharing_redis(stack: Stack) -> None:
    """A concurrent burst of 3N requests with the demo key (rpm N) through nginx, spread over
    both replicas: exactly N answered, the rest 429 with Retry-After, N in all whatever each
    replica got (counters per replica would have let up to 2N through)."""
    limit = DEMO["rpm"]
    # A fresh window: the earlier tests' requests counted too.
    assert service("redis").exec("redis-cli", "flushall", check=True).stdout.strip() == "OK"
    start = threading.Barrier(3 * limit)

    def post(_: int) -> requests.Response:
        start.wait()
        return requests.post(
            f"{stack.url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30
        )

    started = time.monotonic()
    with ThreadPoolExecutor(3 * limit) as pool:
        answers = list(pool.map(post, range(3 * limit)))
    took = time.monotonic() - started
    statuses = Counter(answer.status_code for answer in answers)
    logged = [
        {line["request_id"]: line for line in service(name).access_log()}
        for name in ("proxy-1", "proxy-2")
    ]
    by = [
        [i for i, lines in enumerate(logged) if a.headers["x-request-id"] in lines] for a in answers
    ]
    per_replica = [
        Counter(
            answer.status_code for answer, where in zip(answers, by, strict=True) if where == [i]
        )
        for i in (0, 1)
    ]
    print(
        f"\nburst of {3 * limit} through nginx in {took:.2f} s, rpm {limit} shared in Redis: "
        f"{dict(statuses)}; replica 1 {dict(per_replica[0])}, replica 2 {dict(per_replica[1])}"
    )
    assert statuses == {200: limit, 429: 2 * limit}, statuses
    for answer in answers:
        assert answer.headers["x-ratelimit-limit-requests"] == str(limit)
        if answer.status_code == 429:
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.headers["x-ratelimit-remaining-requests"] == "0"
            assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert all(len(where) == 1 for where in by), by  # each in exactly one replica's log
    assert all(sum(counts.values()) >= limit // 2 for counts in per_replica), per_replica
    for answer, (where,) in zip(answers, by, strict=True):
        line = logged[where][answer.headers["x-request-id"]]
        assert line["key"] == DEMO["name"] and line["status"] == answer.status_code, line


def test_redis_stopped_is_a_quick_503_and_not_ready_then_back(stack: Stack) -> None:
    """``on_backend_error: deny``: with Redis stopped, each replica answers the demo key 503
    limits_unavailable within 2 s, every time, and /readyz is 503; started again (empty: no
    persistence), both serve and are ready within 10 s."""
    redis = service("redis")
    podman("stop", "--time", "5", redis.name)
    try:
        down = on_both(
            'print(json.dumps([ask("/v1/chat/completions") for _ in range(3)] + [ask("/readyz")]))'
        )
        started = time.monotonic()
        through_nginx = requests.post(
            f"{stack.url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30
        )
        nginx_took = time.monotonic() - started
        nginx_ready = requests.get(f"{stack.url}/readyz", timeout=30).status_code
        alive = requests.get(f"{stack.url}/healthz", timeout=30).status_code
    finally:
        podman("start", redis.name)
    restarted = time.monotonic()
    back = on_both('print(json.dumps(until(["/readyz", "/v1/chat/completions"], 10)))')
    back_after = time.monotonic() - restarted
    print(
        f"\nRedis stopped: replica 1 {[(a['status'], a['seconds']) for a in down[0]]}, "
        f"replica 2 {[(a['status'], a['seconds']) for a in down[1]]} (chat x3, /readyz); "
        f"through nginx {through_nginx.status_code} in {nginx_took:.2f} s. Started again: "
        f"both replicas ready and serving {back} s after (all: {back_after:.1f} s)"
    )
    for answers in down:
        *chats, ready = answers
        for answer in chats:
            assert (answer["status"], answer["code"]) == (503, "limits_unavailable"), answer
            assert answer["seconds"] < 2 and int(answer["retry_after"]) >= 1, answer
        assert ready["status"] == 503, ready
    assert through_nginx.status_code == 503, through_nginx.text
    assert through_nginx.json()["error"]["code"] == "limits_unavailable"
    assert "redis" not in through_nginx.text.lower()  # no internal address in the message
    assert nginx_ready == 503 and alive == 200  # not ready, but alive: nothing restarts it
    assert None not in back, back


def test_compose_stop_drains_every_service_with_exit_0(stack: Stack) -> None:
    """Last: stops the stack (SIGTERM, as `docker compose stop` sends)."""
    names = ["proxy-1", "proxy-2", "redis"]
    logs = "".join(service(name).logs() for name in names)
    compose("stop", env=stack.env)
    codes = {name: service(name).state()["ExitCode"] for name in names}
    assert codes == dict.fromkeys(names, 0), codes
    assert DEMO["key"] not in logs  # the key's name is logged, never the key
