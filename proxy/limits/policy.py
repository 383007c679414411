"""What one API key may do: the three limits, each optional."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The limits of one key; ``None`` means no limit of that kind.

    ``rpm``: requests admitted in any window (60 s by default); ``tpm``: tokens charged in any
    window (the reservations of the requests still running, the real figures of those that
    ended); ``max_parallel``: requests in flight at once. Zero is allowed and refuses every
    request: a way to suspend a key without removing it.
    """

    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_parallel"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0 or None, not {value!r}")

    @property
    def unlimited(self) -> bool:
        """True when nothing is limited: such a key never needs the backend."""
        return self.rpm is None and self.tpm is None and self.max_parallel is None

    def reservation(self, tokens: int) -> int:
        """The tokens to reserve up front for a request announcing ``tokens``.

        At least 1 (every answer costs a token), and at most ``tpm``: a request larger than the
        whole budget could otherwise never run; clamped, it runs alone in an empty window and
        its real figure is charged when it ends.
        """
        reserved = max(tokens, 1)
        if self.tpm:  # tpm == 0 keeps the 1, so a suspended key stays refused
            reserved = min(reserved, self.tpm)
        return reserved
