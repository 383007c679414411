"""`podman stop` (SIGTERM) during live streams: readiness is lost at once, streams get the
grace period, the container exits 0 within it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from tests.container.engine import Stream, container, mounted, podman, stream

pytestmark = pytest.mark.usefixtures("image")

GRACE = 3.0
CONFIG = f"""\
shutdown_grace_seconds: {GRACE}
upstreams: {{echo: {{type: echo, delay_ms: 100, chunk: word}}}}
models: {{echo: {{upstream: echo}}}}
"""


def readiness(url: str) -> str:
    """/readyz on a new connection: its status, or "refused"."""
    try:
        return str(requests.get(f"{url}/readyz", timeout=2).status_code)
    except requests.ConnectionError:
        return "refused"


def test_stop_during_streams_drains_then_exits_0(tmp_path: Path) -> None:
    answers: dict[str, Stream] = {}

    def read(url: str, name: str, words: int) -> None:
        answers[name] = stream(url, " ".join(f"w{i}" for i in range(words)))

    with container(*mounted(tmp_path, CONFIG)) as proxy:
        url = proxy.url
        assert readiness(url) == "200"
        readers = [
            threading.Thread(target=read, args=(url, "short", 10)),  # ~1 s: ends within the grace
            threading.Thread(target=read, args=(url, "long", 100)),  # ~10 s: does not
        ]
        for reader in readers:
            reader.start()
        time.sleep(0.5)
        stopper = threading.Thread(target=podman, args=("stop", "--time", "30", proxy.name))
        signalled = time.monotonic()
        stopper.start()  # SIGTERM now; SIGKILL only after 30 s
        seen = []
        while time.monotonic() - signalled < 1.0:
            seen.append(readiness(url))
            time.sleep(0.01)
        for reader in readers:
            reader.join(30)
        stopper.join(40)
        code = proxy.wait_exit(timeout=5)
        exited = time.monotonic() - signalled
        logs = proxy.logs()
    print(f"\n/readyz after SIGTERM: {' '.join(dict.fromkeys(seen))}; exited {exited:.2f} s")
    # Readiness is lost at once and for good: 503 while the proxy still listens (a few tens of
    # ms), then the port is closed.
    lost = next(i for i, answer in enumerate(seen) if answer != "200")
    assert lost <= 10, seen  # within ~0.1 s
    assert set(seen[lost:]) <= {"503", "refused"}, seen
    short, long = answers["short"], answers["long"]
    assert short.last == "[DONE]" and len(short.words) == 10  # finished within the grace
    assert '"code":"shutting_down"' in long.last  # ended by the grace, with the error event
    assert 20 <= len(long.words) < 100, len(long.words)  # streamed on through the grace
    assert code == 0
    assert GRACE - 0.5 < exited < GRACE + 2, exited  # exited once the grace was over
    assert "Traceback" not in logs
