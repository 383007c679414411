"""A throwaway ``redis-server`` for the tests: a real server on a free port of 127.0.0.1.

Debian's package (``apt-get install redis-server``; CI installs it). Without it the tests that
need it are skipped on a developer's machine, but fail under CI (env ``CI`` set): a CI that
silently skips the only proof of the shared limits would be green for nothing.

The server keeps nothing on disk (``--save "" --appendonly no``) and can be stopped and
started again on the same port, or frozen (SIGSTOP: it accepts connections and never
answers, the nastiest outage for a client), to test outages in the middle of a run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def redis_server_path() -> str:
    """The ``redis-server`` binary, or skip the test (fail under CI) when there is none."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is missing; CI must install it (apt-get install redis-server)"
            )
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_ping(port: int, timeout: float = 0.5) -> bool:
    """True if a server on ``port`` answers PING (raw RESP: no client library involved)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``start``/``stop`` may be called again, on the same port."""

    def __init__(self, workdir: Path, *, cluster: bool = False) -> None:
        self.binary = redis_server_path()
        self.workdir = workdir
        self.cluster = cluster
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        args += ["--loglevel", "warning", "--logfile", str(self.workdir / "redis.log")]
        if self.cluster:
            # The bus port defaults to port + 10000, past 65535 for a high ephemeral port.
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-port", str(free_port())]
        return args

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self._process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server did not come up on {self.port}:\n{log}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (thawing it first if frozen); the port is free again afterwards."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is ever answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)


@contextmanager
def running_redis(workdir: Path, *, cluster: bool = False) -> Iterator[RedisServer]:
    """A started server, stopped on exit. A cluster node also gets every slot assigned (a
    one-node cluster): enough for Redis to enforce its one-slot rule on multi-key scripts."""
    server = RedisServer(workdir, cluster=cluster)
    server.start()
    try:
        if cluster:
            _own_all_slots(server.port)
        yield server
    finally:
        server.stop()


def _own_all_slots(port: int) -> None:
    """``CLUSTER ADDSLOTSRANGE 0 16383`` and wait until the cluster says ``ok``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"CLUSTER ADDSLOTSRANGE 0 16383\r\n")
        reply = sock.recv(256)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"CLUSTER ADDSLOTSRANGE failed: {reply!r}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sock.sendall(b"CLUSTER INFO\r\n")
            if b"cluster_state:ok" in sock.recv(4096):
                return
            time.sleep(0.05)
    raise RuntimeError("the one-node cluster did not reach cluster_state:ok")
