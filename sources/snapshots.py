"""Fetches REST depth snapshots in a thread, paced by a shared request-weight budget.

Requests are deduplicated per symbol, paced so that many symbols starting at once stay under the
exchange's per-IP weight limit (one budget per REST host per process), and retried with backoff.
A 429 or 418 answer blocks every request for its ``Retry-After``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import NamedTuple

from health import metrics
from market_data.backoff import ExponentialBackoff
from market_data.events import DepthSnapshot, FrameError, Market
from sources.parse import parse_snapshot
from sources.policy import WeightBudget, jittered_delay, snapshot_url, snapshot_weight
from sources.recording import RecordingWriter

logger = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 60.0
REQUEST_TIMEOUT_S = 10.0
DEFER_POLL_S = 0.05

_budgets: dict[tuple[str, int, float, int | None], WeightBudget] = {}
_budgets_lock = threading.Lock()


def shared_budget(
    rest_url: str, budget: int, window_s: float, ip_limit: int | None = None
) -> tuple[WeightBudget, threading.Lock]:
    """One budget per REST endpoint in this process, shared by every partition (and its lock)."""
    with _budgets_lock:
        key = (rest_url, budget, window_s, ip_limit)
        if key not in _budgets:
            _budgets[key] = WeightBudget(budget, window_s, ip_limit)
        return _budgets[key], _budgets_lock


class Answer(NamedTuple):
    """A REST answer; ``retry_after`` is set for a 418 or 429 (the budget is then blocked)."""

    status: int
    body: bytes
    retry_after: float | None = None


def weighted_get(url: str, budget: WeightBudget, lock: threading.Lock, weight: int) -> Answer:
    """GET ``url``, a request of ``weight`` on ``budget``, keeping the budget honest.

    A 418 or 429 blocks every request of the budget for its ``Retry-After``; the server's
    ``X-MBX-USED-WEIGHT-1M`` is compared with the exchange's IP limit. Raises :class:`OSError`
    (``URLError``) when no answer came.
    """
    req = urllib.request.Request(url, headers={"User-Agent": "market-data"})
    metrics.REST_WEIGHT_SPENT.labels(_endpoint(url)).inc(weight)
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            body, status = resp.read(), resp.status
            used = resp.headers.get("X-MBX-USED-WEIGHT-1M")
    except urllib.error.HTTPError as exc:
        body = exc.read() or b""
        _observe_used(exc.headers.get("X-MBX-USED-WEIGHT-1M"), budget, lock, weight)
        if exc.code not in (418, 429):
            return Answer(exc.code, body)
        metrics.REST_RATE_LIMITED.labels(str(exc.code)).inc()
        retry_after = _retry_after(exc.headers.get("Retry-After"))
        with lock:
            budget.block(retry_after, time.monotonic())
        return Answer(exc.code, body, retry_after)
    _observe_used(used, budget, lock, weight)
    return Answer(status, body)


def _observe_used(
    used: str | None, budget: WeightBudget, lock: threading.Lock, weight: int
) -> None:
    """Tell the budget (and the metric) what the exchange says the IP used this minute."""
    if used is not None and used.isdigit():
        metrics.REST_WEIGHT_USED.set(int(used))
        with lock:
            budget.observe_used(int(used), time.monotonic(), weight, time.time())


def _endpoint(url: str) -> str:
    """``depth`` or ``aggTrades``: the last part of a REST URL's path."""
    return urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] or "other"


SnapshotCallback = Callable[[DepthSnapshot | FrameError], None]


class RestWorker:
    """A daemon thread that makes REST requests one at a time, and how it starts and stops.

    Subclasses keep their queue of requests under ``_cond``, wait on it in ``_run`` and return
    from ``_run`` once ``_stop`` is set (``stop`` sets it and wakes them).
    """

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (a request in flight finishes or times out)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError


class SnapshotFetcher(RestWorker):
    """Fetches snapshots for the symbols :meth:`request`-ed, one at a time, in a thread."""

    def __init__(
        self,
        rest_url: str,
        market: Market,
        limit: int,
        budget: WeightBudget,
        budget_lock: threading.Lock,
        backoff: ExponentialBackoff,
        deliver: SnapshotCallback,
        recorder: RecordingWriter | None = None,
        rng: random.Random | None = None,
        defer: Callable[[], bool] | None = None,
    ) -> None:
        self.rest_url = rest_url
        self.market = market
        self.limit = limit
        self.weight = snapshot_weight(market, limit)
        self._budget = budget
        self._budget_lock = budget_lock
        self._backoff = backoff
        self._deliver = deliver
        self._recorder = recorder
        self._rng = rng or random.Random()
        self._pending: dict[str, float] = {}  # symbol -> not before (monotonic)
        self._failures: dict[str, int] = {}
        # True while requests must wait: trade backfills are due. A backfill is one request
        # that bounds how long live trades are held; a book that waits has a partial depth
        # frame or the next snapshot to come.
        self._defer = defer
        self.in_flight: str | None = None
        super().__init__("snapshots")

    def request(self, symbol: str, reason: str, delay_s: float = 0.0) -> None:
        """Ask for a snapshot of ``symbol`` (once, however often it is asked before it is sent)."""
        metrics.RESYNCS.labels(symbol, _reason_label(reason)).inc()
        with self._cond:
            not_before = time.monotonic() + delay_s
            if symbol in self._pending:
                self._pending[symbol] = min(self._pending[symbol], not_before)
            else:
                self._pending[symbol] = not_before
            self._cond.notify_all()

    def pending(self) -> int:
        """Symbols waiting for a snapshot request."""
        with self._cond:
            return len(self._pending)

    def due(self) -> int:
        """Symbols whose snapshot request is due now (it waits only for the weight budget)."""
        now = time.monotonic()
        with self._cond:
            return sum(1 for not_before in self._pending.values() if not_before <= now)

    def _next(self) -> str | None:
        """Block until a symbol is due and the budget allows its request; None when stopping."""
        with self._cond:
            while not self._stop:
                if not self._pending:
                    self._cond.wait()
                    continue
                symbol, not_before = min(self._pending.items(), key=lambda kv: kv[1])
                now = time.monotonic()
                wait = not_before - now
                if wait <= 0 and self._defer is not None and self._defer():
                    wait = DEFER_POLL_S
                elif wait <= 0:
                    with self._budget_lock:
                        wait = self._budget.delay(self.weight, now)
                        if wait <= 0:
                            self._budget.spend(self.weight, now)
                            del self._pending[symbol]
                            return symbol
                self._cond.wait(min(wait, 1.0))
        return None

    def _run(self) -> None:
        while True:
            symbol = self._next()
            if symbol is None:
                return
            self.in_flight = symbol
            try:
                self._fetch(symbol)
            except Exception:  # a bug here must not end the thread; the symbol is retried
                logger.exception("snapshot fetch for %s failed unexpectedly", symbol)
                self._retry(symbol, "internal error")
            finally:
                self.in_flight = None

    def _fetch(self, symbol: str) -> None:
        url = snapshot_url(self.rest_url, self.market, symbol, self.limit)
        started = time.monotonic()
        try:
            status, body, retry_after = weighted_get(
                url, self._budget, self._budget_lock, self.weight
            )
        except (OSError, urllib.error.URLError) as exc:
            self._fail(symbol, f"{type(exc).__name__}: {exc}")
            return
        self._record(url, status, body)
        if retry_after is not None:
            metrics.SNAPSHOT_FETCHES.labels(symbol, "rate_limited").inc()
            logger.warning(
                "snapshot %s: HTTP %d (%s); every request waits %.1fs (Retry-After)",
                symbol, status, "rate limited" if status == 429 else "IP banned", retry_after,
            )  # fmt: skip
            self.request(symbol, f"HTTP {status}")
            return
        if status >= 400:
            self._fail(symbol, f"HTTP {status}: {body[:200]!r}")
            return
        event = parse_snapshot(symbol, body, time.time(), time.perf_counter_ns(), self.limit)
        if isinstance(event, FrameError):
            self._fail(symbol, event.reason)
            return
        self._failures.pop(symbol, None)
        metrics.SNAPSHOT_FETCHES.labels(symbol, "ok").inc()
        logger.debug(
            "snapshot %s at %d in %.0f ms",
            symbol,
            event.last_update_id,
            (time.monotonic() - started) * 1e3,
        )
        self._deliver(event)

    def _fail(self, symbol: str, reason: str) -> None:
        metrics.SNAPSHOT_FETCHES.labels(symbol, "error").inc()
        self._deliver(FrameError(f"snapshot: {reason}", "", symbol, time.time()))
        self._retry(symbol, reason)

    def _retry(self, symbol: str, reason: str) -> None:
        failures = self._failures[symbol] = self._failures.get(symbol, 0) + 1
        delay = jittered_delay(self._backoff, failures, self._rng)
        logger.warning(
            "snapshot %s failed (%s); retry %d in %.2fs", symbol, reason, failures, delay
        )
        self.request(symbol, "retry", delay)

    def _record(self, url: str, status: int, body: bytes) -> None:
        if self._recorder is not None:
            self._recorder.rest(time.time(), url, status, body)


def _retry_after(value: str | None) -> float:
    try:
        return max(float(value), 0.0) if value else DEFAULT_RETRY_AFTER_S
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


def _reason_label(reason: str) -> str:
    """A bounded label for the resyncs metric."""
    labels = (
        "no partial depth frame",
        "not published",
        "connected",
        "sequence break",
        "older than the stream",
        "retry",
        "HTTP",
    )
    for label in labels:
        if label in reason:
            return label.replace(" ", "_").lower()
    return "other"
