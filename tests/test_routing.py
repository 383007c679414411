"""Routing over real sockets: several deployments, retries that honour Retry-After, fallbacks,
the first-token timeout, circuit breakers, and the rule that nothing is retried once a stream
has committed. Each deployment is a fault-injecting fake upstream that records every attempt
with its time, so the tests assert attempts, the gaps between them and who answered."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import openai
import pytest
import requests

from proxy import Settings, create_app
from proxy.errors import InvalidRequest
from tests.fake_upstream import serve_fake
from tests.fault_upstream import (
    Faults,
    cut,
    flapping,
    late,
    malformed,
    ok,
    reset,
    silent,
    stall,
    status,
    truncated,
)
from tests.helpers import run_server

MESSAGES = [{"role": "user", "content": "hi"}]
FAST = {"backoff_seconds": 0.05}  # retries without the default half-second waits


@contextmanager
def routed(
    faults: dict[str, Faults],
    models: dict[str, Any],
    routing: dict[str, Any] | None = None,
    timeouts: dict[str, float] | None = None,
    **settings: Any,
) -> Iterator[str]:
    """Fake upstreams named as in ``faults``, and a proxy routing ``models`` onto them."""
    with ExitStack() as stack:
        upstreams = {}
        for name, handler in faults.items():
            handler.name = name
            fake = stack.enter_context(serve_fake(handler))
            upstreams[name] = {
                "type": "openai",
                "base_url": fake.url,
                "timeouts": {"connect": 2, "first_byte": 5, "idle": 5, **(timeouts or {})},
            }
        config = Settings(
            upstreams=upstreams, models=models, routing={**FAST, **(routing or {})}, **settings
        )
        yield stack.enter_context(run_server(create_app(config)))


@pytest.fixture(autouse=True)
def _quiet_breaker_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="proxy.routing.router")


def post(url: str, model: str, stream: bool, **body: Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "stream": stream, "messages": MESSAGES, **body},
        timeout=60,
    )
    return response, time.monotonic() - started


def text_of(response: requests.Response, stream: bool) -> str:
    assert response.status_code == 200, response.text[:300]
    if not stream:
        return str(response.json()["choices"][0]["message"]["content"])
    lines = [line for line in response.text.split("\n") if line]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    text = ""
    for line in lines[:-1]:
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices") or ():
                text += choice["delta"].get("content") or ""
    return text


def models_of(response: requests.Response, stream: bool) -> set[str]:
    if not stream:
        return {response.json()["model"]}
    return {
        json.loads(line[6:])["model"]
        for line in response.text.split("\n")
        if line.startswith("data: {") and '"model"' in line
    }


def last_event(response: requests.Response) -> dict[str, Any]:
    lines = [line for line in response.text.split("\n") if line]
    assert "data: [DONE]" not in lines
    return dict(json.loads(lines[-1][6:]))


both = pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])


# --- retries within one deployment -----------------------------------------------------------


@both
def test_500_once_then_success(stream: bool) -> None:
    up = Faults(status(500), ok())
    with routed({"a": up}, {"m": {"upstream": "a"}}) as url:
        response, _ = post(url, "m", stream)
    assert text_of(response, stream) == "ok from a"
    assert len(up.attempts) == 2
    assert response.headers["x-proxy-attempts"] == "2"
    assert response.headers["x-proxy-deployment"] == "a/m"


@both
@pytest.mark.parametrize(
    ("headers", "wait"),
    [({"retry_after": "1"}, 1.0), ({"retry_after_ms": "400"}, 0.4), ({}, 0.0)],
    ids=["retry-after", "retry-after-ms", "none"],
)
def test_429_waits_retry_after_before_trying_again(
    stream: bool, headers: dict[str, str], wait: float
) -> None:
    up = Faults(status(429, **headers), ok())
    with routed({"a": up}, {"m": {"upstream": "a"}}) as url:
        response, _ = post(url, "m", stream)
    assert text_of(response, stream) == "ok from a"
    gap = up.gaps()[0]
    assert gap >= max(wait, 0.025) * 0.95, gap  # the larger of Retry-After and the backoff
    assert gap < wait + 1.0, gap


def test_backoff_grows_and_is_jittered() -> None:
    up = Faults(status(503))
    with routed(
        {"a": up},
        {"m": {"upstream": "a"}},
        routing={"retries": 3, "backoff_seconds": 0.2, "cooldown": {"failures": 10}},
    ) as url:
        response, elapsed = post(url, "m", False)
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "a says 503"  # the upstream's own words
    assert len(up.attempts) == 4
    gaps = up.gaps()
    for n, gap in enumerate(gaps, start=1):
        nominal = 0.2 * 2 ** (n - 1)
        assert 0.5 * nominal * 0.9 <= gap <= 1.5 * nominal + 0.3, (n, gaps)
    assert elapsed < 0.2 * (1 + 2 + 4) * 1.5 + 2


def test_never_a_tight_loop_against_429() -> None:
    up = Faults(status(429))
    with routed({"a": up}, {"m": {"upstream": "a"}}, routing={"backoff_seconds": 0.2}) as url:
        response, _ = post(url, "m", True)
    assert response.status_code == 429
    assert len(up.attempts) == 3  # 1 + retries, no more
    assert min(up.gaps()) >= 0.09


def test_long_retry_after_goes_straight_to_the_fallback() -> None:
    primary, fallback = Faults(status(429, retry_after="120")), Faults(ok())
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    with routed({"a": primary, "b": fallback}, models) as url:
        response, elapsed = post(url, "m", True)
    assert text_of(response, True) == "ok from b"
    assert len(primary.attempts) == 1  # taken out of this request, not retried
    assert elapsed < 2
    assert models_of(response, True) == {"f"}  # the public name of the model that answered
    assert response.headers["x-proxy-model"] == "f"


def test_long_retry_after_without_fallback_is_the_clients_429() -> None:
    up = Faults(status(429, retry_after="120"))
    with routed({"a": up}, {"m": {"upstream": "a"}}) as url:
        response, elapsed = post(url, "m", False)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "120"
    assert len(up.attempts) == 1 and elapsed < 2


# --- several deployments and fallbacks ------------------------------------------------------


@both
def test_a_failing_deployment_is_retried_on_another(stream: bool) -> None:
    bad, good = Faults(status(503)), Faults(ok())
    models = {
        "m": {"deployments": [{"upstream": "a", "weight": 1000}, {"upstream": "b", "weight": 1}]}
    }
    with routed({"a": bad, "b": good}, models) as url:
        response, _ = post(url, "m", stream)
    assert text_of(response, stream) == "ok from b"
    assert (len(bad.attempts), len(good.attempts)) == (1, 1)


@both
def test_fallback_answers_under_its_own_name(stream: bool) -> None:
    primary, fallback = Faults(status(503)), Faults(ok())
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b", "model": "small"}}
    with routed({"a": primary, "b": fallback}, models) as url:
        response, _ = post(url, "m", stream)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        if stream:
            chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
            via_sdk = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            sdk_models = {c.model for c in chunks}
        else:
            answer = client.chat.completions.create(model="m", messages=MESSAGES)
            via_sdk, sdk_models = answer.choices[0].message.content, {answer.model}
    assert text_of(response, stream) == "ok from b"
    assert via_sdk == "ok from b" and sdk_models == {"f"}
    assert models_of(response, stream) == {"f"}
    # The first request: 1 + retries on the primary, whose breaker then rests it (3 failures
    # in a row), so the SDK's request went straight to the fallback.
    assert len(primary.attempts) == 3
    assert response.headers["x-proxy-deployment"] == "b/small"


def test_every_attempt_failing_gives_the_last_upstream_error_in_time() -> None:
    primary, fallback = Faults(status(503)), Faults(status(500))
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    with routed({"a": primary, "b": fallback}, models) as url:
        response, elapsed = post(url, "m", True)
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "b says 500"
    assert (len(primary.attempts), len(fallback.attempts)) == (3, 3)
    assert elapsed < 3


@both
def test_context_length_goes_only_to_the_context_fallbacks(stream: bool) -> None:
    primary = Faults(status(400, error_code="context_length_exceeded", message="too long"))
    other, big = Faults(ok()), Faults(ok())
    models = {
        "m": {"upstream": "a", "fallbacks": ["f"], "context_window_fallbacks": ["big"]},
        "f": {"upstream": "b"},
        "big": {"upstream": "c"},
    }
    with routed({"a": primary, "b": other, "c": big}, models) as url:
        response, _ = post(url, "m", stream)
    assert text_of(response, stream) == "ok from c"
    assert (len(primary.attempts), len(other.attempts), len(big.attempts)) == (1, 0, 1)


def test_context_length_without_context_fallbacks_is_the_clients_400() -> None:
    primary = Faults(status(400, error_code="context_length_exceeded", message="too long"))
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    fallback = Faults(ok())
    with routed({"a": primary, "b": fallback}, models) as url:
        response, _ = post(url, "m", True)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "too long",
        "type": "invalid_request_error",
        "param": None,
        "code": "context_length_exceeded",
    }
    assert (len(primary.attempts), len(fallback.attempts)) == (1, 0)


@both
def test_content_policy_400_goes_back_at_once(stream: bool) -> None:
    primary = Faults(status(400, error_code="content_policy_violation", message="refused"))
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    fallback = Faults(ok())
    with routed({"a": primary, "b": fallback}, models) as url:
        response, elapsed = post(url, "m", stream)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_policy_violation"
    assert (len(primary.attempts), len(fallback.attempts)) == (1, 0)
    assert elapsed < 1


# --- timeouts, cut streams and the commit ----------------------------------------------------


@both
def test_silent_upstream_times_out_and_falls_over(stream: bool) -> None:
    primary, fallback = Faults(silent()), Faults(ok())
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    with routed({"a": primary, "b": fallback}, models, timeouts={"first_byte": 0.4}) as url:
        response, elapsed = post(url, "m", stream)
    assert text_of(response, stream) == "ok from b"
    assert len(primary.attempts) == 3
    assert elapsed < 3 * 0.4 + 2  # each attempt bounded by first_byte, then the fallback


def test_silent_upstream_without_fallback_is_504_within_the_budget() -> None:
    up = Faults(silent())
    with routed({"a": up}, {"m": {"upstream": "a"}}, timeouts={"first_byte": 0.3}) as url:
        response, elapsed = post(url, "m", True)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert len(up.attempts) == 3 and elapsed < 3 * 0.3 + 1.5


def test_late_first_token_falls_over_invisibly() -> None:
    slow, fast = Faults(late(3)), Faults(ok())
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    with routed({"a": slow, "b": fast}, models, timeouts={"first_token": 0.3}) as url:
        response, elapsed = post(url, "m", True)
    assert text_of(response, True) == "ok from b"
    assert len(slow.attempts) == 3 and elapsed < 2.5
    lines = [line for line in response.text.split("\n") if line.startswith("data: {")]
    roles = [line for line in lines if '"role"' in line]
    assert len(roles) == 1  # the slow attempts' role chunks never reached the client
    assert models_of(response, True) == {"f"}


def test_first_token_waits_with_headers_and_pings_past_keepalive() -> None:
    slow = Faults(late(1.2))
    with routed({"a": slow}, {"m": {"upstream": "a"}}, keepalive_seconds=0.3) as url:
        started = time.monotonic()
        with requests.post(
            f"{url}/v1/chat/completions",
            json={"model": "m", "stream": True, "messages": MESSAGES},
            stream=True,
            timeout=30,
        ) as response:
            headers_at = time.monotonic() - started
            lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert 0.25 < headers_at < 1.0  # not before keepalive, not after the first token
    assert lines[0] == ": ping"
    assert lines[-1] == "data: [DONE]"


def test_failure_after_keepalive_headers_still_falls_over() -> None:
    slow, fast = Faults(late(5)), Faults(ok())
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    with routed(
        {"a": slow, "b": fast},
        models,
        timeouts={"first_token": 0.8},
        keepalive_seconds=0.3,
        routing={"retries": 0},
    ) as url:
        response, _ = post(url, "m", True)
    assert response.text.startswith(": ping")
    assert text_of(response, True) == "ok from b"


@both
def test_cut_after_content_is_an_error_event_never_a_retry(stream: bool) -> None:
    up = Faults(cut(3), ok())
    with routed({"a": up}, {"m": {"upstream": "a"}}) as url:
        response, _ = post(url, "m", stream)
    if stream:
        assert response.status_code == 200
        assert last_event(response)["error"]["code"] == "upstream_connection_error"
        assert len(up.attempts) == 1  # committed: no replay
    else:  # a non-stream answer breaking before it is complete is retried
        assert text_of(response, stream) == "ok from a"
        assert len(up.attempts) == 2


def test_stall_mid_stream_is_an_error_event() -> None:
    up = Faults(stall(2), ok())
    with routed({"a": up}, {"m": {"upstream": "a"}}, timeouts={"idle": 0.4}) as url:
        response, _ = post(url, "m", True)
    assert last_event(response)["error"]["code"] == "upstream_idle_timeout"
    assert len(up.attempts) == 1


@both
def test_malformed_before_content_is_retried(stream: bool) -> None:
    up = Faults(malformed(), ok())
    with routed({"a": up}, {"m": {"upstream": "a"}}) as url:
        response, _ = post(url, "m", stream)
    assert text_of(response, stream) == "ok from a"
    assert len(up.attempts) == 2


def test_malformed_after_content_is_an_error_event() -> None:
    up = Faults(malformed(after=2), ok())
    with routed({"a": up}, {"m": {"upstream": "a"}}) as url:
        response, _ = post(url, "m", True)
    assert last_event(response)["error"]["code"] == "upstream_malformed"
    assert len(up.attempts) == 1


def test_end_without_done_or_finish() -> None:
    before, after = Faults(truncated(0), ok()), Faults(truncated(2), ok())
    with routed({"a": before, "b": after}, {"m": {"upstream": "a"}, "n": {"upstream": "b"}}) as url:
        retried, _ = post(url, "m", True)
        cut_off, _ = post(url, "n", True)
    assert text_of(retried, True) == "ok from a" and len(before.attempts) == 2
    assert last_event(cut_off)["error"]["code"] == "upstream_truncated"
    assert len(after.attempts) == 1


def test_reset_before_headers_is_retried() -> None:
    up = Faults(reset(), reset(), ok())  # the wire sends a reset request once more itself
    with routed({"a": up}, {"m": {"upstream": "a"}}) as url:
        response, _ = post(url, "m", True)
    assert text_of(response, True) == "ok from a"


# --- strategies and breakers ------------------------------------------------------------------


def test_weighted_first_attempts_follow_the_weights() -> None:
    a, b = Faults(ok()), Faults(ok())
    models = {
        "m": {"deployments": [{"upstream": "a", "weight": 3}, {"upstream": "b", "weight": 1}]}
    }
    with routed({"a": a, "b": b}, models) as url:
        for _ in range(200):
            post(url, "m", False)
    share = len(a.attempts) / 200
    assert 0.62 < share < 0.88, share  # 0.75 expected


def test_least_busy_spreads_concurrent_streams() -> None:
    a, b = Faults(ok(delay=0.3)), Faults(ok(delay=0.3))
    models = {
        "m": {"deployments": [{"upstream": "a"}, {"upstream": "b"}], "strategy": "least_busy"}
    }
    with routed({"a": a, "b": b}, models) as url:
        threads = [threading.Thread(target=post, args=(url, "m", True)) for _ in range(10)]
        for thread in threads:
            thread.start()
            time.sleep(0.02)
        for thread in threads:
            thread.join(30)
    assert (len(a.attempts), len(b.attempts)) == (5, 5)


def test_lowest_latency_prefers_the_fast_deployment() -> None:
    slow, fast = Faults(late(0.3)), Faults(ok())
    models = {
        "m": {"deployments": [{"upstream": "a"}, {"upstream": "b"}], "strategy": "lowest_latency"}
    }
    with routed({"a": slow, "b": fast}, models) as url:
        for _ in range(30):
            post(url, "m", True)
    assert len(slow.attempts) <= 2  # measured once (maybe twice), then avoided
    assert len(fast.attempts) >= 28


def test_breaker_rests_a_failing_deployment_then_probes_once() -> None:
    primary, fallback = Faults(status(503)), Faults(ok())
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    routing = {"retries": 0, "cooldown": {"failures": 3, "seconds": 1.0}}
    with routed({"a": primary, "b": fallback}, models, routing=routing) as url:
        for _ in range(3):
            assert text_of(post(url, "m", False)[0], False) == "ok from b"
        assert len(primary.attempts) == 3
        started = time.monotonic()
        for _ in range(5):  # resting: straight to the fallback, no waiting
            assert text_of(post(url, "m", False)[0], False) == "ok from b"
        assert len(primary.attempts) == 3 and time.monotonic() - started < 1.0
        time.sleep(1.1)
        threads = [threading.Thread(target=post, args=(url, "m", True)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(primary.attempts) == 4  # exactly one probe, which failed: resting again
        metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert 'proxy_breaker_changes_total{deployment="a/m",state="open"} 2.0' in metrics
    assert 'proxy_breaker_changes_total{deployment="a/m",state="half_open"} 1.0' in metrics


def test_flapping_deployment_traffic_moves_away_and_back() -> None:
    down_until = time.monotonic() + 2.0
    primary = Faults(flapping(down_until, status(503), ok()))
    fallback = Faults(ok())
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    routing = {"retries": 0, "cooldown": {"failures": 2, "seconds": 0.5}}
    answers: list[tuple[float, str]] = []
    with routed({"a": primary, "b": fallback}, models, routing=routing) as url:
        while time.monotonic() < down_until + 2.0:
            response, _ = post(url, "m", True)
            answers.append((time.monotonic(), text_of(response, True)))
            time.sleep(0.05)
    during = Counter(text for at, text in answers if at < down_until)
    after = Counter(text for at, text in answers if at > down_until + 0.7)
    assert set(during) == {"ok from b"}  # while it is down, the fallback serves everyone
    assert set(after) == {"ok from a"}  # once it is back (after a probe), it serves again
    # While down, the breaker kept traffic off it: far fewer attempts than requests.
    assert len([t for t in primary.attempts if t < down_until]) < sum(during.values()) / 2


# --- what is recorded ---------------------------------------------------------------------


def test_access_line_and_metrics_record_every_attempt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    primary, fallback = Faults(status(503), status(500)), Faults(ok())
    models = {"m": {"upstream": "a", "fallbacks": ["f"]}, "f": {"upstream": "b"}}
    with routed({"a": primary, "b": fallback}, models, routing={"retries": 1}) as url:
        response, _ = post(url, "m", True, stream_options={"include_usage": True})
        metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert text_of(response, True) == "ok from b"
    line = next(r.fields for r in caplog.records if r.name == "proxy.access")  # type: ignore[attr-defined]
    assert line["attempts"] == 3
    assert line["tried"] == "a/m:status,a/m:status,b/f:ok"
    assert line["answered_as"] == "f" and line["upstream"] == "b"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (3, 2)  # the answer's only
    assert (
        'proxy_upstream_attempts_total{deployment="a/m",model="m",result="status"} 2.0' in metrics
    )
    assert 'proxy_upstream_attempts_total{deployment="b/f",model="f",result="ok"} 1.0' in metrics
    assert 'proxy_retries_total{model="m"} 1.0' in metrics
    assert 'proxy_fallbacks_total{fallback="f",model="m"} 1.0' in metrics
    usage = [
        json.loads(x[6:])
        for x in response.text.split("\n")
        if '"usage"' in x and x.startswith("data: {")
    ]
    assert [u["usage"]["total_tokens"] for u in usage if u.get("usage")] == [5]  # counted once


def test_a_plan_raises_its_end_once_then_says_it_has_ended() -> None:
    """A plan lets go of the error that ends it when it raises it (kept, its traceback's
    frames would hold the plan: a cycle per failed request, tests/test_heap.py); iterated
    again, it neither tries again nor invents another error."""
    from proxy.services import Services

    settings = Settings(upstreams={"echo": {"type": "echo"}}, models={"m": {"upstream": "echo"}})
    router = Services.build(settings).router

    async def run() -> None:
        plan = router.plan("m")
        attempt = await plan.__anext__()
        plan.failed(attempt, InvalidRequest("no", param="messages"))  # never retried
        with pytest.raises(InvalidRequest, match="no"):
            await plan.__anext__()
        with pytest.raises(RuntimeError, match="has ended"):
            await plan.__anext__()
        assert len(plan.attempts) == 1  # no second attempt was made

    asyncio.run(run())
