"""proxy.limits: exact per-key limits on the memory backend and on a real redis-server.

Windows are short here (2 s instead of 60 s) so sliding can be watched; timing assertions
leave generous margins. The Redis tests start their own ``redis-server`` (tests/redis_server.py);
the cross-process tests run the limiter in separate OS processes sharing that server.
"""

from __future__ import annotations

import asyncio
import collections
import math
import multiprocessing
import os
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from proxy.errors import ProxyError
from proxy.limits import (
    Backend,
    Breaker,
    KeyLimits,
    Limiter,
    LimitsUnavailable,
    MemoryBackend,
    RateLimited,
    RedisBackend,
    Ticket,
)
from proxy.limits.backend import Decision, Grant, Ids
from proxy.limits.headers import duration, retry_after
from proxy.limits.memory import MOST
from tests.redis_server import RedisServer, running_redis

WINDOW = 2.0  # seconds: the tests' sliding window
MakeBackend = Callable[..., Backend]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the module; each test gets its own key prefix instead of a flush."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def make_backend(request: pytest.FixtureRequest) -> MakeBackend:
    """A factory (backends bind to the event loop that first uses them: build inside it)."""
    if request.param == "memory":
        return lambda window=WINDOW, **_: MemoryBackend(window=window)
    url = request.getfixturevalue("redis_server").url
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    return lambda window=WINDOW, lease=30.0: RedisBackend(
        url, window=window, lease=lease, prefix=prefix
    )


@asynccontextmanager
async def limiter(backend: Backend, **options: Any) -> AsyncIterator[Limiter]:
    lim = Limiter(backend, **options)
    try:
        yield lim
    finally:
        await lim.aclose()


async def burst(lim: Limiter, key: str, limits: KeyLimits, n: int, tokens: int = 1) -> list[Any]:
    """``n`` concurrent admissions; tickets and RateLimited errors, in order."""
    tries = (lim.admit(key, limits, tokens) for _ in range(n))
    return await asyncio.gather(*tries, return_exceptions=True)


def tickets(results: list[Any]) -> list[Ticket]:
    return [r for r in results if isinstance(r, Ticket)]


def refusals(results: list[Any]) -> list[RateLimited]:
    unexpected = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, RateLimited) for r in unexpected), unexpected
    return [r for r in results if isinstance(r, RateLimited)]


# --- vocabulary --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.12, "120ms"), (0.0004, "1ms"), (1, "1s"), (1.2, "1.2s"), (20, "20s"),
     (59.9996, "1m0s"), (360, "6m0s"), (90.5, "1m30.5s"), (3725, "1h2m5s"),
     (0.9996, "1000ms"), (1.0004, "1s"), (59.431, "59.431s"), (3599.9996, "1h0m0s"),
     # ties on half a millisecond, as Redis's microsecond resets give them: round(x, 3)'s way
     (2.9995, "2.999s"), (1.0645, "1.065s"), (59.9995, "59.999s")],
)  # fmt: skip
def test_duration_is_openais_format(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def _duration_general(seconds: float) -> str:
    """``duration`` without its fast path for under a minute: the reference it must match."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    whole_minutes, rest = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def test_durations_take_a_short_way_to_the_same_text() -> None:
    """``duration`` rounds to milliseconds from ``x * 1000`` and asks ``round(x, 3)`` only near
    a tie: on random values, on every kind of tie up to a day and on the floats either side
    of each, it must write what the general way writes."""
    rng = random.Random(7)
    values = [rng.uniform(0.5, 121) for _ in range(20_000)]
    values += [rng.uniform(0, 86_400) for _ in range(5_000)]
    values += [k / 2000 for k in range(1990, 2010)] + [k / 2000 for k in range(119_980, 120_020)]
    ties = [rng.randrange(1, 86_400 * 2000) / 2000 for _ in range(5_000)]
    values += (
        ties + [math.nextafter(t, 0) for t in ties] + [math.nextafter(t, math.inf) for t in ties]
    )
    values += [rng.randrange(1, 86_400 * 10**6) / 10**6 for _ in range(5_000)]  # Redis's µs
    values += [2.0**e * rng.uniform(1, 2) for e in range(30, 1023) for _ in range(3)]  # absurd
    values += [4398451598541.695, 4424618614369.261, 1.8e305, sys.float_info.max]
    assert [duration(v) for v in values] == [_duration_general(v) for v in values]


def test_a_tickets_raw_headers_are_its_headers_encoded() -> None:
    async def main() -> None:
        lim = Limiter(MemoryBackend())
        for n, limits in enumerate((KeyLimits(rpm=10, tpm=1000), KeyLimits(5), KeyLimits(tpm=70))):
            ticket = await lim.admit(f"k{n}", limits, 100)
            raw = ticket.raw_headers()
            assert {n.decode(): v.decode() for n, v in raw} == ticket.headers
            assert len(raw) == 3 * ((limits.rpm is not None) + (limits.tpm is not None))
            await ticket.settle(10)
        unlimited = await lim.admit("k", KeyLimits(), 100)
        assert unlimited.raw_headers() == [] and unlimited.headers == {}

    run(main())


def test_the_memory_backend_is_called_without_the_breaker() -> None:
    class Unusable(Breaker):
        def guard(self) -> Any:
            raise AssertionError("an in-process backend went through the breaker")

    async def main() -> None:
        lim = Limiter(MemoryBackend(), breaker=Unusable())
        limits = KeyLimits(rpm=2, max_parallel=1)
        ticket = await lim.admit("k", limits, 1)
        await ticket.settle(3)
        again = await lim.admit("k", limits, 1)  # the slot was freed by the settlement
        assert again.headers["x-ratelimit-remaining-requests"] == "0"

    run(main())


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after(s) for s in (0, 0.01, 1, 1.2, 59.5)] == ["1", "1", "1", "2", "60"]


def test_key_limits_validate_and_clamp_the_reservation() -> None:
    with pytest.raises(ValueError, match="rpm"):
        KeyLimits(rpm=-1)
    assert KeyLimits().unlimited and not KeyLimits(max_parallel=1).unlimited
    assert KeyLimits(tpm=1000).reservation(5000) == 1000  # a big request can still run alone
    assert KeyLimits(tpm=1000).reservation(0) == 1
    assert KeyLimits(tpm=0).reservation(0) == 1  # tpm 0 suspends the key: 1 > 0, refused
    assert KeyLimits().reservation(5000) == 5000


def test_breaker_opens_probes_once_and_closes() -> None:
    now = [0.0]
    breaker = Breaker(cooldown=3.0, clock=lambda: now[0])
    from proxy.limits import BackendUnavailable

    with pytest.raises(BackendUnavailable), breaker.guard():
        raise BackendUnavailable("down")
    assert breaker.state == "open"
    with pytest.raises(BackendUnavailable, match="next try"), breaker.guard():
        pass  # fails fast: the body does not run
    now[0] = 3.0
    probe = breaker.guard()
    probe.__enter__()
    assert breaker.state == "half_open"
    with pytest.raises(BackendUnavailable), breaker.guard():
        pass  # only one probe at a time
    probe.__exit__(None, None, None)
    assert breaker.state == "closed"


def test_a_cancelled_probe_gives_its_turn_back() -> None:
    breaker = Breaker(cooldown=0.0)
    from proxy.limits import BackendUnavailable

    with pytest.raises(BackendUnavailable), breaker.guard():
        raise BackendUnavailable("down")
    with pytest.raises(asyncio.CancelledError), breaker.guard():
        raise asyncio.CancelledError
    with breaker.guard():
        pass  # the next call may probe, and closes the breaker
    assert breaker.state == "closed"


def test_errors_have_openais_shape() -> None:
    limited = RateLimited(
        "Rate limit reached",
        key="k",
        reason="tokens",
        retry_after=1.5,
        headers={"Retry-After": "2"},
    )
    assert isinstance(limited, ProxyError)
    assert (limited.status, limited.type, limited.code) == (429, "tokens", "rate_limit_exceeded")
    parallel = RateLimited("x", key="k", reason="parallel", retry_after=1, headers={})
    assert parallel.type == "requests"
    down = LimitsUnavailable("Rate limits cannot be checked")
    assert down.to_dict()["error"]["code"] == "limits_unavailable" and down.status == 503


def test_on_backend_error_must_be_deny_or_allow() -> None:
    with pytest.raises(ValueError, match="deny or allow"):
        Limiter(MemoryBackend(), "ignore")  # type: ignore[arg-type]


# --- exactness on both backends ----------------------------------------------------------


def test_rpm_is_exact_under_a_concurrent_burst(make_backend: MakeBackend) -> None:
    n = 20

    async def scenario() -> None:
        async with limiter(make_backend()) as lim:
            results = await burst(lim, "team-a", KeyLimits(rpm=n), 3 * n)
            admitted, refused = tickets(results), refusals(results)
            assert (len(admitted), len(refused)) == (n, 2 * n)
            remaining = sorted(int(t.headers["x-ratelimit-remaining-requests"]) for t in admitted)
            assert remaining == list(range(n))
            for error in refused:
                assert (error.status, error.type, error.reason) == (429, "requests", "requests")
                assert error.headers["x-ratelimit-limit-requests"] == str(n)
                assert error.headers["x-ratelimit-remaining-requests"] == "0"
                assert 1 <= int(error.headers["Retry-After"]) <= WINDOW
                assert f"Limit {n}, Used {n}, Requested 1" in error.message
                assert "x-ratelimit-limit-tokens" not in error.headers  # tpm not configured

    run(scenario())


def test_the_window_slides_and_never_holds_more_than_n(make_backend: MakeBackend) -> None:
    """Steady attempts for 2.5 windows: admitted again as the window slides, and no span of
    one window ever holds more than N admissions (times measured by the client, so a margin
    of 0.15 s absorbs the round trips)."""
    n = 5

    async def scenario() -> list[float]:
        async with limiter(make_backend()) as lim:
            times: list[float] = []
            end = time.monotonic() + 2.5 * WINDOW
            while time.monotonic() < end:
                sent = time.monotonic()
                try:
                    await lim.admit("team-a", KeyLimits(rpm=n), 1)
                    times.append((sent + time.monotonic()) / 2)
                except RateLimited as error:
                    assert error.retry_after <= WINDOW
                await asyncio.sleep(0.03)
            return times

    times = run(scenario())
    assert len(times) >= 2 * n + 1, times  # slid at least twice
    for i, start in enumerate(times):
        inside = [t for t in times[i:] if t < start + WINDOW - 0.15]
        assert len(inside) <= n, (start, inside)


def test_retry_after_tells_when_the_next_request_fits(make_backend: MakeBackend) -> None:
    async def scenario() -> None:
        async with limiter(make_backend()) as lim:
            await burst(lim, "team-a", KeyLimits(rpm=2), 2)
            with pytest.raises(RateLimited) as refused:
                await lim.admit("team-a", KeyLimits(rpm=2), 1)
            await asyncio.sleep(refused.value.retry_after + 0.05)
            await lim.admit("team-a", KeyLimits(rpm=2), 1)

    run(scenario())


def test_tpm_counts_concurrent_reservations_and_settle_refunds(make_backend: MakeBackend) -> None:
    limits = KeyLimits(tpm=1000)

    async def scenario() -> None:
        async with limiter(make_backend()) as lim:
            first = await burst(lim, "team-a", limits, 10, tokens=300)
            refused = refusals(first)
            assert len(tickets(first)) == 3  # 900 reserved before any settled; 1200 > 1000
            assert {(e.type, e.reason) for e in refused} == {("tokens", "tokens")}
            assert "Limit 1000, Used 900, Requested 300" in refused[0].message
            assert refused[0].headers["x-ratelimit-remaining-tokens"] == "100"
            for ticket in tickets(first):
                await ticket.settle(100)  # the real figure: 300 charged, not 900
            second = await burst(lim, "team-a", limits, 10, tokens=300)
            assert len(tickets(second)) == 2  # 300 + 600 <= 1000 < 300 + 900

    run(scenario())


def test_a_request_larger_than_tpm_runs_alone_and_release_refunds(
    make_backend: MakeBackend,
) -> None:
    limits = KeyLimits(rpm=10, tpm=1000)

    async def scenario() -> None:
        async with limiter(make_backend()) as lim:
            big = await lim.admit("team-a", limits, 5000)  # clamped to 1000
            assert big.headers["x-ratelimit-remaining-tokens"] == "0"
            with pytest.raises(RateLimited, match="tokens"):
                await lim.admit("team-a", limits, 1)
            await big.release()  # never reached the upstream: no tokens, still a request
            again = await lim.admit("team-a", limits, 1000)
            assert again.headers["x-ratelimit-remaining-requests"] == "8"
            await again.settle(None)  # usage unknown: the reservation stays charged
            with pytest.raises(RateLimited, match="tokens"):
                await lim.admit("team-a", limits, 1)

    run(scenario())


def test_an_answer_longer_than_the_window_is_charged_its_overrun(
    make_backend: MakeBackend,
) -> None:
    limits = KeyLimits(tpm=1000)

    async def scenario() -> None:
        async with limiter(make_backend(window=0.5)) as lim:
            ticket = await lim.admit("team-a", limits, 100)
            await asyncio.sleep(0.7)  # its reservation has left the window
            await ticket.settle(400)  # the 300 not covered by the reservation: charged now
            after = await lim.admit("team-a", limits, 100)
            assert after.headers["x-ratelimit-remaining-tokens"] == "600"

    run(scenario())


def test_max_parallel_holds_n_and_settle_frees_once(make_backend: MakeBackend) -> None:
    limits = KeyLimits(max_parallel=3)

    async def scenario() -> None:
        async with limiter(make_backend()) as lim:
            results = await burst(lim, "team-a", limits, 10)
            held = tickets(results)
            assert len(held) == 3
            assert {(e.type, e.reason) for e in refusals(results)} == {("requests", "parallel")}
            await held[0].settle(10)
            await held[0].settle(10)  # idempotent: frees one slot, not two
            assert len(tickets(await burst(lim, "team-a", limits, 5))) == 1
            for ticket in held[1:]:
                await ticket.release()
            assert len(tickets(await burst(lim, "team-a", limits, 5))) == 2

    run(scenario())


def test_keys_are_counted_apart_and_unlimited_keys_cost_nothing(make_backend: MakeBackend) -> None:
    async def scenario() -> None:
        async with limiter(make_backend()) as lim:
            await burst(lim, "team-a", KeyLimits(rpm=1), 1)
            await lim.admit("team-b", KeyLimits(rpm=1), 1)
            free = await lim.admit("team-c", KeyLimits(), 10**9)
            assert free.headers == {}
            await free.settle(5)

    run(scenario())


# --- Redis: across processes, leases, clocks, key layout ---------------------------------


def _burst_in_process(url: str, prefix: str, n: int, count: int, start: Any, out: Any) -> None:
    """One "proxy process": its own loop and Limiter; connects, waits at the start line (a
    barrier shared with the other process), then fires ``count`` admissions in 5 concurrent
    waves 20 ms apart (one wave of 75 takes a few ms: the two processes' bursts would hardly
    overlap, one scheduler hiccup deciding who wins; waves make them interleave)."""

    async def main() -> tuple[int, int]:
        limits = KeyLimits(rpm=n, max_parallel=count)
        async with limiter(RedisBackend(url, prefix=prefix)) as lim:
            await asyncio.gather(*(lim.ready() for _ in range(count)))  # connections ready
            await asyncio.to_thread(start.wait, 30)
            results: list[Any] = []
            for _ in range(5):
                results += await burst(lim, "team-a", limits, count // 5)
                await asyncio.sleep(0.02)
            return len(tickets(results)), len(refusals(results))

    out.put((os.getpid(), *asyncio.run(main())))


def test_rpm_is_exact_across_two_processes(redis_server: RedisServer) -> None:
    n, per_process = 50, 75  # 3N in all, half from each process
    ctx = multiprocessing.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(2)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    args = (redis_server.url, prefix, n, per_process, start, out)
    processes = [ctx.Process(target=_burst_in_process, args=args) for _ in range(2)]
    for process in processes:
        process.start()
    results = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(10)
    print("\nburst across 2 processes (pid, admitted, refused):", results)
    assert sum(r[1] for r in results) == n
    assert sum(r[2] for r in results) == 2 * per_process - n
    assert all(r[1] > 0 for r in results), "both processes should win some of the race"


def _hold_a_slot(url: str, prefix: str, lease: float, held: Any) -> None:
    """A process that takes a parallel slot and never settles it (killed by the test)."""

    async def main() -> None:
        lim = Limiter(RedisBackend(url, prefix=prefix, lease=lease))
        await lim.admit("team-a", KeyLimits(max_parallel=1), 1)
        held.set()
        await asyncio.sleep(3600)

    asyncio.run(main())


def test_a_crashed_process_slot_expires_with_its_lease(redis_server: RedisServer) -> None:
    lease, prefix = 1.0, f"t-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    held = ctx.Event()
    process = ctx.Process(target=_hold_a_slot, args=(redis_server.url, prefix, lease, held))
    process.start()
    try:
        assert held.wait(30)
        limits = KeyLimits(max_parallel=1)

        async def scenario() -> float:
            async with limiter(RedisBackend(redis_server.url, prefix=prefix, lease=lease)) as lim:
                await asyncio.sleep(3 * lease)  # the holder's heartbeat keeps renewing it
                with pytest.raises(RateLimited, match="parallel"):
                    await lim.admit("team-a", limits, 1)
                process.kill()  # a crash: no settle, no more heartbeat
                killed = time.monotonic()
                while True:
                    try:
                        await (await lim.admit("team-a", limits, 1)).settle(1)
                        return time.monotonic() - killed
                    except RateLimited:
                        await asyncio.sleep(0.05)

        freed_after = run(scenario())
        print(f"\nslot of the killed process freed after {freed_after:.2f} s (lease {lease} s)")
        assert freed_after <= lease + 0.5
    finally:
        process.kill()
        process.join(10)


def test_time_comes_from_redis_not_from_the_process(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas whose clocks are an hour ahead or behind see the same window: the script
    reads Redis's TIME. (A limiter on the process clock would think the window long gone,
    or not yet begun.)"""
    prefix, limits = f"t-{uuid.uuid4().hex[:8]}", KeyLimits(rpm=3)

    async def admissions() -> list[Any]:
        async with limiter(RedisBackend(redis_server.url, prefix=prefix, window=60)) as lim:
            return await burst(lim, "team-a", limits, 3)

    assert len(tickets(run(admissions()))) == 3
    real_time, real_monotonic = time.time, time.monotonic
    for skew in (3600, -3600):
        monkeypatch.setattr(time, "time", lambda skew=skew: real_time() + skew)
        monkeypatch.setattr(time, "monotonic", lambda skew=skew: real_monotonic() + skew)
        assert len(refusals(run(admissions()))) == 3


def test_every_key_of_one_api_key_shares_one_hash_slot(redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    limits = KeyLimits(rpm=10, tpm=1000, max_parallel=5)

    async def scenario() -> None:
        async with limiter(RedisBackend(redis_server.url, prefix=prefix)) as lim:
            for name in ("team-a", "team-b", "odd}name{"):
                held = await lim.admit(name, limits, 100)
                await (await lim.admit(name, limits, 100)).settle(50)
                assert held.headers["x-ratelimit-remaining-requests"] == "9"

    run(scenario())
    client = redis.Redis(port=redis_server.port)
    try:
        keys = [k.decode() for k in client.keys(f"{{{prefix}:*")]
        ttls = {k: client.pttl(k) for k in keys}
    finally:
        client.close()
    print("\nkeys:", sorted(keys))
    assert len(keys) == 3 * 4  # req, tok, tsum, par per API key
    for name in ("team-a", "team-b", "odd}name{"):
        mine = [k for k in keys if k.startswith(f"{{{prefix}:{name}")]
        assert sorted(k.rsplit(":", 1)[1] for k in mine) == ["par", "req", "tok", "tsum"]
        assert len({key_slot(k.encode()) for k in mine}) == 1, mine
    assert all(0 < ttl <= 120_000 for ttl in ttls.values()), ttls  # idle keys disappear


def test_scripts_run_on_a_redis_cluster(tmp_path: Path) -> None:
    """A one-node cluster still refuses a script whose keys span slots (CROSSSLOT)."""
    limits = KeyLimits(rpm=2, tpm=1000, max_parallel=2)

    async def scenario(url: str) -> None:
        async with limiter(RedisBackend(url, cluster=True, lease=0.6)) as lim:
            held = await lim.admit("team-a", limits, 10)
            other = await lim.admit("team-b", limits, 10)
            await asyncio.sleep(1.0)  # heartbeats renew both leases
            await held.settle(5)
            assert len(tickets(await burst(lim, "team-a", limits, 3))) == 1
            assert lim.state == "closed" and await lim.ready()
            await other.release()

    with running_redis(tmp_path, cluster=True) as server:
        run(scenario(server.url))


# --- Redis down: bounded answers, deny or allow, recovery --------------------------------


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
@pytest.mark.parametrize("policy", ["deny", "allow"])
def test_redis_outage_answers_within_2s_and_recovers_within_10s(
    tmp_path: Path, outage: str, policy: str
) -> None:
    limits = KeyLimits(rpm=10_000, tpm=10**9, max_parallel=1000)

    async def admit_timed(lim: Limiter) -> tuple[float, Any]:
        started = time.monotonic()
        try:
            result: Any = await lim.admit("team-a", limits, 10)
        except LimitsUnavailable as error:
            result = error
        return time.monotonic() - started, result

    def admitted_for_real(result: Any) -> bool:
        return isinstance(result, Ticket) and bool(result.headers)  # a miss has no x-ratelimit-*

    async def scenario(server: RedisServer) -> None:
        async with limiter(RedisBackend(server.url), on_backend_error=policy) as lim:
            before = await lim.admit("team-a", limits, 10)
            assert await lim.ready() and lim.state == "closed"
            server.stop() if outage == "stopped" else server.freeze()

            sequential = [await admit_timed(lim) for _ in range(5)]
            concurrent = await asyncio.gather(*(admit_timed(lim) for _ in range(20)))
            started = time.monotonic()
            await before.settle(10)  # best effort, bounded, never raises
            assert time.monotonic() - started < 2
            assert not await lim.ready() and lim.state in ("open", "half_open")
            assert (await lim.admit("free", KeyLimits(), 1)).headers == {}  # needs no backend

            timings = [t for t, _ in sequential + concurrent]
            print(f"\n{outage}/{policy}: slowest answer {max(timings):.3f} s")
            assert max(timings) < 2.0
            for _, result in sequential + concurrent:
                if policy == "deny":
                    assert isinstance(result, LimitsUnavailable), result
                    assert (result.status, result.type) == (503, "server_error")
                    assert str(server.port) not in result.message  # no internal address
                    assert int(result.headers["Retry-After"]) >= 1
                else:
                    assert isinstance(result, Ticket) and result.headers == {}
            assert lim.misses == (25 if policy == "allow" else 0)

            server.start() if outage == "stopped" else server.thaw()
            back = time.monotonic()
            while not admitted_for_real((await admit_timed(lim))[1]):
                assert time.monotonic() - back < 10
                await asyncio.sleep(0.2)
            print(f"{outage}/{policy}: admitted again {time.monotonic() - back:.2f} s after")
            assert await lim.ready() and lim.state == "closed"

    server = RedisServer(tmp_path)
    server.start()
    try:
        run(scenario(server))
    finally:
        server.stop()


# --- cost ---------------------------------------------------------------------------------


def test_cost_of_1000_admissions(make_backend: MakeBackend, request: pytest.FixtureRequest) -> None:
    """Not a benchmark: a figure to see the order of magnitude (printed with -s)."""
    limits = KeyLimits(rpm=10**6, tpm=10**9, max_parallel=10**6)

    async def scenario() -> tuple[list[float], float]:
        async with limiter(make_backend(window=60.0)) as lim:
            latencies = []
            for _ in range(1000):
                started = time.perf_counter()
                ticket = await lim.admit("team-a", limits, 10)
                latencies.append(time.perf_counter() - started)
                await ticket.settle(5)
            started = time.perf_counter()
            held = await burst(lim, "team-b", limits, 1000)
            elapsed = time.perf_counter() - started
            assert len(tickets(held)) == 1000
            return latencies, 1000 / elapsed

    latencies, rate = run(scenario())
    p50, p99 = statistics.median(latencies), sorted(latencies)[989]
    name = request.node.callspec.params["make_backend"]
    print(
        f"\n{name}: admit p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms (sequential); "
        f"{rate:,.0f} admissions/s (1000 concurrent)"
    )
    assert p50 < 0.05


def test_grant_names_are_unique_per_process_even_after_a_fork() -> None:
    """A shared backend names a grant by a per-process random prefix and its number: a child
    forked after the limiter was built must not name its grants as the parent does (the names
    key entries shared in Redis)."""
    ids = Ids()
    first, second = ids(0), ids(1)
    assert first != second and first.split("-")[0] == second.split("-")[0]
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write the name of its next grant and leave at once
        os.write(writer, ids(2).encode())
        os._exit(0)
    os.close(writer)
    child = os.read(reader, 100).decode()
    os.waitpid(pid, 0)
    os.close(reader)
    parent = ids(2)
    assert child.split("-")[0] != parent.split("-")[0], (child, parent)
    assert len({first, second, child, parent}) == 4


def test_a_limiter_numbers_its_grants_and_redis_names_them_apart() -> None:
    """Grants are numbered per Limiter; the Redis backend's names for them carry its
    process's prefix (what the scripts store), the memory backend uses the numbers."""

    async def main() -> None:
        lim = Limiter(MemoryBackend())
        first = await lim.admit("k", KeyLimits(max_parallel=5), 1)
        second = await lim.admit("k", KeyLimits(max_parallel=5), 1)
        assert first._grant is not None and second._grant is not None
        assert (first._grant.id, second._grant.id) == (0, 1)
        backend = RedisBackend("redis://127.0.0.1:1/0")
        names = {backend._ids(first._grant.id), backend._ids(second._grant.id)}
        assert len(names) == 2 and all(re.fullmatch(r"[0-9a-f]{16}-[01]", n) for n in names)
        await backend.aclose()

    run(main())


class _Reference(MemoryBackend):
    """The memory backend's admission as its parts compose it, without the hot path's one
    pass: what ``MemoryBackend.admit`` must answer, field for field."""

    async def admit(self, grant: Grant) -> Decision:
        now = self._clock()
        log = self._log(grant.key, now)
        refused = self._refusal(log, grant)
        if refused is None:
            self._record(log, grant, now)
        return self._decision(log, grant, now, refused)


def test_the_memory_backends_arrays_keep_the_log_a_plain_list_would() -> None:
    """The memory backend's logs are C arrays whose front is dropped lazily and moved down now
    and then; a plain list of [time, amount] entries is the model. Over a long run (thousands
    of entries in the window, so the arrays are moved down many times), with reservations
    replaced in the window, overruns charged after it, usage kept (None) and absurd figures
    clamped, both must hold the same entries and totals after every step."""

    async def main() -> None:
        rng = random.Random(5)
        now, window = [0.0], 10.0
        backend = MemoryBackend(window, lambda: now[0])
        limits = KeyLimits(rpm=10**9, tpm=10**30, max_parallel=10**9)
        requests: collections.deque[float] = collections.deque()
        tokens: collections.deque[list[float]] = collections.deque()
        reserved: dict[int, list[float]] = {}  # grant id -> its entry in the model
        held: list[Grant] = []
        moved = 0
        for step in range(30_000):
            now[0] += rng.choice([0.0, 0.001, 0.004, 0.01, 0.5])
            edge = now[0] - window
            while requests and requests[0] <= edge:
                requests.popleft()
            while tokens and tokens[0][0] <= edge:
                tokens.popleft()
            if held and rng.random() < 0.45:
                grant = held.pop(rng.randrange(len(held)) if rng.random() < 0.3 else 0)
                used = rng.choice([None, 0, 3, 40, 5000, 10**30])
                await backend.settle(grant, used)
                entry = reserved.pop(grant.id)
                if used is not None and any(e is entry for e in tokens):
                    entry[1] = min(used, MOST)
                elif used is not None and used > grant.tokens:
                    tokens.append([now[0], min(used - grant.tokens, MOST)])
            else:
                grant = Grant("k", limits, rng.randint(1, 3000), step)
                assert (await backend.admit(grant)).admitted
                requests.append(now[0])
                reserved[grant.id] = [now[0], grant.tokens]
                tokens.append(reserved[grant.id])
                held.append(grant)
            log = backend._logs["k"]
            log.trim(edge)
            kept = log.tokens
            moved = max(moved, kept.base)
            assert list(log.requests.times[log.requests.head :]) == list(requests), step
            assert [
                [t, a]
                for t, a in zip(kept.times[kept.head :], kept.amounts[kept.head :], strict=True)
            ] == [[t, a] for t, a in tokens], step
            assert log.total == sum(a for _, a in tokens), step
        assert moved > 10_000  # the arrays were moved down, many times over

    run(main())


def test_grants_never_settled_do_not_keep_their_numbers_and_late_ones_pay_their_overrun() -> None:
    """A reservation's number is kept until its grant settles; one never settled (a bug
    elsewhere) is forgotten once its charge left the window and the arrays moved down. A grant
    settled after that still pays what it used beyond its reservation, and absurd figures
    (below zero, past 64 bits) are charged as 0 and 2**62 rather than raising."""

    async def main() -> None:
        now = [0.0]
        backend = MemoryBackend(1.0, lambda: now[0])
        limits = KeyLimits(tpm=10**30)
        late = Grant("k", limits, 10, -1)
        assert (await backend.admit(late)).admitted
        for number in range(20_000):  # 200 s of grants nobody settles, 100 a second
            now[0] += 0.01
            assert (await backend.admit(Grant("k", limits, 10, number))).admitted
        log = backend._logs["k"]
        # Bounded by the window and the drops between two moves (1,024 at least), not 20,000.
        assert log.tokens.base > 0 and len(log.charged) <= len(log.tokens) + 2 * 1024
        total = log.total
        await backend.settle(late, 25)  # its 10 left the window long ago: 15 more now
        assert log.total == total + 15
        for used in (-(10**30), 10**30):
            grant = Grant("k", limits, 10, 10**6 + used % 7)
            assert (await backend.admit(grant)).admitted
            before = log.total
            await backend.settle(grant, used)
            assert log.total == before - 10 + (0 if used < 0 else MOST)

    run(main())


def test_the_memory_backends_hot_path_answers_as_its_parts_do() -> None:
    async def main() -> None:
        rng = random.Random(11)
        now = [0.0]
        fast, slow = MemoryBackend(10.0, lambda: now[0]), _Reference(10.0, lambda: now[0])
        choices = [None, 0, 1, 3, 50]
        held: list[tuple[Grant, Grant]] = []
        for step in range(20_000):
            now[0] += rng.choice([0.0, 0.01, 0.5, 3.0])
            if held and rng.random() < 0.4:
                a, b = held.pop(rng.randrange(len(held)))
                used = rng.choice([None, 0, 1, 7, 40])
                await fast.settle(a, used)
                await slow.settle(b, used)
                continue
            limits = KeyLimits(rng.choice(choices), rng.choice(choices), rng.choice(choices))
            key, tokens = rng.choice("ab"), rng.randint(1, 20)
            a, b = Grant(key, limits, tokens, step), Grant(key, limits, tokens, step)
            decided = await fast.admit(a)
            assert decided == await slow.admit(b), step
            if decided.admitted:
                held.append((a, b))

    run(main())
