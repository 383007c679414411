"""The heartbeat that keeps the parallel slots of a process's running requests alive.

On a backend whose slots are leases (Redis), a slot that nobody renews expires after the
lease: that is how the slots of a crashed process come back. While a request runs, its
process must therefore renew it; one task per Limiter does so for every live ticket at once,
every ``lease / 3`` seconds (10 s for the default 30 s lease), in one round trip. Two renewals
may fail in a row (Redis away ~20 s) before a running request loses its slot.

The task starts with the first live slot (it needs the running loop, never at import or
construction time) and stops with ``aclose()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from proxy.limits.backend import Grant
from proxy.limits.errors import BackendUnavailable, BreakerOpen

logger = logging.getLogger(__name__)

Renew = Callable[[Sequence[Grant]], Awaitable[None]]


class Heartbeat:
    """Renews the leases of the grants between ``add`` and ``discard``."""

    def __init__(self, renew: Renew, interval: float) -> None:
        self._renew = renew
        self.interval = interval
        self._live: dict[int, Grant] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, grant: Grant) -> None:
        self._live[grant.id] = grant
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, grant: Grant) -> None:
        """Stop renewing (synchronous: a settle cancelled halfway still stops the renewals)."""
        self._live.pop(grant.id, None)

    def __len__(self) -> int:
        return len(self._live)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._live:
                await self._beat(list(self._live.values()))

    async def _beat(self, grants: list[Grant]) -> None:
        try:
            await self._renew(grants)
        except BackendUnavailable as exc:  # the next beat tries again (see the module docstring)
            level = logging.DEBUG if isinstance(exc, BreakerOpen) else logging.WARNING
            logger.log(level, "could not renew %d parallel slot(s): %s", len(grants), exc)

    async def aclose(self) -> None:
        """Stop the task; the leases it renewed then expire by themselves."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
