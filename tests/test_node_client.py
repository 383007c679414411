"""One Responses stream read by the Node ``openai`` package (pinned in tests/node/package.json,
installed there by ``npm ci``): the events in order, numbered without gaps, the pings between
them ignored, the text spread over time, and its ``responses.stream()`` helper's final response.
Skipped without node and npm, except under CI (``CI=true``), where it fails instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import create_app
from tests.helpers import echo_settings, run_server

NODE = Path(__file__).parent / "node"
WORDS = "one two three four five six"


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} not installed: .ci/run must install them")
        pytest.skip(f"{', '.join(missing)} not installed")


@pytest.fixture(scope="module")
def node_openai() -> Path:
    """tests/node with its locked packages installed (once; ``npm ci`` again if the lock
    changed since)."""
    need("node", "npm")
    lock = NODE / "package-lock.json"
    installed = NODE / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE,
            check=True,
            timeout=300,
        )
    return NODE


def run_node(url: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["node", "responses_stream.mjs", f"{url}/v1", "echo", WORDS],
        cwd=NODE,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_PROXY": "127.0.0.1"},
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_node_openai_reads_a_responses_stream(node_openai: Path) -> None:
    # 150 ms between words and a ping after 50 ms of silence: pings between the events.
    settings = echo_settings(echo={"delay_ms": 150}, keepalive_seconds=0.05)
    with run_server(create_app(settings)) as url:
        lines = run_node(url)
        body = {"model": "echo", "input": WORDS, "stream": True}
        raw = httpx.post(f"{url}/v1/responses", json=body).text
    assert raw.count(": ping\n\n") >= 3  # what the Node client had to skip
    *events, final = lines
    kinds = [event["type"] for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    assert [event["seq"] for event in events] == list(range(len(events)))
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(e["delta"] for e in deltas) == WORDS
    assert deltas[0]["at"] < 0.5 * deltas[-1]["at"]  # spread over time, not all at the end
    assert final["final"]["text"] == WORDS and final["final"]["status"] == "completed"
    assert final["final"]["model"] == "echo" and final["final"]["usage"]["output_tokens"] == 6
