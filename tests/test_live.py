"""Against the real services, with the shipped example configs. Marked ``live``: skipped
unless the key is in the environment (CI has none; no other test leaves 127.0.0.1)."""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest

from proxy import create_app, load_settings
from tests.helpers import run_server

CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.mark.live
@pytest.mark.parametrize(
    ("config", "env", "model"),
    [
        ("openai.yaml", "OPENAI_API_KEY", "gpt-4o-mini"),
        ("qwen.yaml", "DASHSCOPE_API_KEY", "qwen-plus"),
    ],
)
def test_live_stream(config: str, env: str, model: str) -> None:
    if not os.environ.get(env):
        pytest.skip(f"{env} is not set")
    app = create_app(load_settings(config=str(CONFIG / config)))
    with run_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Count from 1 to 5."}],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=30,
            )
        )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.model for c in chunks} == {model}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
