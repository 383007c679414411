"""One request's way through its model and fallbacks: the attempts, in order.

    plan = router.plan("qwen")
    async for attempt in plan:          # waits the backoff; raises when nothing is left
        try:
            ... open attempt.route, read until the stream commits ...
        except ProxyError as error:
            plan.failed(attempt, error)  # decides what comes next
            continue
        plan.succeeded(attempt, ttft)
        break

The rules (``CONTRACT.md`` "Routing", README "Routing"):

- each model in the chain gets 1 + ``retries`` attempts, another deployment first when it has
  one; the n-th retry within a model waits ``backoff_seconds`` x 2^(n-1) x a random factor in
  [0.5, 1.5]; a ``Retry-After`` / ``retry-after-ms`` of at most ``max_retry_after`` is waited
  (the larger of it and the backoff) before that deployment is tried again, a longer one takes
  the deployment out of this request;
- a deployment whose breaker rests is skipped; when none may take an attempt, the next model
  starts at once (no waiting for timeouts);
- then the model's ``fallbacks`` in order (their own deployments, strategy and retries, not
  their own fallbacks); ``context_length_exceeded`` goes only to ``context_window_fallbacks``;
  any other error that retrying cannot help (a 4xx, the deadline) ends the plan at once;
- when nothing is left, iterating raises the last error (or 503 if no attempt could be made).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from proxy.errors import ModelUnavailable, ProxyError, Retry
from proxy.routing.deployments import Deployment, choose
from proxy.settings import Routing
from proxy.upstreams.base import Route


@dataclass(slots=True)
class Model:
    """A public model as the router keeps it."""

    name: str
    deployments: list[Deployment]
    strategy: str
    fallbacks: list[str]
    context_fallbacks: list[str]


class Attempt:
    """One try of one deployment for one request."""

    __slots__ = ("deployment", "model", "number", "released", "settled", "started")

    def __init__(self, deployment: Deployment, model: str, number: int) -> None:
        self.deployment = deployment
        self.model = model  # the public model this attempt answers as
        self.number = number  # 1, 2, ... across the whole plan
        self.started = time.monotonic()
        self.released = False
        self.settled = False  # the plan heard how it went (succeeded or failed)
        deployment.in_flight += 1
        deployment.breaker.claim()

    @property
    def route(self) -> Route:
        return self.deployment.route

    def release(self) -> None:
        """The attempt is over (its request ended, or it failed): no longer in flight. One
        that ended without a verdict (its client left) says nothing of the deployment's health,
        but frees a breaker's probe."""
        if not self.released:
            self.released = True
            self.deployment.in_flight -= 1
            if not self.settled:
                self.deployment.breaker.released()


Hook = Callable[[str, str, str], None]  # (model, deployment, result) after each attempt


class Plan:
    """See the module docstring. One per request; ``Router.plan`` makes it."""

    __slots__ = (
        "_ended",
        "_excluded",
        "_in_model",
        "_index",
        "_last",
        "_not_before",
        "_stop",
        "_tried",
        "attempts",
        "chain",
        "context_chain",
        "fallbacks",
        "on_attempt",
        "retries",
        "rng",
        "routing",
    )

    def __init__(
        self,
        chain: Sequence[Model],
        context_chain: Sequence[Model],
        routing: Routing,
        rng: random.Random,
        on_attempt: Hook | None = None,
    ) -> None:
        self.chain = chain
        self.context_chain = context_chain
        self.routing = routing
        self.rng = rng
        self.on_attempt = on_attempt
        self.attempts: list[tuple[str, str]] = []  # (deployment, "ok"|kind)
        self.retries = 0
        self.fallbacks: list[str] = []  # the models fallen back to
        self._index = 0
        self._in_model = 0
        self._tried: set[int] = set()  # ids of deployments tried in this model
        self._not_before: dict[int, float] = {}
        self._excluded: set[int] = set()
        self._last: ProxyError | None = None
        self._stop: ProxyError | None = None
        self._ended = False

    def __aiter__(self) -> Plan:
        return self

    async def __anext__(self) -> Attempt:
        while True:
            if self._stop is not None or self._index >= len(self.chain) or self._ended:
                self._end()
            model = self.chain[self._index]
            deployment = self._candidate(model)
            if deployment is not None:
                await self._wait(deployment)
                self._in_model += 1
                if self._in_model > 1:
                    self.retries += 1
                return Attempt(deployment, model.name, len(self.attempts) + 1)
            self._next_model()

    def _end(self) -> NoReturn:
        """Raise the error that ends the plan, holding it no longer: the plan is in the
        raising frames, so kept, it would make each failed request a reference cycle (its
        frames and body left for the cyclic collector, ``proxy/heap.py``). A plan ends once:
        iterated again, it says so rather than try again."""
        if self._ended:
            raise RuntimeError("this routing plan has ended; a request makes a new one")
        self._ended = True
        error = self._stop or self._last or self._resting()
        self._stop = self._last = None
        try:
            raise error
        finally:
            del error

    def _candidate(self, model: Model) -> Deployment | None:
        if self._in_model > self.routing.retries:
            return None
        free = [d for d in model.deployments if id(d) not in self._excluded and d.breaker.allows()]
        if not free:
            return None
        fresh = [d for d in free if id(d) not in self._tried] or free
        return choose(fresh, model.strategy, self.rng)

    async def _wait(self, deployment: Deployment) -> None:
        wait = 0.0
        if self._in_model > 0:  # a retry within the model: exponential backoff, jittered
            wait = self.routing.backoff_seconds * 2 ** (self._in_model - 1)
            wait *= self.rng.uniform(0.5, 1.5)
        wait = max(wait, self._not_before.get(id(deployment), 0.0) - time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)

    def _next_model(self) -> None:
        self._index += 1
        self._in_model = 0
        self._tried.clear()
        if self._index < len(self.chain):
            self.fallbacks.append(self.chain[self._index].name)

    def succeeded(self, attempt: Attempt, ttft: float | None = None) -> None:
        attempt.settled = True
        deployment = attempt.deployment
        deployment.breaker.succeeded()
        if ttft is not None:
            deployment.measured(ttft)
        self._record(attempt, "ok")

    def failed(self, attempt: Attempt, error: ProxyError) -> None:
        """Account for a failed attempt and decide what may come next."""
        attempt.settled = True
        attempt.release()
        deployment = attempt.deployment
        self._record(attempt, str(error.kind or "error"))
        # Kept without its traceback, whose frames hold this plan: a reference cycle (with the
        # request's body) left for the cyclic collector otherwise (proxy/heap.py). If it ends
        # the plan, ``_end`` raises it again, with a traceback of its own.
        self._last = error.with_traceback(None)
        if error.retry is Retry.RETRY:
            deployment.breaker.failed()
            self._tried.add(id(deployment))
            self._retry_after(deployment, error)
            return
        deployment.breaker.released()
        if error.retry is Retry.CONTEXT and self.context_chain:
            self.chain, self.context_chain = self.context_chain, ()
            self._index, self._in_model = 0, 0
            self._tried.clear()
            self.fallbacks.append(self.chain[0].name)
            return
        self._stop = error

    def _retry_after(self, deployment: Deployment, error: ProxyError) -> None:
        seconds = retry_after(error.headers)
        if seconds is None:
            return
        if seconds > self.routing.max_retry_after:
            self._excluded.add(id(deployment))  # too long: not in this request
        else:
            self._not_before[id(deployment)] = time.monotonic() + seconds

    def _record(self, attempt: Attempt, result: str) -> None:
        name = attempt.deployment.name
        self.attempts.append((name, result))
        if self.on_attempt is not None:
            self.on_attempt(attempt.model, name, result)

    def _resting(self) -> ProxyError:
        model = self.chain[0].name if self.chain else "?"
        return ModelUnavailable(
            f"Every deployment of the model `{model}` is resting after repeated failures; "
            "retry shortly.",
            headers={"retry-after": "1"},
        )


def retry_after(headers: dict[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
