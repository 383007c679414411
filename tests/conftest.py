from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from proxy import create_app
from tests.helpers import echo_settings, run_server

DELAY = 0.1  # the echo model's delay between words in the timing tests


@pytest.fixture(scope="session", autouse=True)
def only_loopback() -> Iterator[None]:
    """Client libraries must never reach past 127.0.0.1 (e.g. through a proxy from the env)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            patch.delenv(name, raising=False)
        patch.delenv("all_proxy", raising=False)
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="session")
def echo_url() -> Iterator[str]:
    """A proxy on a real socket serving the echo model with DELAY between words."""
    app = create_app(echo_settings(echo={"delay_ms": DELAY * 1000}))
    with run_server(app) as url:
        yield url


@pytest.fixture(scope="session")
def fast_url() -> Iterator[str]:
    """A proxy serving the echo model with no delay (for shape and error tests)."""
    with run_server(create_app(echo_settings())) as url:
        yield url


@pytest.fixture(autouse=True)
def close_openai_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every sync openai client a test made: an unclosed one keeps a pooled socket that
    the garbage collector finds later, as a ResourceWarning in some other test."""
    made: list[openai.OpenAI] = []
    original = openai.OpenAI.__init__

    def init(self: openai.OpenAI, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(openai.OpenAI, "__init__", init)
    yield
    for client in made:
        client.close()
