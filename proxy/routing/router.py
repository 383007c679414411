"""The router: every public model's deployments and fallbacks, built once from the config.

Breakers and statistics (in flight, latency) live in this object, so in each process: with
``--workers N`` each worker has its own (README "Routing": what is shared and what is not).
"""

from __future__ import annotations

import logging
import random
from typing import Any, NamedTuple

from proxy.errors import ModelNotFound
from proxy.observability.metrics import Metrics
from proxy.routing.breaker import Breaker
from proxy.routing.deployments import Deployment
from proxy.routing.plan import Model, Plan
from proxy.settings import HTTPUpstream, Settings
from proxy.upstreams.base import Route, Upstream

log = logging.getLogger(__name__)


class _Reach(NamedTuple):
    """What every request to one public model starts from."""

    chain: tuple[Model, ...]  # the model, then its fallbacks
    context: tuple[Model, ...]  # its context-window fallbacks
    deadline: float | None  # the longest ``timeouts.total`` among all their deployments


class Router:
    def __init__(
        self,
        settings: Settings,
        upstreams: dict[str, Upstream],
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.routing = settings.routing
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.models = {
            name: self._model(name, config, settings, upstreams)
            for name, config in settings.models.items()
        }
        # What every request to a model starts from, made once.
        self._routes = {name: self._route(model) for name, model in self.models.items()}

    def _model(
        self, name: str, config: Any, settings: Settings, upstreams: dict[str, Upstream]
    ) -> Model:
        deployments = []
        for target in config.targets():
            upstream_config = settings.upstreams[target.upstream]
            timeouts = (
                upstream_config.timeouts if isinstance(upstream_config, HTTPUpstream) else None
            )
            route = Route(
                public_model=name,
                upstream_name=target.upstream,
                upstream=upstreams[target.upstream],
                upstream_model=target.model or name,
                force_stream=target.force_stream,
                deadline=timeouts.total if timeouts is not None else None,
            )
            cooldown = self.routing.cooldown
            hook = self._breaker_hook(name, f"{route.upstream_name}/{route.upstream_model}")
            breaker = Breaker(cooldown.failures, cooldown.seconds, on_change=hook)
            first_token = timeouts.first_token if timeouts is not None else None
            deployments.append(Deployment(route, target.weight, first_token, breaker))
        return Model(
            name, deployments, config.strategy, config.fallbacks, config.context_window_fallbacks
        )

    def _breaker_hook(self, model: str, deployment: str) -> Any:
        def changed(state: str) -> None:
            log.warning("breaker of %s (%s) is now %s", deployment, model, state)
            if self.metrics is not None:
                self.metrics.breaker_changed(deployment, state)

        return changed

    def _route(self, first: Model) -> _Reach:
        chain = (first, *(self.models[name] for name in first.fallbacks))
        context = tuple(self.models[name] for name in first.context_fallbacks)
        # The longest ``timeouts.total`` among every deployment a request may reach.
        totals = [
            d.route.deadline
            for model in (*chain, *context)
            for d in model.deployments
            if d.route.deadline is not None
        ]
        return _Reach(chain, context, max(totals) if totals else None)

    def plan(self, model: str) -> Plan:
        """The attempts for a request to ``model``; raises ModelNotFound."""
        route = self._routes.get(model)
        if route is None:
            raise ModelNotFound(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
            )
        hook = self.metrics.attempt if self.metrics is not None else None
        return Plan(route.chain, route.context, self.routing, self.rng, on_attempt=hook)

    def deadline(self, model: str) -> float | None:
        """The longest ``timeouts.total`` among every deployment a request to ``model`` may
        reach: the watchdog's bound for the whole request."""
        return self._routes[model].deadline
