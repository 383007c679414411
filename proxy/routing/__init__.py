"""Routing: which deployment answers a call, and what happens when one fails.

A public model has one or more deployments (``deployments.py``: an upstream and its name for
the model, with a circuit breaker, ``breaker.py``); ``router.py`` builds them from the config
and hands out a ``Plan`` per request (``plan.py``): the attempts, in order, with their
backoffs, ``Retry-After``, the model's fallbacks and the rule that nothing is retried once a
stream has committed. The relay runs the attempts; the plan decides.
"""

from proxy.routing.plan import Attempt, Plan
from proxy.routing.router import Router

__all__ = ["Attempt", "Plan", "Router"]
