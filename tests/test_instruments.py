"""The instruments: ``probe``, ``inspect`` and the playground page."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from proxy import create_app
from proxy.tools.inspector import start
from proxy.tools.probe import Arrival, Observation, judge, run
from tests.browser import chromium, open_page
from tests.helpers import BufferingWrapper, echo_settings, run_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
WORDS = " ".join(f"w{i}" for i in range(12))

# --- probe: the verdict, pure ----------------------------------------------------------------


def arrivals(*times: float, size: int = 3) -> list[Arrival]:
    return [Arrival(t, "data: {}", size) for t in times]


SSE = "text/event-stream; charset=utf-8"
VERDICTS = [
    (
        "steady",
        Observation(SSE, arrivals(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)),
        "openai",
        "TRUE STREAMING",
    ),
    ("all at the end", Observation(SSE, arrivals(*[2.0] * 10)), "openai", "PSEUDO-STREAMING"),
    (
        "mostly at the end",
        Observation(SSE, arrivals(0.1, *[2.0] * 9)),
        "requests",
        "PSEUDO-STREAMING",
    ),
    (
        "json answer",
        Observation("application/json", [Arrival(1.0, "{}", 50)]),
        "requests",
        "NOT STREAMING",
    ),
    ("one chunk", Observation(SSE, arrivals(0.5)), "openai", "INCONCLUSIVE"),
    (
        "role chunks only",
        Observation(SSE, [Arrival(0.1, "data: {}", 0), Arrival(0.2, "data: {}", 0)]),
        "openai",
        "INCONCLUSIVE",
    ),
]


@pytest.mark.parametrize(
    ("name", "observation", "client", "expected"), VERDICTS, ids=[v[0] for v in VERDICTS]
)
def test_probe_verdicts(name: str, observation: Observation, client: str, expected: str) -> None:
    verdict = judge(observation, client)
    assert verdict.name == expected
    assert (
        verdict.exit_code
        == {"TRUE STREAMING": 0, "PSEUDO-STREAMING": 1, "NOT STREAMING": 2, "INCONCLUSIVE": 3}[
            expected
        ]
    )
    assert verdict.hint


def test_probe_hint_names_the_buffering_client() -> None:
    observation = Observation(SSE, arrivals(*[2.0] * 5))
    assert "stream=True" in judge(observation, "requests-buffered").hint
    assert "gateway" in judge(observation, "requests").hint


# --- probe: real runs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    settings = echo_settings(echo={"delay_ms": 60})
    with (
        run_server(create_app(settings)) as live,
        run_server(BufferingWrapper(create_app(settings))) as buffered,
    ):
        yield {"live": live, "buffered": buffered}


@pytest.mark.parametrize("client", ["openai", "requests", "httpx", "raw"])
def test_probe_sees_true_streaming(servers: dict[str, str], client: str) -> None:
    out = io.StringIO()
    verdict = run(f"{servers['live']}/v1", "echo", client=client, prompt=WORDS, out=out)
    assert verdict.name == "TRUE STREAMING", out.getvalue()
    lines = out.getvalue().splitlines()
    chunk_lines = [
        line
        for line in lines
        if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} \+\d+\.\d{3}s data: ", line)
    ]
    assert len(chunk_lines) >= 12  # every chunk printed with its wall time and offset
    assert "verdict: TRUE STREAMING" in lines
    assert any(line.startswith("  time to first chunk: ") for line in lines)


@pytest.mark.parametrize("client", ["openai", "requests"])
def test_probe_sees_a_buffering_server(servers: dict[str, str], client: str) -> None:
    out = io.StringIO()
    verdict = run(f"{servers['buffered']}/v1", "echo", client=client, prompt=WORDS, out=out)
    assert verdict.name == "PSEUDO-STREAMING", out.getvalue()
    assert "gateway" in verdict.hint


def test_probe_sees_the_buffering_client(servers: dict[str, str]) -> None:
    out = io.StringIO()
    verdict = run(
        f"{servers['live']}/v1", "echo", client="requests-buffered", prompt=WORDS, out=out
    )
    assert verdict.name == "PSEUDO-STREAMING"
    assert "stream=True" in verdict.hint


async def ignores_stream_flag(scope: Any, receive: Any, send: Any) -> None:
    """A server that answers one chat.completion JSON whatever the body says."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "all of it at once"},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("client", ["openai", "requests", "raw"])
def test_probe_sees_a_json_answer(client: str) -> None:
    with run_server(ignores_stream_flag) as url:
        out = io.StringIO()
        verdict = run(f"{url}/v1", "m", client=client, out=out)
    assert verdict.name == "NOT STREAMING", out.getvalue()
    assert verdict.exit_code == 2
    assert "stream" in verdict.hint


def test_probe_command_exit_codes(servers: dict[str, str]) -> None:
    def probe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", "probe", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )

    live = probe(f"{servers['live']}/v1", "--model", "echo", "--prompt", WORDS)
    assert live.returncode == 0 and "verdict: TRUE STREAMING" in live.stdout
    buffered = probe(
        f"{servers['buffered']}/v1", "--model", "echo", "--client", "requests", "--prompt", WORDS
    )
    assert buffered.returncode == 1 and "verdict: PSEUDO-STREAMING" in buffered.stdout
    missing = probe(f"{servers['live']}/v1", "--model", "nope")
    assert missing.returncode == 4 and "HTTP 404" in missing.stderr


@pytest.mark.parametrize(
    ("client", "module"),
    [("openai", "openai"), ("requests", "requests"), ("requests-buffered", "requests")],
)
def test_probe_names_the_extra_when_a_client_library_is_missing(
    servers: dict[str, str], client: str, module: str
) -> None:
    # As after a plain `pip install .`: the library cannot be imported (sys.modules[m] = None).
    code = (
        f"import sys; sys.modules[{module!r}] = None; from proxy.cli import main; "
        f"sys.exit(main(['probe', {servers['live'] + '/v1'!r}, '--model', 'echo', "
        f"'--client', {client!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 4
    assert done.stderr.strip() == (
        f"chat-stream-proxy probe: --client {client} needs the '{module}' package, which is "
        "not installed: pip install 'chat-stream-proxy[probe]'"
    )
    assert done.stdout == ""


# --- inspect ---------------------------------------------------------------------------------


@contextmanager
def inspector(show_secrets: bool = False) -> Iterator[tuple[str, io.StringIO]]:
    out = io.StringIO()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        server = await start("127.0.0.1", 0, show_secrets, out)
        holder["url"] = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        holder["loop"] = asyncio.get_running_loop()
        holder["stop"] = asyncio.Event()
        ready.set()
        async with server:
            await holder["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield holder["url"], out
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


def sent_vs_received(url: str, **kwargs: Any) -> tuple[requests.PreparedRequest, dict[str, Any]]:
    """Send with requests; return what requests prepared and what the inspector parsed."""
    session = requests.Session()
    prepared = session.prepare_request(requests.Request("POST", f"{url}/echo", **kwargs))
    response = session.send(prepared)
    assert response.status_code == 200
    return prepared, response.json()


def header_map(report: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in report["headers"]}


def assert_same_wire(prepared: requests.PreparedRequest, report: dict[str, Any]) -> None:
    """Every header requests prepared arrived as prepared; the body byte for byte."""
    received = header_map(report)
    for name, value in prepared.headers.items():
        if name.lower() != "authorization":
            assert received[name.lower()] == value, name
    body = prepared.body or b""
    body = body.encode() if isinstance(body, str) else body
    assert base64.b64decode(report["body_base64"]) == body
    assert report["body_size"] == len(body)


def test_inspect_params_headers_cookies_auth() -> None:
    with inspector() as (url, out):
        prepared, report = sent_vs_received(
            url,
            params={"q": "a b", "list": ["1", "2"], "empty": ""},
            headers={"X-Custom": "yes", "User-Agent": "probe/1"},
            cookies={"sid": "abc", "theme": "dark"},
            auth=("alice", "s3cret"),
        )
    assert_same_wire(prepared, report)
    assert report["query"] == {"q": ["a b"], "list": ["1", "2"], "empty": [""]}
    assert report["cookies"] == {"sid": "abc", "theme": "dark"}
    assert report["basic_auth"] == {"user": "alice", "password": "*** (hidden: --show-secrets)"}
    assert header_map(report)["authorization"].startswith("Basic ***")
    printed = out.getvalue()
    assert "X-Custom: yes" in printed and "s3cret" not in printed and "alice" in printed


def test_inspect_show_secrets() -> None:
    with inspector(show_secrets=True) as (url, out):
        _, bearer = sent_vs_received(url, headers={"Authorization": "Bearer sk-abc"})
        _, basic = sent_vs_received(url, auth=("alice", "s3cret"))
    assert header_map(bearer)["authorization"] == "Bearer sk-abc"
    assert basic["basic_auth"] == {"user": "alice", "password": "s3cret"}
    assert "s3cret" in out.getvalue()


@pytest.mark.parametrize(
    ("kwargs", "key", "expected"),
    [
        ({"data": {"a": "1", "b": ["x", "y"]}}, "form", {"a": ["1"], "b": ["x", "y"]}),
        ({"data": "plain text body"}, "text", "plain text body"),
        ({"data": json.dumps({"k": "v"})}, "json", {"k": "v"}),  # no Content-Type: still JSON
        ({"json": {"model": "m", "n": [1, 2]}}, "json", {"model": "m", "n": [1, 2]}),
    ],
    ids=["data-dict", "data-string", "data-json-string", "json"],
)
def test_inspect_bodies(kwargs: dict[str, Any], key: str, expected: Any) -> None:
    with inspector() as (url, _):
        prepared, report = sent_vs_received(url, **kwargs)
    assert_same_wire(prepared, report)
    assert report[key] == expected
    assert report["framing"] == f"Content-Length: {len(prepared.body or b'')}"


def test_inspect_files() -> None:
    files = {
        "two": ("two.txt", b"two-tuple"),
        "three": ("three.csv", b"a,b\n1,2\n", "text/csv"),
        "four": ("four.bin", b"\x00\x01\x02\x03", "application/octet-stream", {"X-Part": "4"}),
        "plain": open(__file__, "rb"),  # noqa: SIM115 (closed below)
    }
    try:
        with inspector() as (url, out):
            prepared, report = sent_vs_received(url, files=files, data={"field": "value"})
    finally:
        files["plain"].close()  # type: ignore[union-attr]
    assert_same_wire(prepared, report)
    parts = {part["name"]: part for part in report["parts"]}
    assert parts["field"]["value"] == "value" and parts["field"]["filename"] is None
    assert (parts["two"]["filename"], parts["two"]["size"], parts["two"]["content_type"]) == (
        "two.txt",
        9,
        None,
    )
    assert (parts["three"]["filename"], parts["three"]["content_type"], parts["three"]["size"]) == (
        "three.csv",
        "text/csv",
        8,
    )
    assert (
        parts["four"]["content_type"] == "application/octet-stream" and parts["four"]["size"] == 4
    )
    assert ["X-Part", "4"] in parts["four"]["headers"]
    assert (
        parts["plain"]["filename"] == Path(__file__).name
        and parts["plain"]["size"] == Path(__file__).stat().st_size
    )
    printed = out.getvalue()
    assert (
        'part name="four" filename="four.bin" content-type=application/octet-stream 4 bytes headers: X-Part: 4'
        in printed
    )


def test_inspect_chunked_upload() -> None:
    def body() -> Iterator[bytes]:
        yield b'{"model": '
        yield b'"m"}'

    with inspector() as (url, _):
        response = requests.post(
            f"{url}/echo", data=body(), headers={"Content-Type": "application/json"}
        )
    report = response.json()
    assert report["framing"] == "chunked"
    assert report["json"] == {"model": "m"}


@pytest.mark.parametrize("stream", [True, False])
def test_inspect_openai_client(stream: bool) -> None:
    with inspector() as (url, out):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-secret-key-123", max_retries=0)
        result = client.chat.completions.create(
            model="gpt-x",
            messages=[{"role": "user", "content": "hi"}],
            stream=stream,
            temperature=0.2,
        )
        text = (
            "".join(c.choices[0].delta.content or "" for c in result if c.choices)
            if stream
            else result.choices[0].message.content
        )  # type: ignore[union-attr]
    assert text == "inspect: received 1 message(s) for gpt-x"  # the client's code keeps working
    printed = out.getvalue()
    assert "POST /v1/chat/completions HTTP/1.1" in printed
    assert re.search(
        r"^Authorization: Bearer \*\*\* \(hidden: --show-secrets\)$", printed, re.I | re.M
    )
    assert "sk-secret-key-123" not in printed
    assert re.search(r"X-Stainless-Lang: python", printed, re.I)
    assert '"temperature": 0.2' in printed
    assert ('"stream": true' in printed) == stream


def test_inspect_command_starts() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "inspect", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        assert "listening on http://127.0.0.1:0" in process.stdout.readline()
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]


# --- the playground page, in headless Chromium -----------------------------------------------


def need_chromium() -> None:
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run must install it")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")


def test_playground_streams_in_a_browser() -> None:
    need_chromium()
    with run_server(create_app(echo_settings(echo={"delay_ms": 80}))) as url:
        page_url = f"{url}/?model=echo&run=1&prompt=" + "+".join(f"word{i}" for i in range(15))
        with open_page(page_url) as page:
            page.wait_for("window.playground && window.playground.done", timeout=30)
            state = page.evaluate("JSON.stringify(window.playground)")
            answer = page.evaluate("document.getElementById('answer').textContent")
            bars = page.evaluate("document.querySelectorAll('#timeline rect.chunk').length")
            verdict_text = page.evaluate("document.getElementById('verdict').innerText")
            page.screenshot(ARTIFACTS / "playground.png")
    state = json.loads(state)
    assert state["error"] is None
    assert answer == " ".join(f"word{i}" for i in range(15))
    times = [t for t, n in zip(state["times"], state["sizes"], strict=True) if n]
    assert len(times) == 15 and bars >= 15
    assert times[0] < 0.4 * times[-1]  # spread over time, not all at the end
    assert state["verdict"]["name"] == "TRUE STREAMING"
    assert "TRUE STREAMING" in verdict_text
    assert (ARTIFACTS / "playground.png").stat().st_size > 5000


def test_playground_served_plain(fast_url: str) -> None:
    page = requests.get(f"{fast_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (
        "<script" in page.text and "http://" not in page.text and "https://" not in page.text
    )  # no CDN
