"""Limits shared by every process and replica through Redis (or Valkey), exact across them.

Each admission is one EVALSHA of ``script.ADMIT``: Redis runs it atomically, so two
processes can never both take the last request of a window. Every call is bounded twice: the
socket timeouts of the client and an ``asyncio.timeout`` around the whole call (which also
covers a server that accepts connections but never answers, e.g. a frozen or overloaded one).
Every failure of Redis or of the network leaves this module as ``BackendUnavailable``; the
Limiter's breaker then stops calling for a while.

Parallel slots are leases (``lease`` seconds, 30 by default) in ``{csp:<name>}:par``: the
Limiter's heartbeat renews the leases of its running requests every ``lease / 3`` s, so a
slot held by a process that crashed expires by itself within ``lease``.

A call that times out (or whose request is cancelled, a client gone mid-admission) may
still have run on the server: an admission then counts although nobody got its ticket (never
more admitted than the limit; its slot, renewed by nobody, expires with its lease), a
settlement may be lost (its reservation stays charged). Both err on the side of the limit.

Needs Redis >= 5 or Valkey (scripts replicated by effects, so ``TIME`` inside a script is
allowed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from proxy.limits.backend import Decision, Grant, Ids
from proxy.limits.errors import BackendUnavailable, Reason
from proxy.limits.script import ADMIT, RENEW, SETTLE

T = TypeVar("T")

_REASONS: dict[int, Reason] = {1: "requests", 2: "tokens", 3: "parallel"}
_US = 1_000_000


class RedisBackend:
    """Sliding logs in Redis sorted sets, shared by every process using the same ``url``.

    ``prefix`` starts every key (several proxies can share one Redis with different
    prefixes); ``cluster=True`` talks to a Redis Cluster (the keys are hash-tagged for it);
    at most ``max_connections`` calls are in flight per process, the others queue.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 1.0,
        *,
        window: float = 60.0,
        lease: float = 30.0,
        prefix: str = "csp",
        cluster: bool = False,
        max_connections: int = 64,
    ) -> None:
        self.timeout = timeout
        self.window = window
        self.lease: float | None = lease
        self.prefix = prefix
        self.cluster = cluster
        self._client = _connect(url, timeout, cluster)
        self._ids = Ids()  # a grant's number is unique in this process; its name, everywhere
        # Calls beyond this many wait for a connection (within their timeout) instead of
        # opening ever more of them: Redis runs scripts one at a time anyway, and redis-py's
        # pools refuse outright past their size (100) rather than wait.
        self._connections = asyncio.Semaphore(max_connections)
        self._admit = self._client.register_script(ADMIT)
        self._settle = self._client.register_script(SETTLE)
        self._renew = self._client.register_script(RENEW)
        # Two windows (or leases) without a write: nothing in the key can matter any more.
        self._ttl_ms = int(2 * max(window, lease) * 1000)

    def keys(self, name: str) -> tuple[str, str, str, str]:
        """The Redis keys of API key ``name``: req, tok, tsum, par; one hash tag, one slot."""
        tag = f"{{{self.prefix}:{name}}}"
        return f"{tag}:req", f"{tag}:tok", f"{tag}:tsum", f"{tag}:par"

    async def admit(self, grant: Grant) -> Decision:
        limits = grant.limits
        args = [
            int(self.window * _US),
            _or_none(limits.rpm),
            _or_none(limits.tpm),
            _or_none(limits.max_parallel),
            grant.tokens,
            self._ids(grant.id),
            int((self.lease or 0) * _US),
            self._ttl_ms,
        ]
        reply = await self._bounded(lambda: self._admit(keys=self.keys(grant.key), args=args))
        return _decision(reply)

    async def settle(self, grant: Grant, used_tokens: int | None) -> None:
        if grant.limits.max_parallel is None and (used_tokens is None or grant.limits.tpm is None):
            return  # nothing to free, nothing to correct: no round trip
        _, tok, tsum, par = self.keys(grant.key)
        used = -1 if used_tokens is None or grant.limits.tpm is None else max(0, used_tokens)
        args = [self._ids(grant.id), grant.tokens, used, int(self.window * _US), self._ttl_ms]
        await self._bounded(lambda: self._settle(keys=[tok, tsum, par], args=args))

    async def renew(self, grants: Sequence[Grant]) -> None:
        """Renew the leases of ``grants``: a RENEW per API key, all in one round trip."""
        ids: dict[str, list[str]] = {}
        for grant in grants:
            ids.setdefault(grant.key, []).append(self._ids(grant.id))
        lease_us = int((self.lease or 0) * _US)
        calls: list[tuple[str, list[int | str]]] = [
            (self.keys(name)[3], [lease_us, self._ttl_ms, *members])
            for name, members in ids.items()
        ]
        await self._bounded(lambda: self._renew_all(calls))

    async def _renew_all(self, calls: list[tuple[str, list[int | str]]]) -> None:
        if self.cluster:  # a cluster pipeline refuses EVALSHA: concurrent calls, one per key
            await asyncio.gather(*(self._renew(keys=[key], args=args) for key, args in calls))
            return
        await self._renew_pipelined(calls)

    async def _renew_pipelined(self, calls: list[tuple[str, list[int | str]]]) -> None:
        """EVALSHAs in one pipeline; a server that lost its scripts (restarted) gets RENEW
        loaded and the pipeline once more. (redis-py's scripts in pipelines would ask
        SCRIPT EXISTS first: a second round trip on every heartbeat.)"""
        for attempt in range(2):
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, args in calls:
                        pipe.evalsha(self._renew.sha, 1, key, *args)
                    await pipe.execute()
                return
            except NoScriptError:
                if attempt:
                    raise
                await self._client.script_load(RENEW)

    async def ping(self) -> None:
        await self._bounded(self._client.ping)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _bounded(self, call: Callable[[], Awaitable[T]]) -> T:
        """The one boundary with Redis: bounded in time (waiting for a connection included),
        every failure translated."""
        try:
            async with asyncio.timeout(self.timeout), self._connections:
                return await call()
        except TimeoutError as exc:
            raise BackendUnavailable(f"Redis did not answer within {self.timeout:g} s") from exc
        except (RedisError, RedisClusterException, OSError) as exc:
            raise BackendUnavailable(f"Redis failed: {exc}") from exc


def _connect(url: str, timeout: float, cluster: bool) -> Any:
    """A client whose every socket operation is bounded by ``timeout``.

    One immediate retry (no backoff): after Redis restarts, the first command on a pooled
    connection finds it closed; the retry reconnects within the same call, so the breaker's
    probe succeeds as soon as Redis is back.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
    }
    if cluster:
        return redis.asyncio.RedisCluster.from_url(url, **options)
    return redis.asyncio.Redis.from_url(url, **options)


def _or_none(limit: int | None) -> int:
    return -1 if limit is None else limit


def _decision(reply: list[int]) -> Decision:
    admitted, refused, requests, tokens, parallel, reset_req, reset_tok = reply
    reason = _REASONS.get(refused)
    waits = {"requests": reset_req / _US, "tokens": reset_tok / _US, "parallel": 1.0}
    return Decision(
        admitted=bool(admitted),
        refused_by=reason,
        requests=requests,
        tokens=tokens,
        parallel=parallel,
        reset_requests=reset_req / _US,
        reset_tokens=reset_tok / _US,
        retry_after=waits[reason] if reason else 0.0,
    )
