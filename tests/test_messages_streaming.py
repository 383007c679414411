"""Messages events are written the moment they exist, over a real socket, as Anthropic's SDK
sees them; and ``message_start`` never waits for the first token.

The timing tests stream 10 words from the echo model (DELAY between words) and assert what the
chat tests assert: the first text arrives before 40% of the stream's duration and the gaps
follow DELAY. ``message_start`` is timed against an upstream whose first token comes LATE
seconds after its response headers: the client must have it long before. Each assertion has
its negative control: the same check through a buffering hop must fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx
import pytest

from proxy import create_app
from tests.anthropic_fakes import ChatScript, NativeScript, sdk, text_stream
from tests.conftest import DELAY
from tests.fake_upstream import serve_fake
from tests.helpers import (
    BufferingWrapper,
    assert_true_streaming,
    echo_settings,
    run_server,
    upstream_settings,
)

TEXT = "one two three four five six seven eight nine ten"
ASK = {"model": "echo", "max_tokens": 64, "messages": [{"role": "user", "content": TEXT}]}
LATE = 1.0  # seconds between the upstream's headers (or its message_start) and its first token


def sdk_arrivals(url: str) -> tuple[float, list[float], str]:
    """(start, the arrival time of each text piece, the text) through ``messages.stream()``."""
    with sdk(url) as client:
        started = time.monotonic()
        times, text = [], ""
        with client.messages.stream(**ASK) as stream:  # type: ignore[arg-type]
            for piece in stream.text_stream:
                times.append(time.monotonic())
                text += piece
    return started, times, text


def test_sdk_stream_is_live(echo_url: str) -> None:
    started, times, text = sdk_arrivals(echo_url)
    assert text == TEXT
    assert_true_streaming(times, started, DELAY)


def test_async_sdk_stream_is_live(echo_url: str) -> None:
    async def run() -> tuple[float, list[float]]:
        async with anthropic.AsyncAnthropic(
            base_url=echo_url, api_key="x", max_retries=0
        ) as client:
            started = time.monotonic()
            times = []
            async with client.messages.stream(**ASK) as stream:  # type: ignore[arg-type]
                async for _ in stream.text_stream:
                    times.append(time.monotonic())
        return started, times

    started, times = asyncio.run(run())
    assert_true_streaming(times, started, DELAY)


def raw_arrivals(url: str) -> tuple[float, list[float]]:
    """Arrival times of the ``content_block_delta`` frames, read with httpx line by line."""
    started = time.monotonic()
    times = []
    with httpx.stream("POST", f"{url}/v1/messages", json={**ASK, "stream": True}, timeout=30) as r:
        for line in r.iter_lines():
            if line == "event: content_block_delta":
                times.append(time.monotonic())
    return started, times


def test_raw_frames_are_live(echo_url: str) -> None:
    started, times = raw_arrivals(echo_url)
    assert len(times) == 10
    assert_true_streaming(times, started, DELAY)


@pytest.fixture(scope="module")
def buffered_url() -> Iterator[str]:
    app = create_app(echo_settings(echo={"delay_ms": DELAY * 1000}))
    with run_server(BufferingWrapper(app)) as url:
        yield url


def test_negative_control_sdk_catches_buffering(buffered_url: str) -> None:
    started, times, text = sdk_arrivals(buffered_url)
    assert text == TEXT  # the same answer arrives...
    with pytest.raises(AssertionError, match="buffered"):  # ...but the check sees it is not live
        assert_true_streaming(times, started, DELAY)


def test_negative_control_raw_frames_catch_buffering(buffered_url: str) -> None:
    started, times = raw_arrivals(buffered_url)
    with pytest.raises(AssertionError, match="buffered"):
        assert_true_streaming(times, started, DELAY)


# --- message_start at once ------------------------------------------------------------------


def start_and_first_token(url: str) -> tuple[float, float]:
    """Seconds from the request to ``message_start``, and to the first content delta, as the
    SDK's event iterator yields them."""
    with sdk(url) as client:
        started = time.monotonic()
        start = first = 0.0
        for event in client.messages.create(
            model="m", max_tokens=64, messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            if event.type == "message_start":
                start = time.monotonic() - started
            elif event.type == "content_block_delta" and not first:
                first = time.monotonic() - started
    return start, first


def assert_start_at_once(start: float, first: float) -> None:
    assert first >= 0.9 * LATE, f"the first token came at {first:.3f}s: the upstream was not late"
    assert start < 0.25 * first, (
        f"message_start at {start:.3f}s, first token {first:.3f}s: held back"
    )


@contextmanager
def late_upstream(native: bool, buffered: bool = False) -> Iterator[str]:
    """A proxy in front of an upstream that answers at once and sends its first token LATE
    seconds later: a chat server (headers, then nothing) or a Messages server (message_start,
    then nothing)."""
    handler: Any
    if native:
        handler = NativeScript(first_delay=LATE)
        up: dict[str, Any] = {"apis": ["chat", "messages"]}
    else:
        handler = ChatScript([text_stream("late", " answer")], first_delay=LATE, delay_at=0)
        up = {}
    with serve_fake(handler) as fake:
        app = create_app(upstream_settings(fake.url, up=up))
        with run_server(BufferingWrapper(app) if buffered else app) as url:
            yield url


@pytest.mark.parametrize("native", [False, True], ids=["translated", "passed-through"])
def test_message_start_never_waits_for_the_first_token(native: bool) -> None:
    with late_upstream(native) as url:
        start, first = start_and_first_token(url)
    assert_start_at_once(start, first)


@pytest.mark.parametrize("native", [False, True], ids=["translated", "passed-through"])
def test_negative_control_a_held_back_message_start_is_caught(native: bool) -> None:
    with late_upstream(native, buffered=True) as url:
        start, first = start_and_first_token(url)
    with pytest.raises(AssertionError, match="held back"):
        assert_start_at_once(start, first)
