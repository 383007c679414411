"""Run the proxy with httpx-aiohttp's transport, for the bench's transport comparison only.

    pip install httpx-aiohttp && python bench/run.py --transport aiohttp --core

The product does not use it (README "Performance": the figures that decided it)."""

from __future__ import annotations

import sys
from typing import Any

import httpx


def main() -> int:
    from httpx_aiohttp import AiohttpTransport

    import proxy.app
    from proxy.cli import main as proxy_main

    def build(kind: str, limits: httpx.Limits) -> Any:
        return AiohttpTransport()

    proxy.app.build_transport = build  # type: ignore[assignment]
    return proxy_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
