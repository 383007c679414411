"""Keys and limits through the proxy, over real sockets: named keys (key and key_sha256, Bearer
and x-api-key), model allowlists, rpm / tpm / max_parallel exact in one process (memory) and
across two proxy processes sharing a real Redis, and Redis going away and coming back."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import Settings, create_app
from tests.helpers import free_port, run_server
from tests.redis_server import running_redis
from tests.test_process import proxy_process

TEAM_A = "sk-team-a-0123456789abcdef"
TEAM_B = "team-b-without-a-prefix-42"
MESSAGES = [{"role": "user", "content": "one two three"}]


def keys(**team_a: Any) -> list[dict[str, Any]]:
    return [
        {"name": "team-a", "key": TEAM_A, **team_a},
        {
            "name": "team-b",
            "key_sha256": hashlib.sha256(TEAM_B.encode()).hexdigest(),
            "models": ["echo"],
        },
    ]


def settings(echo_delay: float = 0, **overrides: Any) -> Settings:
    return Settings(
        upstreams={"echo": {"type": "echo", "delay_ms": echo_delay * 1000}},
        models={"echo": {"upstream": "echo"}, "other": {"upstream": "echo"}},
        **overrides,
    )


def chat(
    url: str, key: str | None, model: str = "echo", header: str = "bearer", **body: Any
) -> httpx.Response:
    headers = {}
    if key is not None:
        headers = {"authorization": f"Bearer {key}"} if header == "bearer" else {"x-api-key": key}
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, **body},
        headers=headers,
        timeout=30,
    )


def burst(url: str, key: str, count: int, **body: Any) -> Counter[int]:
    with ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(lambda _: chat(url, key, **body).status_code, range(count)))
    return Counter(statuses)


# --- keys -------------------------------------------------------------------------------------


def test_named_keys_bearer_and_x_api_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    with run_server(create_app(settings(keys=keys()))) as url:
        assert chat(url, TEAM_A).status_code == 200
        assert chat(url, TEAM_B, header="x-api-key").status_code == 200  # key_sha256
        assert chat(url, TEAM_A, header="x-api-key").status_code == 200
        missing, wrong = chat(url, None), chat(url, "sk-nope-nope-nope")
        metrics = httpx.get(f"{url}/metrics").text
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    names = [r.fields["key"] for r in caplog.records if r.name == "proxy.access"]  # type: ignore[attr-defined]
    assert names[:3] == ["team-a", "team-b", "team-a"]
    assert 'proxy_key_requests_total{key="team-a",status="200"} 2.0' in metrics
    logged = "\n".join(
        r.getMessage() + json.dumps(getattr(r, "fields", {})) for r in caplog.records
    )
    for secret in (TEAM_A, TEAM_B):
        assert secret not in logged and secret not in metrics


def test_allowlist_is_403_and_not_counted() -> None:
    with run_server(create_app(settings(keys=keys(rpm=1)))) as url:
        refused = chat(url, TEAM_B, model="other")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "model_not_allowed"
        assert refused.json()["error"]["param"] == "model"
        # team-a (rpm 1) is counted on its own: its one request of the minute is still free.
        assert chat(url, TEAM_A).status_code == 200
        assert chat(url, TEAM_A).status_code == 429


def test_models_lists_only_what_the_key_may_use() -> None:
    with run_server(create_app(settings(keys=keys()))) as url:
        headers_b = {"authorization": f"Bearer {TEAM_B}"}
        team_b = httpx.get(f"{url}/v1/models", headers=headers_b).json()
        team_a = httpx.get(f"{url}/v1/models", headers={"x-api-key": TEAM_A}).json()
        anonymous = httpx.get(f"{url}/v1/models")
    assert [m["id"] for m in team_b["data"]] == ["echo"]
    assert sorted(m["id"] for m in team_a["data"]) == ["echo", "other"]
    assert anonymous.status_code == 401


def test_api_keys_keep_working_alongside_named_keys() -> None:
    with run_server(create_app(settings(api_keys=["sk-old-style-key-1"], keys=keys()))) as url:
        assert chat(url, "sk-old-style-key-1").status_code == 200
        assert chat(url, TEAM_A).status_code == 200


# --- limits in one process (memory) ------------------------------------------------------


def test_rpm_is_exact_under_a_burst_with_openai_headers() -> None:
    with run_server(create_app(settings(keys=keys(rpm=5)))) as url:
        statuses = burst(url, TEAM_A, 15)
        refused = chat(url, TEAM_A)
    assert statuses == {200: 5, 429: 10}
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "requests"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")


def test_every_answer_carries_the_ratelimit_headers() -> None:
    with run_server(create_app(settings(keys=keys(rpm=10, tpm=100000)))) as url:
        first = chat(url, TEAM_A)
        streamed = chat(url, TEAM_A, stream=True)
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    assert streamed.headers["x-ratelimit-remaining-requests"] == "8"
    assert streamed.headers["x-ratelimit-limit-tokens"] == "100000"
    assert "x-ratelimit-reset-tokens" in streamed.headers


def test_tpm_reserves_up_front_then_charges_the_real_figure() -> None:
    # Each request reserves its body (~40 tokens) + max_tokens (100): under a tpm of 300 two
    # fit at once, a third does not, however concurrent. When they end, the real figures (a
    # few tokens of echo) replace the reservations and the window has room again.
    with run_server(create_app(settings(echo_delay=0.2, keys=keys(tpm=300)))) as url:
        statuses = burst(url, TEAM_A, 6, max_tokens=100, stream=True)
        after = chat(url, TEAM_A, max_tokens=100)
    assert statuses == {200: 2, 429: 4}
    assert after.status_code == 200
    assert after.json()["usage"]["total_tokens"] < 20


@contextmanager
def held_streams(url: str, key: str, count: int) -> Iterator[list[Any]]:
    """``count`` streams of the slow echo, held open (their first chunk read) until exit."""
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=30))
        streams = []
        for _ in range(count):
            response = stack.enter_context(
                client.stream(
                    "POST",
                    f"{url}/v1/chat/completions",
                    json={
                        "model": "echo",
                        "stream": True,
                        "messages": [{"role": "user", "content": " w" * 100}],
                    },
                    headers={"authorization": f"Bearer {key}"},
                )
            )
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            streams.append((response, lines))
        yield streams


def test_max_parallel_is_released_on_disconnect_and_on_completion() -> None:
    with run_server(create_app(settings(echo_delay=0.1, keys=keys(max_parallel=2)))) as url:
        with held_streams(url, TEAM_A, 2):
            refused = chat(url, TEAM_A)
            assert refused.status_code == 429
            assert refused.json()["error"]["type"] == "requests"
            assert "parallel" in refused.json()["error"]["message"]
        # Both clients left mid-stream: their slots are free again within a moment.
        deadline = time.monotonic() + 3
        while chat(url, TEAM_A).status_code != 200:
            assert time.monotonic() < deadline, "the slots of the departed clients leaked"
            time.sleep(0.05)
        for _ in range(4):  # one at a time: completed requests free their slots
            assert chat(url, TEAM_A).status_code == 200


def test_max_parallel_is_released_after_upstream_errors() -> None:
    config = Settings(
        upstreams={"dead": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}},
        models={"echo": {"upstream": "dead"}},
        routing={"retries": 0, "cooldown": {"failures": 100}},
        keys=keys(max_parallel=1),
    )
    with run_server(create_app(config)) as url:
        for _ in range(5):
            assert chat(url, TEAM_A).status_code == 502  # refused upstream, slot freed each time


def test_a_rejected_request_does_not_use_up_the_minute() -> None:
    # An allowlist 403 and a 401 are not admitted: they do not count against rpm.
    with run_server(create_app(settings(keys=keys(rpm=2, models=["echo"])))) as url:
        for _ in range(3):
            assert chat(url, TEAM_A, model="other").status_code == 403
        assert [chat(url, TEAM_A).status_code for _ in range(3)] == [200, 200, 429]


# --- Redis: shared by processes; down and back ----------------------------------------------


def proxy_config(tmp: Path, redis_url: str, name: str, **limits: Any) -> Path:
    config = tmp / f"{name}.yaml"
    config.write_text(
        json.dumps(
            {
                "upstreams": {"echo": {"type": "echo", "delay_ms": 0}},
                "models": {"echo": {"upstream": "echo"}},
                "keys": keys(rpm=20),
                "limits": {"backend": "redis", "redis_url": redis_url, **limits},
            }
        )
    )
    return config


def test_rpm_is_exact_across_two_processes_sharing_redis(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis, ExitStack() as stack:
        urls = []
        for name in ("one", "two"):
            port = free_port()
            config = proxy_config(tmp_path, redis.url, name)
            args = [sys.executable, "-m", "proxy", "--config", str(config), "--port", str(port)]
            workdir = tmp_path / name
            workdir.mkdir()
            urls.append(stack.enter_context(proxy_process(args, workdir, port=port))[1])
        with ThreadPoolExecutor(60) as pool:
            statuses = list(pool.map(lambda i: chat(urls[i % 2], TEAM_A).status_code, range(60)))
    per_process = [Counter(statuses[i::2])[200] for i in (0, 1)]
    print(
        f"\nburst of 60 over 2 processes, rpm 20: admitted {per_process} (sum {sum(per_process)})"
    )
    assert Counter(statuses) == {200: 20, 429: 40}


@pytest.mark.parametrize("policy", ["deny", "allow"])
def test_redis_down_then_back(tmp_path: Path, policy: str) -> None:
    with running_redis(tmp_path) as redis:
        limits = {"backend": "redis", "redis_url": redis.url, "on_backend_error": policy}
        with run_server(create_app(settings(keys=keys(rpm=1000), limits=limits))) as url:
            assert chat(url, TEAM_A).status_code == 200
            assert httpx.get(f"{url}/readyz").status_code == 200
            redis.freeze()  # accepts connections, never answers: the worst outage
            answers = []
            for _ in range(5):
                started = time.monotonic()
                response = chat(url, TEAM_A)
                answers.append((response.status_code, time.monotonic() - started))
            readyz = httpx.get(f"{url}/readyz", timeout=10)
            ready_while_down = (readyz.status_code, readyz.json())
            redis.thaw()
            redis.restart()  # and a restart: an empty Redis
            back = time.monotonic()
            # Checked (not let through) and ready again, within 10 s.
            while (
                chat(url, TEAM_A).headers.get("x-ratelimit-limit-requests") != "1000"
                or httpx.get(f"{url}/readyz").status_code != 200
            ):
                assert time.monotonic() - back < 10, "not admitted again within 10 s"
                time.sleep(0.2)
            recovered = time.monotonic() - back
            ready_after = httpx.get(f"{url}/readyz").status_code
    print(
        f"\nRedis frozen ({policy}): {answers}; admitted again {recovered:.2f} s after it came back"
    )
    expected = 503 if policy == "deny" else 200
    assert [status for status, _ in answers] == [expected] * 5
    assert all(took < 2 for _, took in answers)
    if policy == "deny":  # every limited request would get 503: not ready
        assert ready_while_down == (503, {"status": "not ready", "limits": "unavailable"})
    else:  # serving unchecked, and saying so
        assert ready_while_down == (200, {"status": "ready", "limits": "unavailable"})
    assert ready_after == 200


def test_limits_unavailable_is_a_clear_503(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    limits = {"backend": "redis", "redis_url": dead, "on_backend_error": "deny"}
    with run_server(create_app(settings(keys=keys(rpm=5), limits=limits))) as url:
        response = chat(url, TEAM_A)
        unlimited = chat(url, TEAM_B)  # a key without limits needs no backend
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "limits_unavailable" and "127.0.0.1" not in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert unlimited.status_code == 200


def test_concurrent_streams_under_tpm_on_redis(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis:
        limits = {"backend": "redis", "redis_url": redis.url}
        with run_server(
            create_app(settings(echo_delay=0.2, keys=keys(tpm=300), limits=limits))
        ) as url:
            statuses = burst(url, TEAM_A, 6, max_tokens=100, stream=True)
    assert statuses == {200: 2, 429: 4}
