"""Config loading: the YAML file, env overrides, defaults, and the one-line start-up errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.settings import ConfigError, HTTPUpstream, load_settings

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    return path


def test_no_config_serves_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROXY_CONFIG", raising=False)
    settings = load_settings()
    assert list(settings.models) == ["echo"]
    assert settings.upstreams["echo"].type == "echo"
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.max_body_bytes == 20 * 1024 * 1024


def test_contract_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    path = write(
        tmp_path,
        """
api_keys: [sk-proxy-1]
cors_origins: ["https://app.example"]
keepalive_seconds: 15
max_body_bytes: 20971520
upstreams:
  openai:
    type: openai
    base_url: https://api.openai.com/v1
    api_key_env: OPENAI_API_KEY
    timeouts: {connect: 5, first_byte: 60, idle: 60}
  local-qwen: {type: qwen, base_url: "http://127.0.0.1:8001/v1"}
  echo: {type: echo, delay_ms: 20, chunk: word}
models:
  gpt-4o-mini: {upstream: openai, model: gpt-4o-mini}
  qwen: {upstream: local-qwen, model: Qwen-72B-Chat-Int4}
  echo: {upstream: echo}
""",
    )
    settings = load_settings(config=str(path))
    openai = settings.upstreams["openai"]
    assert isinstance(openai, HTTPUpstream)
    assert openai.resolve_key() == "sk-test-123"
    assert openai.timeouts.first_byte == 60
    assert settings.models["qwen"].model == "Qwen-72B-Chat-Int4"
    assert "sk-proxy-1" not in repr(settings)  # keys never end up in logs through repr
    assert "sk-test-123" not in repr(settings)


def test_precedence_flag_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "port: 7000\nkeepalive_seconds: 3\n")
    monkeypatch.setenv("PROXY_CONFIG", str(path))
    assert load_settings().port == 7000
    monkeypatch.setenv("PROXY_PORT", "7100")
    assert load_settings().port == 7100
    assert load_settings(port=7200).port == 7200
    assert load_settings().keepalive_seconds == 3


BAD = [
    # (file text, expected fragments of the one-line error)
    ("upstreams: [1, 2]", ["upstreams", "dictionary"]),
    ("keepalive_seconds: soon", ["keepalive_seconds", "number"]),
    ("keepalive_seconds: 0", ["keepalive_seconds", "greater than 0"]),
    ("max_body_bytes: -1", ["max_body_bytes"]),
    ("bogus: 1", ["bogus", "unknown key"]),
    ("upstreams: {x: {type: nope}}", ["upstreams.x", "type"]),
    ("upstreams: {x: {type: openai}}", ["upstreams.x.base_url", "Field required"]),
    ("upstreams: {x: {type: openai, base_url: ftp://h}}", ["upstreams.x", "http://"]),
    (
        "upstreams: {x: {type: openai, base_url: 'http://h', timeouts: {connect: x}}}",
        ["upstreams.x.timeouts.connect"],
    ),
    ("upstreams: {e: {type: echo, chunk: byte}}", ["upstreams.e.chunk", "'word' or 'char'"]),
    ("models: {m: {upstream: missing}}", ["models.m.upstream", "unknown upstream 'missing'"]),
    ("models: {echo: {upstream: echo, bogus: 1}}", ["models.echo.bogus", "unknown key"]),
    ("- a list", ["top level must be a mapping"]),
    ("a: [unclosed", ["line 1", "invalid YAML"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD)
def test_bad_config_names_file_key_problem(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(config=str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(config=str(tmp_path / "absent.yaml"))


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert list(load_settings(config=str(write(tmp_path, ""))).models) == ["echo"]


def test_bad_env_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROXY_CONFIG", raising=False)
    monkeypatch.setenv("PROXY_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"^environment: port: "):
        load_settings()


@pytest.mark.parametrize(
    "args", [["--config", "{path}"], ["serve", "--config", "{path}"]], ids=["default", "serve"]
)
def test_cli_bad_config_one_line_exit_2(tmp_path: Path, args: list[str]) -> None:
    path = write(tmp_path, "models: {m: {upstream: missing}}")
    argv = [a.format(path=path) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"chat-stream-proxy: config error: {path}: models.m.upstream: "
        "unknown upstream 'missing' (configured: echo)"
    ]
    assert "Traceback" not in result.stderr


def test_shipped_default_config_is_valid() -> None:
    settings = load_settings(config=str(ROOT / "config" / "proxy.yaml"))
    assert list(settings.models) == ["echo"]


def test_example_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-example")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-dashscope-example")
    openai = load_settings(config=str(ROOT / "config" / "openai.yaml"))
    assert openai.upstreams["openai"].resolve_key() == "sk-openai-example"  # type: ignore[union-attr]
    assert openai.models["gpt-4o-mini"].upstream == "openai"
    qwen = load_settings(config=str(ROOT / "config" / "qwen.yaml"))
    assert qwen.upstreams["dashscope"].resolve_key() == "sk-dashscope-example"  # type: ignore[union-attr]
    assert qwen.models["qwq-32b"].force_stream
    shared = load_settings(config=str(ROOT / "config" / "proxy-redis.yaml"))  # compose.yaml's
    assert shared.limits.backend == "redis" and [key.name for key in shared.keys] == ["demo"]


def test_kubernetes_example_is_consistent(tmp_path: Path) -> None:
    import yaml

    manifest = yaml.safe_load_all((ROOT / "config" / "kubernetes.yaml").read_text())
    docs = {d["kind"]: d for d in manifest if d["metadata"]["name"] == "chat-stream-proxy"}
    path = tmp_path / "proxy.yaml"
    path.write_text(docs["ConfigMap"]["data"]["proxy.yaml"])
    settings = load_settings(config=str(path))  # the embedded config is valid
    assert settings.limits.backend == "redis" and settings.keys
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace_seconds
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
