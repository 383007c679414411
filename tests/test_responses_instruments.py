"""``probe --api responses`` and the playground's Responses mode, against the echo model: true
streaming seen by every client, pseudo-streaming through a buffering hop, a plain JSON answer,
and the page in headless Chromium."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import create_app
from proxy.tools.probe import run
from tests.browser import open_page
from tests.helpers import BufferingWrapper, echo_settings, run_server
from tests.test_instruments import ARTIFACTS, ROOT, WORDS, need_chromium


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    settings = echo_settings(echo={"delay_ms": 60})
    with (
        run_server(create_app(settings)) as live,
        run_server(BufferingWrapper(create_app(settings))) as buffered,
    ):
        yield {"live": live, "buffered": buffered}


@pytest.mark.parametrize("client", ["openai", "requests", "httpx", "raw"])
def test_probe_sees_a_responses_stream_streaming(servers: dict[str, str], client: str) -> None:
    out = io.StringIO()
    verdict = run(
        f"{servers['live']}/v1", "echo", client=client, prompt=WORDS, api="responses", out=out
    )
    assert verdict.name == "TRUE STREAMING", out.getvalue()
    assert verdict.chunks == 12  # one per word: the output_text deltas
    stamped = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} \+\d+\.\d{3}s "
    deltas = [
        line
        for line in out.getvalue().splitlines()
        if re.match(stamped + r'data: \{.*"type":"response\.output_text\.delta"', line)
    ]
    assert len(deltas) == 12


@pytest.mark.parametrize("client", ["openai", "requests"])
def test_probe_sees_a_buffered_responses_stream(servers: dict[str, str], client: str) -> None:
    out = io.StringIO()
    verdict = run(
        f"{servers['buffered']}/v1", "echo", client=client, prompt=WORDS, api="responses", out=out
    )
    assert verdict.name == "PSEUDO-STREAMING", out.getvalue()
    assert "gateway" in verdict.hint


async def json_response(scope: Any, receive: Any, send: Any) -> None:
    """A server answering one Responses ``response`` object whatever the body says."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    part = {"type": "output_text", "text": "all of it at once", "annotations": []}
    item = {"type": "message", "role": "assistant", "content": [part]}
    body = json.dumps({"object": "response", "status": "completed", "output": [item]}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_probe_sees_a_json_response() -> None:
    with run_server(json_response) as url:
        out = io.StringIO()
        verdict = run(f"{url}/v1", "m", client="raw", api="responses", out=out)
    assert verdict.name == "NOT STREAMING", out.getvalue()


def test_probe_command_takes_the_api(servers: dict[str, str]) -> None:
    def probe(url: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", "probe", url, "--model", "echo", "--api", "responses",
             "--prompt", WORDS, *args],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip

    live = probe(f"{servers['live']}/v1")
    assert live.returncode == 0 and "verdict: TRUE STREAMING" in live.stdout
    assert "event: response.completed" in live.stdout  # every line, as it arrived
    buffered = probe(f"{servers['buffered']}/v1/responses", "--client", "requests")
    assert buffered.returncode == 1 and "verdict: PSEUDO-STREAMING" in buffered.stdout


def test_playground_streams_responses_in_a_browser() -> None:
    need_chromium()
    with run_server(create_app(echo_settings(echo={"delay_ms": 80}))) as url:
        prompt = "+".join(f"word{i}" for i in range(15))
        with open_page(f"{url}/?model=echo&api=responses&run=1&prompt={prompt}") as page:
            page.wait_for("window.playground && window.playground.done", timeout=30)
            state = json.loads(page.evaluate("JSON.stringify(window.playground)"))
            answer = page.evaluate("document.getElementById('answer').textContent")
            chosen = page.evaluate("document.getElementById('api').value")
            page.screenshot(ARTIFACTS / "playground-responses.png")
    assert state["error"] is None and chosen == "responses"
    assert answer == " ".join(f"word{i}" for i in range(15))
    times = [t for t, n in zip(state["times"], state["sizes"], strict=True) if n]
    assert len(times) == 15 and len(state["times"]) > 15  # the lifecycle events too
    assert times[0] < 0.4 * times[-1]
    assert state["verdict"]["name"] == "TRUE STREAMING"
