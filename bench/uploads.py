"""The upload bench: multipart uploads direct to a fake upstream and through the proxy, and the
proxy's memory during a 1 GB upload.

    python -m bench.uploads            # about a minute (512 MiB x 2 for the rate, 1 GiB x 2)
    python -m bench.uploads --quick    # a smoke run in seconds (CI), figures meaningless

The fake upstream (``tests/upload_upstream.py``: it parses every part as it arrives) and the
client (this process: a raw socket sending one random 1 MiB block over and over, so that
making the bytes costs nothing) run on core 1, the proxy on core 0, as in ``bench/run.py``.
The rate is the file's bytes over the time from the first byte sent to the answer received.
Memory: the proxy's resident set sampled every 0.1 s, and its kernel-kept peak (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench.run import ProcStats, Table, free_port, pinned, process

MiB = 1024 * 1024
BOUNDARY = "benchUploadBoundary"
BLOCK = os.urandom(MiB)


def framing(model_first: bool) -> tuple[bytes, bytes]:
    """What goes before the file's bytes and after them."""
    model = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nbench\r\n'
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    end = f"--{BOUNDARY}--\r\n"
    if model_first:
        return (model + head).encode(), ("\r\n" + end).encode()
    return head.encode(), ("\r\n" + model + end).encode()


def upload(port: int, size: int, model_first: bool = True) -> float:
    """Send one upload of ``size`` bytes; its rate in MB/s (10^6 bytes per second)."""
    before, after = framing(model_first)
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(before) + size + len(after)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sock.sendall(head + before)
        view = memoryview(BLOCK)
        for start in range(0, size, MiB):
            sock.sendall(view[: min(MiB, size - start)])
        sock.sendall(after)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the connection closed before an answer")
            answer += data
        seconds = time.perf_counter() - started
    status = answer.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"upload answered {answer[:300]!r}")
    return size / seconds / 1e6


def hwm(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: seconds, not minutes")
    args = parser.parse_args()
    rate_size, big = (16 * MiB, 32 * MiB) if args.quick else (512 * MiB, 1024 * MiB)
    os.sched_setaffinity(0, {1} if (os.cpu_count() or 1) > 1 else {0})  # the client: core 1
    up_port, proxy_port = free_port(), free_port()
    table = Table()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(
            f"upstreams: {{up: {{type: openai, base_url: 'http://127.0.0.1:{up_port}/v1'}}}}\n"
            "models: {bench: {upstream: up}}\n"
            f"max_upload_bytes: {4 * big}\n"
        )
        upstream_cmd = [sys.executable, "-m", "tests.upload_upstream", "--port", str(up_port)]
        proxy_cmd = [sys.executable, "-m", "proxy", "--config", str(config)]
        proxy_cmd += ["--port", str(proxy_port)]
        with (
            process(pinned(1, upstream_cmd), up_port, Path(tmp) / "upstream.log"),
            process(pinned(0, proxy_cmd), proxy_port, Path(tmp) / "proxy.log") as proxy,
        ):
            stats = ProcStats(proxy.pid)
            for model_first in (True, False):  # warm up both paths
                upload(proxy_port, 4 * MiB, model_first)
            direct = max(upload(up_port, rate_size) for _ in range(2))
            before = stats.cpu()
            proxied = max(upload(proxy_port, rate_size) for _ in range(2))
            cpu = (stats.cpu() - before) / (2 * rate_size / 1e9)
            label = f"{rate_size // MiB} MiB upload, model first: MB/s"
            table.add(label, direct, proxied, "MB/s")
            table.note("proxy CPU per GB uploaded", f"{cpu:.2f} s")
            baseline = stats.rss() / MiB
            table.note("proxy RSS before the big uploads", f"{baseline:.0f} MiB")
            for model_first, name in ((True, "model first"), (False, "file first (spooled)")):
                with stats.sampling():
                    rate = upload(proxy_port, big, model_first)
                direct_rate = upload(up_port, big, model_first)
                table.add(f"{big // MiB} MiB upload, {name}: MB/s", direct_rate, rate, "MB/s")
                table.note(
                    f"{big // MiB} MiB upload, {name}: proxy peak RSS",
                    f"{stats.peak / MiB:.0f} MiB (VmHWM {hwm(proxy.pid):.0f} MiB)",
                )
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
