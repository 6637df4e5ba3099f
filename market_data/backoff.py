"""Retry delays as a pure policy: the policy computes, the caller decides when to act.

Like ``redis.backoff``, a policy only answers "after ``failures`` consecutive failures, how long
until the next attempt?"; it never sleeps and holds no state, so one object can serve every
connection and tests need no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from market_data import MarketDataError


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Capped exponential backoff: ``initial_s``, ``2 * initial_s``, ... up to ``max_s``.

    >>> policy = ExponentialBackoff(initial_s=0.1, max_s=0.5)
    >>> [policy.compute(n) for n in range(5)]
    [0.0, 0.1, 0.2, 0.4, 0.5]
    """

    initial_s: float
    max_s: float

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise MarketDataError(
                "backoff must satisfy 0 < initial_s <= max_s; "
                f"got initial_s={self.initial_s}, max_s={self.max_s}"
            )

    @classmethod
    def from_ms(cls, initial_ms: int, max_ms: int) -> ExponentialBackoff:
        """The policy for delays configured in milliseconds (``retry_initial_ms``, ...)."""
        return cls(initial_ms / 1000, max_ms / 1000)

    def compute(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (0 when there were none)."""
        if failures <= 0:
            return 0.0
        # Past 2**63 times the initial delay every float is above any sane cap; keeps pow small.
        exponent = min(failures - 1, 63)
        return min(self.max_s, self.initial_s * 2**exponent)
