"""nginx (the host's, with config/nginx.conf) in front of two proxy containers: streams stay
true, requests are spread over both replicas, and stopping one loses no request."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from tests.container.engine import ECHO_100MS, Container, container, mounted, podman, stream
from tests.container.gateway import nginx, replicas_site
from tests.helpers import assert_true_streaming, free_port

pytestmark = pytest.mark.usefixtures("image")


@contextmanager
def behind_nginx(tmp_path: Path, config: str) -> Iterator[tuple[str, list[Container]]]:
    """Two replicas with ``config``, nginx in front; yields (nginx URL, replicas)."""
    with ExitStack() as stack:
        replicas = [stack.enter_context(container(*mounted(tmp_path, config))) for _ in range(2)]
        port = free_port()
        site = replicas_site([replica.port for replica in replicas], port)
        url = stack.enter_context(nginx(site, tmp_path, port))
        yield url, replicas


def served_by(replicas: list[Container], request_ids: list[str]) -> list[int | None]:
    """Which replica's access log has each request id (index into replicas, or None)."""
    logged = [{line["request_id"] for line in replica.access_log()} for replica in replicas]
    return [next((i for i, ids in enumerate(logged) if rid in ids), None) for rid in request_ids]


def test_streams_stay_true_through_nginx_and_spread_over_both(tmp_path: Path) -> None:
    with behind_nginx(tmp_path, ECHO_100MS) as (url, replicas):
        answers = [stream(url) for _ in range(2)]  # one after the other: round robin
        quick = [requests.get(f"{url}/v1/models", timeout=10) for _ in range(20)]
        assert all(response.status_code == 200 for response in quick)
        answered_by = served_by(replicas, [answer.request_id for answer in answers])
        counts = Counter(served_by(replicas, [r.headers["x-request-id"] for r in quick]))
    for answer in answers:
        assert answer.last == "[DONE]"
        first, total = answer.times[0] - answer.started, answer.times[-1] - answer.started
        print(f"\nnginx, 2 replicas: first word at {first * 1000:.0f} ms of {total * 1000:.0f} ms")
        assert_true_streaming(answer.times, answer.started, 0.1)
    assert sorted(answered_by, key=str) == [0, 1], answered_by  # one stream each
    assert None not in counts, counts  # every X-Request-ID is in a replica's log
    assert min(counts[0], counts[1]) >= 5, counts


SHORT_STREAMS = """\
shutdown_grace_seconds: 3
upstreams: {echo: {type: echo, delay_ms: 20, chunk: word}}
models: {echo: {upstream: echo}}
"""


def test_stopping_one_replica_loses_no_request(tmp_path: Path) -> None:
    """A steady stream of short requests while one replica is stopped (SIGTERM): each one
    succeeds, whether it was in flight on that replica (it finishes in the grace period) or
    arrived after (nginx passes it to the other replica)."""
    outcomes: list[tuple[float, str, str]] = []  # (sent at, request id or "", error or "")
    done = threading.Event()

    def client(url: str) -> None:
        with requests.Session() as session:
            while not done.is_set():
                sent = time.monotonic()
                try:
                    answer = stream(url, "one two three", session=session)
                    good = answer.text == "one two three" and answer.last == "[DONE]"
                    outcomes.append((sent, answer.request_id, "" if good else answer.last))
                except (AssertionError, requests.RequestException) as exc:
                    outcomes.append((sent, "", repr(exc)))

    with behind_nginx(tmp_path, SHORT_STREAMS) as (url, replicas):
        clients = [threading.Thread(target=client, args=(url,)) for _ in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(1.5)
        stopped = time.monotonic()
        podman("stop", "--time", "20", replicas[0].name)  # returns once it has exited
        exited = time.monotonic() - stopped
        time.sleep(1.5)
        done.set()
        for thread in clients:
            thread.join(30)
        code = replicas[0].state()["ExitCode"]
        where = served_by(replicas, [rid for _, rid, _ in outcomes])
    failed = [outcome for outcome in outcomes if outcome[2]]
    before = Counter(r for (sent, _, _), r in zip(outcomes, where, strict=True) if sent < stopped)
    after = Counter(
        r for (sent, _, _), r in zip(outcomes, where, strict=True) if sent > stopped + exited
    )
    print(
        f"\n{len(outcomes)} requests, {len(failed)} failed; replica 0 exited {exited:.2f} s after "
        f"SIGTERM with {code}; before the stop {dict(before)}, after it exited {dict(after)}"
    )
    assert failed == []
    assert code == 0
    assert before[0] > 10 and before[1] > 10  # both were serving
    assert after[1] > 10 and after[0] == 0  # then only the one left
    assert None not in where  # every request is in one replica's access log
