"""The image in a real container: user, HEALTHCHECK, the echo model on the published port,
true streaming, config from a mounted file and from PROXY_* variables, a bad config, a
read-only root filesystem, and nothing left over from the build."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import requests

from tests.container.engine import (
    CONFIG,
    CONTAINER_LABEL,
    ECHO_100MS,
    TEN_WORDS,
    container,
    mounted,
    podman,
    stream,
)
from tests.helpers import assert_true_streaming

pytestmark = pytest.mark.usefixtures("image")


def image_config(image: str) -> dict[str, object]:
    config: dict[str, object] = json.loads(podman("image", "inspect", image))[0]
    return config


def test_image_declares_user_port_healthcheck_and_command(image: str) -> None:
    config = image_config(image)
    assert config["User"] == "10001"
    inner = config["Config"]
    assert isinstance(inner, dict)
    assert "8000/tcp" in inner["ExposedPorts"]
    assert inner["Cmd"] == ["chat-stream-proxy", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert inner["StopSignal"] == "SIGTERM"
    healthcheck = config["Healthcheck"]  # dropped unless built with --format docker
    assert isinstance(healthcheck, dict)
    assert "http://127.0.0.1:8000/healthz" in " ".join(healthcheck["Test"])


def test_non_root_healthy_and_serves_echo_on_the_published_port(image: str) -> None:
    with container() as proxy:
        status = proxy.exec("cat", "/proc/1/status", check=True).stdout  # the proxy is PID 1
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.MULTILINE)
        assert uids is not None and uids.groups() == ("10001", "10001")
        # The image's own HEALTHCHECK, run by podman in the container.
        check = podman("healthcheck", "run", proxy.name, check=False)
        assert check.strip() in ("", "healthy"), check
        assert proxy.state()["Health"]["Status"] == "healthy"  # type: ignore[index]
        response = requests.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "in a container"}]},
            timeout=30,
        )
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "in a container"
        assert proxy.access_log()[-1]["path"] == "/v1/chat/completions"  # JSON lines on stderr


def test_healthcheck_fails_when_nothing_serves(image: str) -> None:
    # The negative control: the same HEALTHCHECK in a container whose proxy is not running.
    with container(wait=False, command=("sleep", "60")) as idle:
        done = podman("healthcheck", "run", idle.name, check=False)
        assert "unhealthy" in done, done
        assert idle.state()["Health"]["Status"] != "healthy"  # type: ignore[index]


def test_stream_through_the_published_port_is_true_streaming(image: str, tmp_path: Path) -> None:
    with container(*mounted(tmp_path, ECHO_100MS)) as proxy:
        answer = stream(proxy.url)
    assert answer.text == TEN_WORDS and answer.last == "[DONE]"
    first, total = answer.times[0] - answer.started, answer.times[-1] - answer.started
    print(f"\ncontainer port: first word at {first * 1000:.0f} ms of {total * 1000:.0f} ms")
    assert_true_streaming(answer.times, answer.started, 0.1)


PARROT = """\
upstreams: {echo: {type: echo, delay_ms: 0}}
models: {parrot: {upstream: echo}}
"""


@pytest.mark.parametrize("where", ["default path", "PROXY_CONFIG"])
def test_config_from_a_mounted_file(image: str, tmp_path: Path, where: str) -> None:
    if where == "default path":
        options = mounted(tmp_path, PARROT)
    else:
        options = (*mounted(tmp_path, PARROT, "/config/other.yaml"), "--env")
        options += ("PROXY_CONFIG=/config/other.yaml",)
    with container(*options) as proxy:
        models = requests.get(f"{proxy.url}/v1/models", timeout=10).json()
        assert [model["id"] for model in models["data"]] == ["parrot"]
        assert stream(proxy.url, "hello there", model="parrot").text == "hello there"


def test_config_from_proxy_environment_variables(image: str) -> None:
    options = ("--env", 'PROXY_API_KEYS=["sk-container"]', "--env", "PROXY_ROOT_PATH=/llm")
    with container(*options) as proxy:
        assert requests.get(f"{proxy.url}/v1/models", timeout=10).status_code == 401
        key = {"Authorization": "Bearer sk-container"}
        assert requests.get(f"{proxy.url}/llm/v1/models", headers=key, timeout=10).ok
        assert stream(f"{proxy.url}/llm", "with a key", headers=key).text == "with a key"


BAD_CONFIGS = {
    "file": (
        "models: {echo: {upstream: nope}}\n",
        (),
        rf"{CONFIG}: models\.echo\.upstream: unknown upstream 'nope' \(configured: echo\)",
    ),
    # The source named is the image's PROXY_CONFIG file, though the value came from the
    # environment: the key and the problem are what the line gets right.
    "environment": (None, ("--env", "PROXY_KEEPALIVE_SECONDS=soon"), r"\S+: keepalive_seconds: .+"),
}


@pytest.mark.parametrize("source", list(BAD_CONFIGS))
def test_bad_config_exits_at_once_with_one_line(image: str, tmp_path: Path, source: str) -> None:
    text, env, problem = BAD_CONFIGS[source]
    options = (*(mounted(tmp_path, text) if text else ()), *env)
    started = time.monotonic()
    with container(*options, wait=False) as proxy:
        code = proxy.wait_exit(timeout=15)
        exited = time.monotonic() - started
        logs = proxy.logs().splitlines()
    assert code == 2
    assert exited < 10, f"took {exited:.1f} s to give up"
    assert len(logs) == 1, logs
    assert re.fullmatch(f"chat-stream-proxy: config error: {problem}", logs[0]), logs


def test_read_only_root_filesystem_with_a_tmpfs(image: str, tmp_path: Path) -> None:
    # Docker's --read-only: nothing writable but the tmpfs we give (podman's own --read-only
    # would add tmpfs on /tmp, /var/tmp and /run by itself; --read-only-tmpfs=false stops that).
    # Two workers: prometheus' multiprocess files then live in /tmp.
    options = ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=16m,mode=1777")
    options += ("--env", "PROXY_WORKERS=2", *mounted(tmp_path, ECHO_100MS))
    with container(*options) as proxy:
        answer = stream(proxy.url)
        assert answer.text == TEN_WORDS and answer.last == "[DONE]"
        assert_true_streaming(answer.times, answer.started, 0.1)
        metrics = requests.get(f"{proxy.url}/metrics", timeout=10)
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
        for path in ("/app/written", "/home/chat-stream-proxy/written", "/written"):
            denied = proxy.exec("touch", path)
            assert denied.returncode != 0 and "Read-only file system" in denied.stderr, path
        assert proxy.exec("touch", "/tmp/written").returncode == 0


def test_nothing_left_over_from_the_build(image: str) -> None:
    script = """
        for tool in gcc cc c++ make; do command -v "$tool" && echo "build tool: $tool"; done
        find / -xdev \\( -path /proc -o -path /sys \\) -prune -o -type d \\
            \\( -path '*/.cache/pip' -o -path /app/build -o -name '*.egg-info' -path '/app/*' \\) \\
            -print 2>/dev/null
        cd /tmp  # not /app, where the source the image was built from shadows the package
        package=$(python -c 'import proxy, pathlib; print(pathlib.Path(proxy.__file__).parent)')
        echo "$package"
        ls "$package/__pycache__" | head -1
    """
    run = ("run", "--rm", "--label", CONTAINER_LABEL, "--entrypoint", "sh", image, "-c", script)
    out = podman(*run).splitlines()
    leftovers = [line for line in out if line.startswith(("build tool", "/app/", "/root", "/home"))]
    leftovers += [line for line in out if ".cache/pip" in line]
    assert leftovers == []
    installed = out[-2]
    assert installed.endswith("packages/proxy"), out  # installed, not run from /app/proxy
    assert out[-1].endswith(".pyc"), out  # compiled at build: the root is read-only at run time
    env = image_config(image)["Config"]["Env"]  # type: ignore[index]
    assert "PIP_NO_CACHE_DIR=1" in env
