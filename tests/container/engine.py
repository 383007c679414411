"""Running the image for the container tests: podman, a published port, logs, stop, exec.

Every container carries the label ``CONTAINER_LABEL`` (set by scripts/container-test.sh), so the
script removes whatever a failed or killed test left behind.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = os.environ.get("PROXY_CONTAINER_IMAGE", "")
# scripts/container-test.sh labels this run's containers, and removes them all at the end.
CONTAINER_LABEL = os.environ.get("PROXY_CONTAINER_LABEL", "chat-stream-proxy-ci=manual")
PODMAN = shlex.split(os.environ.get("PROXY_CONTAINER_PODMAN", "podman"))

CONFIG = "/etc/chat-stream-proxy/proxy.yaml"  # PROXY_CONFIG in the image
ECHO_100MS = """\
upstreams: {echo: {type: echo, delay_ms: 100, chunk: word}}
models: {echo: {upstream: echo}}
"""


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    """Run ``podman args``; its stdout (stderr too in the error when it fails)."""
    done = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {shlex.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def mounted(tmp_path: Path, text: str, target: str = CONFIG) -> tuple[str, str]:
    """The ``podman run`` options that mount a config file with ``text`` at ``target``."""
    path = tmp_path / f"config-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(text)
    path.chmod(0o644)  # read by the image's user, 10001
    return "--volume", f"{path}:{target}:ro"


@dataclass
class Container:
    name: str
    port: int  # the host port published to the container's 8000

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        """stdout and stderr of the container (the proxy logs on stderr), in order."""
        done = subprocess.run(
            [*PODMAN, "logs", self.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        return done.stdout.decode(errors="replace")

    def access_log(self) -> list[dict[str, object]]:
        """The proxy's JSON access lines (``logger: proxy.access``)."""
        lines = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("logger") == "proxy.access":
                    lines.append(record)
        return lines

    def state(self) -> dict[str, object]:
        states: list[dict[str, object]] = json.loads(podman("inspect", self.name))
        state = states[0]["State"]
        assert isinstance(state, dict)
        return state

    def exec(self, *command: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PODMAN, "exec", self.name, *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def wait_exit(self, timeout: float) -> int:
        """The container's exit code, once it has exited (fails after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state["Status"] in ("exited", "stopped"):
                code = state["ExitCode"]
                assert isinstance(code, int)
                return code
            assert time.monotonic() < deadline, f"{self.name} still {state['Status']}"
            time.sleep(0.05)


def wait_healthy(url: str, container: Container | None = None, timeout: float = 60) -> None:
    """Wait until ``url``/healthz answers 200 (fail early if the container has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        if container is not None and container.state()["Status"] == "exited":
            raise AssertionError(f"{container.name} exited:\n{container.logs()}")
        if time.monotonic() > deadline:
            logs = container.logs() if container else ""
            raise AssertionError(f"nothing answered at {url}/healthz\n{logs}")
        time.sleep(0.05)


@contextmanager
def container(
    *options: str, wait: bool = True, image: str = IMAGE, command: tuple[str, ...] = ()
) -> Iterator[Container]:
    """``podman run -d`` the image with ``options``, port 8000 published on 127.0.0.1; removed
    (killed if need be) afterwards. ``wait``: until /healthz answers."""
    name = f"csp-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--label",
        CONTAINER_LABEL,
        "--publish",
        f"127.0.0.1:{port}:8000",
        *options,
        image,
        *command,
    )
    running = Container(name, port)
    try:
        if wait:
            wait_healthy(running.url, running)
        yield running
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


TEN_WORDS = "one two three four five six seven eight nine ten"


@dataclass
class Stream:
    """One streamed answer as a client saw it."""

    started: float
    times: list[float]  # arrival of each content chunk
    words: list[str]
    last: str  # the last data line: "[DONE]", or an error event
    request_id: str

    @property
    def text(self) -> str:
        return "".join(self.words)


def stream(
    url: str,
    text: str = TEN_WORDS,
    model: str = "echo",
    headers: dict[str, str] | None = None,
    session: requests.Session | None = None,
) -> Stream:
    """POST a streamed chat completion to ``url`` and read it as it arrives."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}
    post = session.post if session is not None else requests.post
    started = time.monotonic()
    times: list[float] = []
    words: list[str] = []
    last = ""
    with post(
        f"{url}/v1/chat/completions", json=body, headers=headers, stream=True, timeout=60
    ) as response:
        assert response.status_code == 200, (response.status_code, response.text)
        for line in response.iter_lines():
            if not line.startswith(b"data: "):
                continue
            last = line[6:].decode()
            if last.startswith("{"):
                chunk = json.loads(last)
                content = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
                if content:
                    times.append(time.monotonic())
                    words.append(content)
        request_id = response.headers["x-request-id"]
    return Stream(started, times, words, last, request_id)
