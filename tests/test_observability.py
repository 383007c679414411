"""Metrics, access log and usage accounting, after real requests over real sockets."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from proxy import Settings, create_app
from proxy.observability.logs import JSONFormatter, TextFormatter
from tests.fake_upstream import Recorded, Reply, completion, serve_fake, sse_response
from tests.helpers import echo_settings, free_port, run_server, upstream_settings
from tests.test_process import proxy_process
from tests.test_upstream import DONE, GOOD, ROLE, chunk

KEY = "sk-upstream-observe-123456"
USAGE = b'data: {"id":"up-1","object":"chat.completion.chunk","created":1,"model":"x","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}\n\n'
MESSAGES = [{"role": "user", "content": "a secret plan"}]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples_of(response.text)


def samples_of(text: str) -> Samples:
    """Every sample of a /metrics text as {(name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def settings_for(url: str, **overrides: Any) -> Settings:
    overrides.setdefault("routing", {"retries": 0})  # one attempt each: counted below
    return upstream_settings(url, key=KEY, up={"timeouts": {"idle": 0.5}}, **overrides)


def handler(request: Recorded, reply: Reply) -> Any:
    """Scenario by the prompt: 'ok' (with usage), 'nousage', 'slow' (for disconnects), 'stall'."""
    prompt = request.json()["messages"][-1]["content"]

    async def run() -> None:
        if prompt == "ok":
            await sse_response(ROLE, chunk("Hel"), chunk("lo"), chunk(finish="stop"), USAGE, DONE)(
                request, reply
            )
        elif prompt == "nousage":
            await sse_response(*GOOD)(request, reply)
        elif prompt == "json":
            await reply.json(200, completion("你好 there"))
        elif prompt == "slow":
            await reply.start()
            await reply.send(ROLE)
            while not reply.peer_closed.is_set():
                await reply.send(chunk("w "))
                await asyncio_sleep(0.05)
        else:  # "stall": headers and the role chunk, then silence past the idle timeout
            await reply.start()
            await reply.send(ROLE)
            await reply.until_closed(5)

    return run()


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def stream(url: str, prompt: str, **extra: Any) -> list[str]:
    body = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=30) as r:
        return [line for line in r.iter_lines(decode_unicode=True) if line]


def test_metrics_after_real_streams() -> None:
    with serve_fake(handler) as fake, run_server(create_app(settings_for(fake.url))) as url:
        assert stream(url, "ok")[-1] == "data: [DONE]"
        assert "error" in stream(url, "stall")[-1]  # an idle upstream before content: 504
        with requests.post(
            f"{url}/v1/chat/completions",
            stream=True,
            timeout=30,
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "slow"}]},
        ) as r:
            events = (line for line in r.iter_lines() if line)
            for _ in range(3):
                next(events)  # role and two words, then walk away
        time.sleep(0.3)
        httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "ok"}]},
        )
        httpx.post(
            f"{url}/v1/chat/completions", json={"model": "nope", "messages": MESSAGES}
        )  # 404, no model label
        samples = scrape(url)

    m = {"model": "m", "upstream": "up"}
    assert value(samples, "proxy_requests_total", **m, stream="true", status="200") == 2
    # "stall" failed before any content: nothing committed, an HTTP 504 (issue 15).
    assert value(samples, "proxy_requests_total", **m, stream="true", status="504") == 1
    assert value(samples, "proxy_requests_total", **m, stream="false", status="200") == 1
    assert value(samples, "proxy_client_disconnects_total", **m) == 1
    assert value(samples, "proxy_upstream_errors_total", upstream="up", kind="idle_timeout") == 1
    assert value(samples, "proxy_streams_in_flight", **m) == 0
    # TTFT: the three streams all wrote a first content chunk ("stall" did not).
    assert value(samples, "proxy_time_to_first_token_seconds_count", **m) == 2
    assert value(samples, "proxy_time_to_first_token_seconds_sum", **m) > 0
    # Gaps: "ok" wrote role, 2 contents, finish (its usage chunk was not asked for) = 4 chunks,
    # 3 gaps; "slow" at least 3 chunks, 2 gaps; "stall" no chunk at all.
    assert value(samples, "proxy_chunk_gap_seconds_count", **m) >= 3 + 2
    assert value(samples, "proxy_request_duration_seconds_count", **m, stream="true") == 3
    # Tokens from the upstream's usage: twice the "ok" answer (stream and non-stream).
    assert value(samples, "proxy_tokens_total", **m, type="prompt") == 22
    assert value(samples, "proxy_tokens_total", **m, type="completion") == 4
    assert value(samples, "proxy_usage_reports_total", **m, usage="reported") == 2


def test_missing_usage_is_a_label_and_the_client_gets_an_estimate() -> None:
    with serve_fake(handler) as fake, run_server(create_app(settings_for(fake.url))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "nousage"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        plain = list(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "nousage"}], stream=True
            )
        )
        completion = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "json"}]
        )
        samples = scrape(url)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.model_extra or {})["estimated"] is True
    assert usage.completion_tokens == 2  # "Hello": 5 characters, about 2 tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.usage is None for c in plain)  # not asked, not sent
    assert (
        completion.usage is not None and (completion.usage.model_extra or {})["estimated"] is True
    )
    assert completion.usage.completion_tokens == 2 + 2  # 你好: 2 tokens, " there": 2 tokens
    m = {"model": "m", "upstream": "up"}
    assert value(samples, "proxy_usage_reports_total", **m, usage="missing") == 3
    assert value(samples, "proxy_tokens_total", **m, type="completion") == 0  # never estimated


def test_access_line_field_by_field(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with serve_fake(handler) as fake, run_server(create_app(settings_for(fake.url))) as url:
        stream(url, "ok")
        stream(url, "stall")
        httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": "nope"})
    records = [r for r in caplog.records if r.name == "proxy.access"]
    ok, stalled, bad = (r.fields for r in records[:3])  # type: ignore[attr-defined]
    assert len(ok["request_id"]) == 32
    assert ok["client"] == "127.0.0.1"
    assert (ok["method"], ok["path"], ok["status"]) == ("POST", "/v1/chat/completions", 200)
    assert (ok["model"], ok["upstream"], ok["stream"]) == ("m", "up", True)
    assert 0 < ok["ttft_ms"] < ok["duration_ms"] < 5000
    assert ok["chunks"] == 4  # role, "Hel", "lo", finish
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (11, 2)
    assert ok["outcome"] == "complete"
    assert (stalled["status"], stalled["outcome"], stalled["ttft_ms"]) == (
        504,  # before any content: an HTTP error, not an error event (issue 15)
        "upstream_idle_timeout",
        None,
    )
    assert (bad["status"], bad["outcome"], bad["model"]) == (400, "rejected", None)
    # JSON and text renderings of the same record; never a key, never message contents.
    for formatter in (JSONFormatter(), TextFormatter()):
        for record in records:
            line = formatter.format(record)
            assert KEY not in line and "a secret plan" not in line and "Hello" not in line
    line = json.loads(JSONFormatter().format(records[0]))
    assert line["logger"] == "proxy.access" and line["level"] == "info" and line["ts"].endswith("Z")
    assert {k: line[k] for k in ok} == ok
    text = TextFormatter().format(records[0])
    assert (
        f"request_id={ok['request_id']}" in text
        and "outcome=complete" in text
        and "stream=true" in text
    )


def test_log_bodies_redacts_keys(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = echo_settings(log_bodies=True, api_keys=["client-key-abcdef"])
    with run_server(create_app(settings)) as url:
        body = {
            "model": "echo",
            "messages": [
                {"role": "user", "content": "key sk-live-123456789 and client-key-abcdef"}
            ],
        }
        httpx.post(
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer client-key-abcdef"},
        )
    logged = [r.fields["body"] for r in caplog.records if r.name == "proxy.bodies"]  # type: ignore[attr-defined]
    assert len(logged) == 1
    assert "sk-live-123456789" not in logged[0] and "client-key-abcdef" not in logged[0]
    assert "key *** and ***" in logged[0]


def test_no_bodies_logged_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with run_server(create_app(echo_settings())) as url:
        httpx.post(f"{url}/v1/chat/completions", json={"model": "echo", "messages": MESSAGES})
    assert not [
        r
        for r in caplog.records
        if "a secret plan" in str(getattr(r, "fields", "")) + r.getMessage()
    ]


def test_metrics_can_be_turned_off() -> None:
    with run_server(create_app(echo_settings(metrics=False))) as url:
        assert httpx.get(f"{url}/metrics").status_code == 404


def test_metrics_with_several_workers(tmp_path: Path) -> None:
    port = free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    args = [sys.executable, "-m", "proxy", "--workers", "2", "--port", str(port)]
    with proxy_process(args, tmp_path, env=env, port=port) as (process, url, log):
        deadline = time.monotonic() + 30
        while (
            log.read_text().count("Application startup complete") < 2
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "a b"}]}
        threads = [
            threading.Thread(
                target=lambda: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
            )
            for _ in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        # Whichever worker answers the scrape, it reports what all of them served.
        counts = {
            value(
                scrape(url),
                "proxy_requests_total",
                model="echo",
                upstream="echo",
                stream="true",
                status="200",
            )
            for _ in range(6)
        }
        assert counts == {20.0}
        assert len(list((tmp_path / "metrics").glob("*.db"))) >= 2  # one file set per worker
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # the test process stays single-mode
