"""Per-key limits (requests, tokens and parallel requests per key), exact across processes.

    Limiter              the facade: admit() -> Ticket; Ticket.settle(); ready(); state
    ├── Breaker          fail fast while the backend is down, one probe after a cooldown
    ├── Heartbeat        renews the parallel-slot leases of running requests (Redis)
    └── Backend          where the counts live, one atomic admission per request
        ├── MemoryBackend   this process only; exact within it; needs nothing (default)
        └── RedisBackend    every process sharing a Redis; time from Redis; Cluster-ready

Limits are sliding windows (60 s by default): never more than the limit in ANY window, not
fixed minutes (2N across a boundary) and not a token bucket (N + refill). Errors: see
``proxy.limits.errors``.
"""

from proxy.limits.backend import Backend, Decision, Grant
from proxy.limits.breaker import Breaker
from proxy.limits.errors import BackendUnavailable, BreakerOpen, LimitsUnavailable, RateLimited
from proxy.limits.limiter import Limiter, OnBackendError, Ticket
from proxy.limits.memory import MemoryBackend
from proxy.limits.policy import KeyLimits
from proxy.limits.redis_backend import RedisBackend

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Breaker",
    "BreakerOpen",
    "Decision",
    "Grant",
    "KeyLimits",
    "Limiter",
    "LimitsUnavailable",
    "MemoryBackend",
    "OnBackendError",
    "RateLimited",
    "RedisBackend",
    "Ticket",
]
