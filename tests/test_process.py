"""The proxy as a real process: the container's exact command, SIGTERM draining, --workers."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from proxy import create_app
from proxy.heap import YOUNG_THRESHOLD
from tests.helpers import echo_settings, free_port, serving

ROOT = Path(__file__).resolve().parent.parent


def dockerfile() -> tuple[list[str], list[str], dict[str, str]]:
    """The image's CMD and HEALTHCHECK (exec form) and its ENV, read from the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    cmd = health = None
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CMD "):
            cmd = json.loads(line[4:])
        elif line.startswith("HEALTHCHECK "):
            health = json.loads(line[line.index(" CMD ") + 5 :])
        elif line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in shlex.split(line[4:]))
    assert cmd and health
    return cmd, health, env


@contextmanager
def proxy_process(
    args: list[str], tmp: Path, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """Run ``args`` (a proxy command line) and wait until /healthz answers."""
    port = port or free_port()
    log = tmp / "proxy.log"
    full_env = {**os.environ, **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield process, url, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_container_command_and_healthcheck(tmp_path: Path) -> None:
    cmd, health, env = dockerfile()
    assert cmd[:1] == ["chat-stream-proxy"] and "0.0.0.0" in cmd
    port = free_port()
    args = [
        str(port) if arg == "8000" else arg for arg in cmd
    ]  # the image's port may be taken here
    env = {**env, "PROXY_CONFIG": str(ROOT / "config" / "proxy.yaml")}  # the file the image copies
    with proxy_process(args, tmp_path, env, port) as (process, url, _):
        check = [arg.replace("8000", str(port)) for arg in health]
        assert subprocess.run(check, timeout=30).returncode == 0
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "in a container"}]},
        )
        assert response.json()["choices"][0]["message"]["content"] == "in a container"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def stream_lines(url: str, words: int, out: list[str]) -> None:
    body = {
        "model": "echo",
        "stream": True,
        "messages": [{"role": "user", "content": " ".join(["w"] * words)}],
    }
    try:
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as r:
            out.extend(line for line in r.iter_lines(decode_unicode=True) if line)
    except requests.RequestException as exc:
        out.append(f"EXCEPTION {exc!r}")


def test_sigterm_drains_streams_then_exits_0(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "shutdown_grace_seconds: 1.5\n"
        "upstreams: {echo: {type: echo, delay_ms: 100}}\nmodels: {echo: {upstream: echo}}\n"
    )
    port = free_port()
    args = [sys.executable, "-m", "proxy", "--config", str(config), "--port", str(port)]
    with proxy_process(args, tmp_path, port=port) as (process, url, log):
        short: list[str] = []
        long: list[str] = []
        threads = [
            threading.Thread(target=stream_lines, args=(url, 8, short)),  # ~0.7 s: fits the grace
            threading.Thread(target=stream_lines, args=(url, 60, long)),  # ~6 s: does not
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.2)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(f"{url}/healthz", timeout=1)
        for thread in threads:
            thread.join(30)
        assert process.wait(30) == 0
        exited = time.monotonic() - signalled
    assert short[-1] == "data: [DONE]"  # finished within the grace period
    assert "data: [DONE]" not in long
    error = json.loads(long[-1][6:])["error"]
    assert error["code"] == "shutting_down"
    assert 1.0 < exited < 10, exited  # the grace (1.5 s) was given, then it exited
    words = [line for line in long if '"content":"' in line and '"content":""' not in line]
    assert 10 <= len(words) < 60  # it kept streaming during the grace period
    assert "Traceback" not in log.read_text()


def test_draining_refuses_new_work_and_turns_readyz_503() -> None:
    # In-process, to see what a request on a kept-alive connection gets while draining.
    app = create_app(echo_settings(shutdown_grace_seconds=30))
    with serving(app) as (url, server), httpx.Client() as client:
        assert client.get(f"{url}/readyz").status_code == 200
        loop = server.servers[0].get_loop()
        loop.call_soon_threadsafe(app.state.services.drain.begin)
        time.sleep(0.2)
        assert client.get(f"{url}/readyz").status_code == 503
        response = client.post(
            f"{url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "x"}]},
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "shutting_down"
        assert client.get(f"{url}/healthz").status_code == 200  # alive, just not ready


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_workers_serve_on_one_port(tmp_path: Path) -> None:
    port = free_port()
    args = [sys.executable, "-m", "proxy", "--workers", "2", "--port", str(port)]
    with proxy_process(args, tmp_path, port=port) as (process, url, log):
        deadline = time.monotonic() + 30
        while (
            log.read_text().count("Application startup complete") < 2
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        workers = [
            pid
            for pid in children(process.pid)
            if b"spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 2
        results: list[list[str]] = [[] for _ in range(12)]
        threads = [threading.Thread(target=stream_lines, args=(url, 5, out)) for out in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(out and out[-1] == "data: [DONE]" for out in results)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert log.read_text().count("Application startup complete") == 2


def test_bad_config_env_fails_start(tmp_path: Path) -> None:
    env: dict[str, Any] = {**os.environ, "PROXY_WORKERS": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "proxy"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "chat-stream-proxy: config error: environment: workers: Input should be greater than or equal to 1"
    )


def test_bad_env_value_is_blamed_on_the_environment_not_the_file(tmp_path: Path) -> None:
    env: dict[str, Any] = {
        **os.environ,
        "PROXY_CONFIG": str(ROOT / "config" / "proxy.yaml"),
        "PROXY_KEEPALIVE_SECONDS": "soon",
    }
    result = subprocess.run(
        [sys.executable, "-m", "proxy"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        "chat-stream-proxy: config error: environment: keepalive_seconds: "
    )


def test_workers_without_a_writable_metrics_directory_is_one_line(tmp_path: Path) -> None:
    env: dict[str, Any] = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": "/proc/not-writable"}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--workers", "2", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "writable directory" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_json_log_format_covers_uvicorns_lines_too(tmp_path: Path) -> None:
    port = free_port()
    args = [sys.executable, "-m", "proxy", "--port", str(port)]
    with proxy_process(args, tmp_path, {"PROXY_LOG_FORMAT": "json"}, port) as (process, url, log):
        httpx.get(f"{url}/healthz")
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines[0].startswith("chat-stream-proxy: serving")  # the one human line, on purpose
    rest = [json.loads(line) for line in lines[1:]]  # every other line is JSON
    assert any(entry["logger"].startswith("uvicorn") for entry in rest)


FROZEN = """
import gc, sys
import uvicorn
from proxy.app import create_app
from proxy.settings import Settings
create_app(Settings())
built = gc.get_freeze_count(), gc.get_threshold()[0]
from fastapi import FastAPI
kind = lambda app: "FastAPI" if isinstance(app, FastAPI) else type(app).__name__  # ProxyApp too
uvicorn.run = lambda app, **options: print(*built, gc.get_freeze_count(), gc.get_threshold()[0], kind(app))
from proxy.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("workers", [False, True])
def test_the_serving_process_freezes_its_start_up_heap_and_create_app_does_not(
    workers: bool,
) -> None:
    """Full collections walked every object start-up made (~45 ms each under load, the p99 of
    whatever was in flight): the serving process freezes them before it serves, and raises the
    young generation's threshold (proxy/heap.py); a process that only builds apps (the tests)
    keeps its heap and its collector as they are."""
    if workers:  # each worker builds its app with the factory, in its own process
        code = FROZEN.replace("from proxy.cli import main\nmain(sys.argv[1:])", "")
        code += "from proxy.app import create_app_from_env\nuvicorn.run(create_app_from_env())\n"
    else:
        code = FROZEN
    out = subprocess.run(
        [sys.executable, "-c", code, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PROXY_CONFIG": ""},
    )
    assert out.returncode == 0, out.stderr
    built, threshold_built, frozen, threshold, app = out.stdout.split()
    assert int(built) == 0 and int(threshold_built) != YOUNG_THRESHOLD  # create_app: as it was
    assert int(frozen) > 10_000 and app == "FastAPI"
    assert int(threshold) == YOUNG_THRESHOLD
