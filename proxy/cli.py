"""The command line: ``chat-stream-proxy [serve] [--config F] [--host H] [--port P] [--workers N]``.

``python -m proxy`` is the same command. A bad config stops start-up with one line on stderr
naming the file, the key and the problem, and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from proxy.heap import freeze_startup
from proxy.observability.logs import setup_logging
from proxy.settings import ENV_PREFIX, ConfigError, Settings, load_settings
from proxy.tools.probe import CLIENTS, DEFAULT_CLIENT, INSTALL_HINT
from proxy.tools.probe_apis import APIS, DEFAULT_API

COMMANDS = ("serve", "probe", "inspect")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-stream-proxy",
        description="OpenAI-compatible chat streaming proxy (echo model by default).",
    )
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the proxy (the default command)")
    serve.add_argument("--config", help="YAML config file (env PROXY_CONFIG)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1; env PROXY_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; env PROXY_PORT)")
    serve.add_argument(
        "--workers", type=int, help="worker processes (default 1; env PROXY_WORKERS)"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    probe = sub.add_parser(
        "probe",
        help="tell true streaming from pseudo-streaming at any OpenAI-compatible endpoint",
        description="Exit code: 0 true streaming, 1 pseudo-streaming, 2 not streaming, "
        "3 inconclusive, 4 the request failed.",
    )
    probe.add_argument("url", help="the base URL, e.g. http://127.0.0.1:8000/v1")
    probe.add_argument("--model", required=True)
    probe.add_argument(
        "--client",
        choices=CLIENTS,
        default=DEFAULT_CLIENT,
        help=f"httpx (default) and raw need nothing more; openai, requests and "
        f"requests-buffered need the probe extra: {INSTALL_HINT}",
    )
    probe.add_argument(
        "--api",
        choices=list(APIS),
        default=DEFAULT_API,
        help="chat completions (default) or the Responses API",
    )
    probe.add_argument("--prompt", default="Count from 1 to 20, one number per line.")
    probe.add_argument("--api-key", default="", help="sent as Authorization: Bearer")
    inspect = sub.add_parser(
        "inspect", help="a server that prints exactly what a client sends, and echoes it back"
    )
    inspect.add_argument("--host", default="127.0.0.1")
    inspect.add_argument("--port", type=int, default=8008)
    inspect.add_argument(
        "--show-secrets", action="store_true", help="do not redact bearer keys and passwords"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help")):
        args.insert(0, "serve")
    options = build_parser().parse_args(args)
    if options.command == "probe":
        return _probe(options)
    if options.command == "inspect":
        from proxy.tools.inspector import serve_inspector

        serve_inspector(options.host, options.port, show_secrets=options.show_secrets)
        return 0
    try:
        settings = load_settings(
            config=options.config,
            host=options.host,
            port=options.port,
            workers=options.workers,
            log_level=options.log_level,
        )
    except ConfigError as exc:
        print(f"chat-stream-proxy: config error: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


def serve(settings: Settings) -> None:
    """Run uvicorn with the proxy until SIGINT/SIGTERM."""
    import uvicorn

    setup_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        try:
            _metrics_directory()
        except OSError as exc:
            print(
                "chat-stream-proxy: --workers needs a writable directory for the shared "
                f"metrics: {exc.strerror or exc} (set PROMETHEUS_MULTIPROC_DIR, or mount a tmpfs "
                "at /tmp)",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
    models = ", ".join(
        f"{name} -> {'|'.join(target.upstream for target in route.targets())}"
        for name, route in settings.models.items()
    )
    print(
        f"chat-stream-proxy: serving http://{settings.host}:{settings.port}/v1 ({models})",
        file=sys.stderr,
        flush=True,
    )
    _raise_file_limit()
    # uvicorn re-raises the signal it shut down on, once done: end quietly rather than die of it.
    signal.signal(signal.SIGTERM, _exit(0))
    signal.signal(signal.SIGINT, _exit(130))
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # one line per request comes from the proxy itself
        "proxy_headers": False,  # the app applies X-Forwarded-* from trusted_proxies itself
        "backlog": 4096,  # bursts of new streams: uvicorn's 2048 drops connections sooner
        # uvicorn's httptools protocol with a bound on request heads (proxy.server); a string,
        # so that each worker process imports it.
        "http": "proxy.server:ProxyHTTPProtocol",
        # The proxy's own log format for uvicorn's lines too (uvicorn's default config would put
        # plain-text handlers back on its loggers, mixing formats in a JSON log).
        "log_config": None,
        # The app ends its own streams after the grace period (proxy.shutdown); this is a backstop.
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds + 5,
    }
    if settings.workers == 1:
        from proxy.app import create_app

        app = create_app(settings)
        freeze_startup()
        uvicorn.run(app, **common)  # type: ignore[arg-type]
        return
    # Each worker process builds its own app from the environment: pass the flags on.
    for key, value in (
        ("config", settings.config),
        ("log_level", settings.log_level),
        ("log_format", settings.log_format),
        ("host", settings.host),
        ("port", settings.port),
    ):
        if value is not None:
            os.environ[ENV_PREFIX + key.upper()] = str(value)
    uvicorn.run(
        "proxy.app:create_app_from_env",
        factory=True,
        workers=settings.workers,
        **common,  # type: ignore[arg-type]
    )


def _exit(code: int) -> Callable[[int, FrameType | None], None]:
    def handler(sig: int, frame: FrameType | None) -> None:
        raise SystemExit(code)

    return handler


def _raise_file_limit() -> None:
    """Each stream holds two sockets (client and upstream): allow as many as the system does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _metrics_directory() -> None:
    """With several workers, metrics live in files they share (prometheus multiprocess mode).

    Set before any worker imports prometheus-client; emptied so no stale values from an
    earlier run are summed in.
    """
    import shutil
    import tempfile

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
    else:
        path = tempfile.mkdtemp(prefix="chat-stream-proxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)


def _probe(options: argparse.Namespace) -> int:
    from proxy.tools.probe import ProbeError, run

    try:
        verdict = run(
            options.url,
            options.model,
            client=options.client,
            prompt=options.prompt,
            api_key=options.api_key,
            api=options.api,
        )
    except ProbeError as exc:
        print(f"chat-stream-proxy probe: {exc}", file=sys.stderr)
        return 4
    return verdict.exit_code
