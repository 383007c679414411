"""A public model's deployments as the router keeps them, and how one is chosen.

``strategy`` picks among the deployments that may take an attempt now:

- ``weighted`` (default): at random, in proportion to ``weight``;
- ``least_busy``: the fewest attempts in flight in this process (ties: by weight);
- ``lowest_latency``: the lowest moving average of time to first token, with a margin: any
  deployment within ``LATENCY_MARGIN`` of the fastest may be chosen (by weight), so one fast
  deployment is not flooded the moment it measures a millisecond better; one with no
  measurement yet is tried first, so each gets measured.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from proxy.routing.breaker import Breaker
from proxy.upstreams.base import Route

LATENCY_MARGIN = 0.25  # within 25% of the fastest counts as fast
LATENCY_WEIGHT = 0.3  # the moving average's weight for a new measurement


class Deployment:
    """One deployment of one public model: its route, breaker and statistics."""

    __slots__ = ("breaker", "first_token", "in_flight", "latency", "name", "route", "weight")

    def __init__(
        self, route: Route, weight: float, first_token: float | None, breaker: Breaker
    ) -> None:
        self.route = route
        self.name = f"{route.upstream_name}/{route.upstream_model}"
        self.weight = weight
        self.first_token = first_token
        self.breaker = breaker
        self.in_flight = 0
        self.latency: float | None = None  # moving average of time to first token, seconds

    def measured(self, seconds: float) -> None:
        if self.latency is None:
            self.latency = seconds
        else:
            self.latency += LATENCY_WEIGHT * (seconds - self.latency)


def choose(candidates: Sequence[Deployment], strategy: str, rng: random.Random) -> Deployment:
    """One of ``candidates`` (non-empty) by ``strategy``."""
    if len(candidates) == 1:
        return candidates[0]
    if strategy == "least_busy":
        fewest = min(d.in_flight for d in candidates)
        candidates = [d for d in candidates if d.in_flight == fewest]
    elif strategy == "lowest_latency":
        unmeasured = [d for d in candidates if d.latency is None]
        if unmeasured:
            candidates = unmeasured
        else:
            best = min(d.latency or 0.0 for d in candidates)
            candidates = [
                d for d in candidates if (d.latency or 0.0) <= best * (1 + LATENCY_MARGIN)
            ]
    return rng.choices(candidates, weights=[d.weight for d in candidates])[0]
