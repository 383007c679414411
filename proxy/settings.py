"""Settings: the YAML config file of the contract, overridden by ``PROXY_*`` env vars.

Precedence, highest first: command-line flags, ``PROXY_*`` environment variables, the config
file (``--config`` / ``PROXY_CONFIG``), built-in defaults. With no config at all the proxy
serves the built-in echo model, so ``python -m proxy`` works on a fresh machine.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "PROXY_"


class ConfigError(Exception):
    """A config problem, already phrased as one line: ``<file>: <key>: <problem>``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Upstream timeouts in seconds."""

    connect: float = Field(5.0, gt=0)
    first_byte: float = Field(60.0, gt=0)  # until the upstream's response headers
    # From the request to the first content of a streamed answer; None: no such bound (a
    # thinking model may be silent for minutes: set it to what your models need).
    first_token: float | None = Field(None, gt=0)
    idle: float = Field(60.0, gt=0)  # between two reads of the upstream body
    write: float = Field(30.0, gt=0)
    total: float | None = Field(1800.0, gt=0)  # a whole answer; None: no limit


class EchoUpstream(_Strict):
    """The built-in fake model: streams the last user message back."""

    type: Literal["echo"]
    delay_ms: float = Field(50.0, ge=0)
    chunk: Literal["word", "char"] = "word"
    embedding_dimensions: int = Field(16, ge=1, le=8192)  # the length of its embeddings


class HTTPUpstream(_Strict):
    """An OpenAI-compatible server (``openai``) or a Qwen server (``qwen``)."""

    type: Literal["openai", "qwen"]
    base_url: str
    api_key: str | None = Field(None, repr=False)
    api_key_env: str | None = None
    timeouts: Timeouts = Timeouts()
    headers: dict[str, str] = {}
    # The APIs the server speaks natively (passed through); the others are translated to
    # chat completions where a translation exists. OpenAI itself: add responses. "audio"
    # (transcriptions, translations) and "files" are multipart uploads, passed through only.
    apis: list[
        Literal["chat", "completions", "embeddings", "responses", "messages", "audio", "files"]
    ] = ["chat", "completions", "embeddings", "audio", "files"]
    # How the key is sent: "Authorization: Bearer <key>", or "x-api-key: <key>" (Anthropic).
    api_key_header: Literal["authorization", "x-api-key"] = "authorization"
    # The server's reasoning switch, for Messages requests translated to chat (``thinking``):
    # reasoning_effort (OpenAI, gpt-oss), chat_template_kwargs.enable_thinking (vLLM/SGLang
    # with Qwen3-style templates), or none (send nothing: a switch the server does not know
    # may make it reject every request).
    thinking: Literal["reasoning_effort", "chat_template_kwargs", "none"] = "none"

    @model_validator(mode="after")
    def _check_url(self) -> HTTPUpstream:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        return self

    def resolve_key(self) -> str | None:
        """The upstream key, from ``api_key`` or the env var named by ``api_key_env``."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


UpstreamConfig = Annotated[EchoUpstream | HTTPUpstream, Field(discriminator="type")]


class Deployment(_Strict):
    """One place a public model is served: an upstream and its name for the model."""

    upstream: str
    model: str | None = None  # the upstream's name; defaults to the public name
    weight: float = Field(1.0, gt=0)  # its share of first attempts (strategy: weighted)
    force_stream: bool = False  # the upstream only streams: aggregate for non-stream clients


class ModelRoute(_Strict):
    """A public model: one deployment (``upstream``...) or several (``deployments``), how to
    choose among them, and the other public models to fall back to."""

    upstream: str | None = None
    model: str | None = None
    weight: float = Field(1.0, gt=0)
    force_stream: bool = False
    deployments: list[Deployment] | None = Field(None, min_length=1)
    strategy: Literal["weighted", "least_busy", "lowest_latency"] = "weighted"
    fallbacks: list[str] = []  # other public models, tried in order
    context_window_fallbacks: list[str] = []  # only after context_length_exceeded

    @model_validator(mode="after")
    def _one_form(self) -> ModelRoute:
        if (self.upstream is None) == (self.deployments is None):
            raise ValueError("give either upstream (one deployment) or deployments, not both")
        return self

    def targets(self) -> list[Deployment]:
        """The deployments, whichever form the config used."""
        if self.deployments is not None:
            return self.deployments
        assert self.upstream is not None
        return [
            Deployment(
                upstream=self.upstream,
                model=self.model,
                weight=self.weight,
                force_stream=self.force_stream,
            )
        ]


class Cooldown(_Strict):
    """A deployment's circuit breaker: ``failures`` in a row open it for ``seconds``."""

    failures: int = Field(3, ge=1)
    seconds: float = Field(30.0, gt=0)


class Routing(_Strict):
    """Retries, backoff and the breakers, for every model (README "Routing")."""

    retries: int = Field(2, ge=0)  # more attempts within a model, after the first
    backoff_seconds: float = Field(0.5, ge=0)  # before a retry; doubled each time, jittered
    max_retry_after: float = Field(20.0, ge=0)  # Retry-After honoured up to this; longer: skip
    cooldown: Cooldown = Cooldown()


class Pool(_Strict):
    """The shared upstream connection pool."""

    max_connections: int = Field(1000, ge=1)
    keepalive_expiry: float = Field(30.0, ge=0)
    # "aiohttp": aiohttp's pool and C parser; "httpx": httpx's own transport (httpcore, about
    # ten times the CPU per request).
    transport: Literal["aiohttp", "httpx"] = "aiohttp"
    trust_env: bool = False  # send upstream requests through HTTP(S)_PROXY from the environment


class KeyConfig(_Strict):
    """A named client key: what it may use and how much (CONTRACT "Keys and limits")."""

    name: str = Field(min_length=1)  # shown in logs and metrics; the key itself never is
    key: str | None = Field(None, min_length=1, repr=False)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", repr=False)
    models: list[str] | None = None  # allowlist; None: every model
    rpm: int | None = Field(None, ge=0)  # requests per minute
    tpm: int | None = Field(None, ge=0)  # tokens per minute (prompt + completion)
    max_parallel: int | None = Field(None, ge=0)  # requests in flight at once

    @model_validator(mode="after")
    def _one_secret(self) -> KeyConfig:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give either key or key_sha256")
        return self


class Limits(_Strict):
    """Where the keys' counts live."""

    backend: Literal["memory", "redis"] = "memory"  # memory: this process; redis: shared
    redis_url: str | None = Field(None, repr=False)  # may carry a password
    on_backend_error: Literal["deny", "allow"] = "deny"  # Redis cannot answer: 503, or serve

    @model_validator(mode="after")
    def _redis_url(self) -> Limits:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url (redis://host:6379/0)")
        return self


def _default_upstreams() -> dict[str, EchoUpstream | HTTPUpstream]:
    return {"echo": EchoUpstream(type="echo")}


def _default_models() -> dict[str, ModelRoute]:
    return {"echo": ModelRoute(upstream="echo")}


class Settings(BaseSettings):
    """Everything the proxy needs; built once and handed to ``create_app``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_nested_delimiter="__"
    )

    # Where and how to serve (command line / env).
    config: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # json: one JSON object per line; text: readable; auto: text on a terminal, else json.
    log_format: Literal["auto", "json", "text"] = "auto"
    log_bodies: bool = False  # debug: log request bodies (anything key-shaped redacted)
    metrics: bool = True  # GET /metrics, Prometheus text format

    # The config file's keys.
    api_keys: list[Annotated[str, Field(min_length=1)]] = Field([], repr=False)
    keys: list[KeyConfig] = []
    limits: Limits = Limits()
    cors_origins: list[str] = []
    keepalive_seconds: float = Field(15.0, gt=0)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1)
    # Multipart uploads (/v1/audio/*, /v1/files) are streamed, never held: their own limit.
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1)
    # Where /v1/files goes (it names no model): this upstream, else the first model's.
    files_upstream: str | None = None
    # The request line and headers of one request (431 past it); nginx allows 4 x 8 KB.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # A client that stops reading a stream is dropped after this long without a completed write
    # (on top of keepalive_seconds); a request body must arrive within body_timeout_seconds.
    send_timeout_seconds: float = Field(60.0, gt=0)
    body_timeout_seconds: float = Field(60.0, gt=0)
    # Peers whose X-Forwarded-For/-Proto are believed: addresses, CIDRs, or "*".
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    root_path: str = ""  # served under this prefix too, e.g. "/llm" behind a gateway
    pool: Pool = Pool()
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=_default_upstreams)
    models: dict[str, ModelRoute] = Field(default_factory=_default_models)
    routing: Routing = Routing()

    @model_validator(mode="after")
    def _check_trusted_proxies(self) -> Settings:
        for entry in self.trusted_proxies:
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(
                        f"trusted_proxies: {entry!r} is not an address, a CIDR or '*'"
                    ) from None
        return self

    @model_validator(mode="after")
    def _check_root_path(self) -> Settings:
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ValueError(f"root_path: must start and not end with '/', got {self.root_path!r}")
        return self

    @model_validator(mode="after")
    def _check_keys(self) -> Settings:
        names = [key.name for key in self.keys]
        for index, key in enumerate(self.keys):
            if names.count(key.name) > 1:
                raise ValueError(f"keys.{index}.name: {key.name!r} is used twice")
            for model in key.models or ():
                if model not in self.models:
                    raise ValueError(f"keys.{index}.models: unknown model {model!r}")
        return self

    @model_validator(mode="after")
    def _check_routes(self) -> Settings:
        known = ", ".join(sorted(self.upstreams)) or "none"
        for name, route in self.models.items():
            for index, target in enumerate(route.targets()):
                where = "upstream" if route.deployments is None else f"deployments.{index}.upstream"
                if target.upstream not in self.upstreams:
                    raise ValueError(
                        f"models.{name}.{where}: unknown upstream {target.upstream!r} "
                        f"(configured: {known})"
                    )
            for key in ("fallbacks", "context_window_fallbacks"):
                for other in getattr(route, key):
                    if other not in self.models or other == name:
                        raise ValueError(
                            f"models.{name}.{key}: {other!r} is not another configured model"
                        )
        return self

    @model_validator(mode="after")
    def _check_files_upstream(self) -> Settings:
        if self.files_upstream is not None and self.files_upstream not in self.upstreams:
            known = ", ".join(sorted(self.upstreams)) or "none"
            raise ValueError(
                f"files_upstream: unknown upstream {self.files_upstream!r} (configured: {known})"
            )
        return self

    def files_upstream_name(self) -> str | None:
        """The upstream of ``/v1/files``: ``files_upstream``, else the first model's (its
        first deployment's); None with no model at all."""
        if self.files_upstream is not None:
            return self.files_upstream
        for route in self.models.values():
            return route.targets()[0].upstream
        return None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) beat env, env beats the file; the file comes from either of them.
        path = getattr(init_settings, "init_kwargs", {}).get("config") or os.environ.get(
            ENV_PREFIX + "CONFIG"
        )
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path:
            sources.append(_YamlFile(settings_cls, Path(path)))
        return tuple(sources)


class _YamlFile(PydanticBaseSettingsSource):
    """The YAML config file as a settings source (its top level must be a mapping)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.data = read_config_file(path)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse the YAML file, raising ConfigError with the file (and line) on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, not {type(data).__name__}"
        )
    return data


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from flags (``overrides``), env and the config file.

    Raises ConfigError whose text names the source (file or environment), the key and the
    problem, ready to be printed as the one line of a failed start-up.
    """
    flags = {key: value for key, value in overrides.items() if value is not None}
    file = flags.get("config") or os.environ.get(ENV_PREFIX + "CONFIG")
    try:
        return Settings(**flags)
    except ValidationError as exc:
        raise ConfigError(
            f"{_source(exc, flags, file)}: {describe_validation_error(exc)}"
        ) from None


def _source(exc: ValidationError, flags: dict[str, Any], file: Any) -> str:
    """Where the first bad value came from: a flag, a ``PROXY_*`` variable, or the file."""
    first = exc.errors(include_url=False)[0]["loc"]
    field = str(first[0]) if first else ""
    if field in flags:
        return "command line"
    variable = ENV_PREFIX + field.upper()
    if variable in os.environ or any(k.startswith(variable + "__") for k in os.environ):
        return "environment"  # env beats the file: the bad value is the variable's
    return str(file) if file else "environment"


def describe_validation_error(exc: ValidationError) -> str:
    """One line: ``key.path: problem; other.key: problem``."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in _without_union_tag(error["loc"]))
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)


def _without_union_tag(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic puts the discriminator value in the location: upstreams.<name>.<type>.key.
    if len(loc) > 2 and loc[0] == "upstreams" and loc[2] in ("echo", "openai", "qwen"):
        return loc[:2] + loc[3:]
    return loc
