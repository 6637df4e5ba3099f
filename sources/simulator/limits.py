"""Binance's rate limits, as pure bookkeeping: REST request weight and WebSocket message rate.

The caller passes the time in (seconds, any monotonic or wall clock) and acts on the verdict.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one REST request: its HTTP status, the weight used, how long to wait."""

    status: int  # 200, 429 (over the budget) or 418 (banned for not backing off)
    used_weight: int  # for X-MBX-USED-WEIGHT-1M
    retry_after_s: int = 0  # for Retry-After on 429 and 418


class WeightLimiter:
    """Request weight per client address in fixed windows (a minute at Binance).

    Past the budget a request gets 429 with the seconds left in the window. A client that sends
    more than ``ban_after_429`` requests over the budget in one window is banned for ``ban_s``
    seconds: every request then gets 418 with the seconds left in the ban. Refused requests use no
    weight.

    It also remembers every ``Retry-After`` a client was given (its own 429s and 418s, and those
    the caller reports with :meth:`told_to_wait`) and counts the requests the client sends before
    that time has passed (:meth:`arrive`): Binance's rules forbid them.
    """

    def __init__(
        self,
        budget: int = 2400,
        window_s: float = 60.0,
        ban_after_429: int = 3,
        ban_s: float = 120.0,
    ) -> None:
        if budget < 1 or window_s <= 0:
            raise ValueError(f"budget and window must be positive; got {budget}, {window_s}")
        self.budget = budget
        self.window_s = window_s
        self.ban_after_429 = ban_after_429
        self.ban_s = ban_s
        self._state: dict[str, _ClientWeight] = {}

    def arrive(self, client: str, now: float) -> bool:
        """Note a request from ``client`` at ``now``, before :meth:`check` accounts its weight.

        True (and counted) when it came while a ``Retry-After`` given to ``client`` was still
        running; a client that waits the seconds it was told is never counted.
        """
        st = self._state.setdefault(client, _ClientWeight())
        if now < st.retry_until:
            st.ignored_retry_after += 1
            return True
        return False

    def told_to_wait(self, client: str, retry_after_s: float, now: float) -> None:
        """Note that ``client`` was answered at ``now`` with ``Retry-After: retry_after_s``."""
        st = self._state.setdefault(client, _ClientWeight())
        st.retry_until = max(st.retry_until, now + retry_after_s)

    def check(self, client: str, weight: int, now: float) -> Verdict:
        """Account a request of ``weight`` from ``client`` at time ``now``."""
        verdict = self._check(client, weight, now)
        if verdict.status != 200:
            self.told_to_wait(client, verdict.retry_after_s, now)
        return verdict

    def _check(self, client: str, weight: int, now: float) -> Verdict:
        window = math.floor(now / self.window_s)
        st = self._state.setdefault(client, _ClientWeight())
        if st.window != window:
            st.window, st.used, st.strikes = window, 0, 0
        if st.banned_until > now:
            return Verdict(418, st.used, math.ceil(st.banned_until - now))
        if st.used + weight > self.budget:
            st.strikes += 1
            if st.strikes > self.ban_after_429:
                st.banned_until = now + self.ban_s
                return Verdict(418, st.used, math.ceil(self.ban_s))
            return Verdict(429, st.used, max(1, math.ceil((window + 1) * self.window_s - now)))
        st.used += weight
        st.granted += weight
        st.peak = max(st.peak, st.used)
        return Verdict(200, st.used)

    def weight_granted(self) -> dict[str, int]:
        """Weight granted since the start (``total``) and the most in one window (``peak``).

        Over every client: in tests they all share loopback, as processes share an IP.
        """
        states = self._state.values()
        return {
            "total": sum(st.granted for st in states),
            "peak": max((st.peak for st in states), default=0),
        }

    def used(self, client: str, now: float) -> int:
        """Weight ``client`` has used in the current window."""
        st = self._state.get(client)
        if st is None or st.window != math.floor(now / self.window_s):
            return 0
        return st.used

    def ignored_retry_after(self, client: str) -> int:
        """Requests ``client`` sent while a ``Retry-After`` it was given was still running."""
        st = self._state.get(client)
        return 0 if st is None else st.ignored_retry_after


class _ClientWeight:
    __slots__ = (
        "banned_until",
        "granted",
        "ignored_retry_after",
        "peak",
        "retry_until",
        "strikes",
        "used",
        "window",
    )

    def __init__(self) -> None:
        self.window = -1
        self.used = 0
        self.granted = 0  # weight of every request answered, since the start
        self.peak = 0  # the most weight used in one window
        self.strikes = 0
        self.banned_until = 0.0
        self.retry_until = 0.0  # no request before this time (the last Retry-After given)
        self.ignored_retry_after = 0


def futures_depth_weight(limit: int) -> int:
    """Request weight of ``GET /fapi/v1/depth`` for ``limit`` levels (Binance's table)."""
    if limit <= 50:
        return 2
    if limit <= 100:
        return 5
    if limit <= 500:
        return 10
    return 20


def spot_depth_weight(limit: int) -> int:
    """Request weight of ``GET /api/v3/depth`` for ``limit`` levels (Binance's table)."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


FUTURES_AGG_TRADES_WEIGHT = 20
"""Request weight of ``GET /fapi/v1/aggTrades``, whatever the limit (Binance's docs)."""
SPOT_AGG_TRADES_WEIGHT = 4
"""Request weight of ``GET /api/v3/aggTrades`` (Binance's spot docs; it was 1, then 2)."""


class MessageRate:
    """Incoming messages of one connection over the last second; over ``limit`` is a violation."""

    __slots__ = ("_times", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Count one message at ``now``; False when the last second holds more than ``limit``."""
        times = self._times
        times.append(now)
        while times and times[0] <= now - 1.0:
            times.popleft()
        return len(times) <= self.limit
