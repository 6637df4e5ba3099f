"""Turn per-process health reports into the ``/health`` and ``/ready`` answers. Pure.

A report is :meth:`health.state.HealthState.snapshot`'s dict: one from this process when it runs
alone, one per process (read from the shared directory) in a cluster. :func:`merge` combines
them, :func:`health` and :func:`ready` judge the result against what the config expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from market_data import __version__
from market_data.config import AppConfig
from market_data.events import BookState

SERVICE = "market-data"
REPORTING_SINKS = ("redis", "shm")
"""Sink types that report reachability, under the label ``<type>:<pipeline>``."""


@dataclass(frozen=True)
class PipelineExpectation:
    """What one pipeline must have for the service to be ready."""

    name: str
    symbols: tuple[str, ...] | None  # None: whatever symbols the source turns out to carry
    sinks: tuple[str, ...] = ()  # sink labels that must be reachable


@dataclass(frozen=True)
class Expectations:
    """What the config expects, and the thresholds of the judgements."""

    pipelines: tuple[PipelineExpectation, ...]
    stall_after_s: float = 30.0
    process_count: int = 1
    stale_after_s: float = 3.0
    max_book_age_s: float = 0.0  # see book_problem; 0: off
    max_book_lag_s: float = 0.0

    @classmethod
    def from_config(
        cls, config: AppConfig, process_count: int = 1, stale_after_s: float = 3.0
    ) -> Expectations:
        """The expectations of ``config``: each pipeline's ``source.symbols`` and sinks."""
        pipelines = []
        for p in config.pipelines:
            symbols = getattr(p.source, "symbols", None)
            labels = dict.fromkeys(
                f"{s.type}:{p.name}" for s in p.sinks if s.type in REPORTING_SINKS
            )
            pipelines.append(
                PipelineExpectation(p.name, tuple(symbols) if symbols else None, tuple(labels))
            )
        health = config.service.health
        return cls(
            tuple(pipelines),
            health.stall_after_s,
            process_count,
            stale_after_s,
            health.max_book_age_s,
            health.max_book_lag_s,
        )


@dataclass
class Merged:
    """Every live process's reports combined."""

    now: float
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)  # the fresh ones
    absent: dict[int, str] = field(default_factory=dict)  # process -> why it does not count
    books: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    links: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def symbols_seen(self, pipeline: str) -> list[str]:
        """Symbols of ``pipeline`` that some book operator has reported."""
        return sorted(s for p, s in self.books if p == pipeline)


def merge(
    reports: Mapping[int, dict[str, Any] | None],
    now: float,
    stale_after_s: float = 3.0,
) -> Merged:
    """Combine the reports of the processes; a missing or stale one marks its process absent.

    A symbol's book and its connections may be in different processes (bytewax routes a
    symbol's events to the worker that owns its key), so each part is merged on its own: the
    book's most recent status wins, connections and sink partitions add up.
    """
    out = Merged(now)
    for i, report in sorted(reports.items()):
        if report is None:
            out.absent[i] = "no report yet"
            continue
        age = now - float(report.get("written_at") or 0.0)
        if age > stale_after_s:
            out.absent[i] = f"no report for {age:.1f} s (stopped or frozen)"
            continue
        out.reports[i] = report
        for pipeline, symbols in (report.get("books") or {}).items():
            for symbol, book in symbols.items():
                key = (pipeline, symbol)
                known = out.books.get(key)
                if known is None or book["since"] > known["since"]:
                    out.books[key] = book
        for pipeline, symbols in (report.get("links") or {}).items():
            for symbol, link in symbols.items():
                agg = out.links.setdefault((pipeline, symbol), {"up": 0, "down": 0, "reason": ""})
                agg["up"] += link["up"]
                agg["down"] += link["down"]
                agg["reason"] = link["reason"] or agg["reason"]
        for label, sink in (report.get("sinks") or {}).items():
            agg = out.sinks.setdefault(label, {"up": 0, "down": 0, "unknown": 0, "reason": ""})
            for k in ("up", "down", "unknown"):
                agg[k] += sink[k]
            agg["reason"] = sink["reason"] or agg["reason"]
    return out


def sink_problem(label: str, merged: Merged) -> str | None:
    """Why sink ``label`` is not ready, or None if it is."""
    agg = merged.sinks.get(label)
    if agg is None:
        return "not started"
    if agg["down"]:
        return str(agg["reason"] or "unreachable")
    if not agg["up"]:
        return "no write yet"
    return None


def book_problem(
    book: dict[str, Any] | None,
    now: float | None = None,
    max_age_s: float = 0.0,
    max_lag_s: float = 0.0,
) -> str | None:
    """Why a book is not ready, or None if it is synced and current.

    Current: its last update was published at most ``max_age_s`` before ``now``, and at most
    ``max_lag_s`` after the exchange's event time of that update (0 turns a check off).
    """
    if book is None or book["state"] == BookState.AWAITING_SNAPSHOT.value:
        return "awaiting snapshot"
    if book["state"] == BookState.RESYNCING.value:
        return f"resyncing: {book['reason']}" if book["reason"] else "resyncing"
    at = book.get("last_update_at")
    if at is None or now is None:
        return None
    if max_age_s and now - at > max_age_s:
        return f"stale: no book published for {now - at:.1f} s (max_book_age_s {max_age_s:g})"
    event_ms = book.get("last_event_ms")
    if max_lag_s and event_ms is not None and at - event_ms / 1000 > max_lag_s:
        return (
            f"lagging: the last book was published {at - event_ms / 1000:.1f} s after the "
            f"exchange's event (max_book_lag_s {max_lag_s:g}): the service is behind"
        )
    return None


def link_problem(link: dict[str, Any] | None) -> str | None:
    """Why a symbol's connections are not ready (all must be up), or None."""
    if link is None or not link["down"]:
        return None  # no connections reported: a source without any (replay)
    return f"disconnected: {link['reason']}" if link["reason"] else "disconnected"


def _age(now: float, t: float | None) -> float | None:
    return None if t is None else round(max(0.0, now - t), 3)


def _lag(book: dict[str, Any] | None) -> float | None:
    """How far behind the exchange's event time the book's last update was published."""
    if book is None or book.get("last_update_at") is None or book.get("last_event_ms") is None:
        return None
    return round(max(0.0, book["last_update_at"] - book["last_event_ms"] / 1000), 3)


def ready(expect: Expectations, merged: Merged) -> tuple[bool, dict[str, Any]]:
    """``/ready``: every configured symbol synced and connected, every sink reachable."""
    now = merged.now
    not_ready: list[dict[str, Any]] = []
    pipelines: dict[str, Any] = {}
    for i, why in sorted(merged.absent.items()):
        not_ready.append({"process": i, "reason": why})
    for p in expect.pipelines:
        sinks: dict[str, str] = {}
        sink_ok = True
        for label in p.sinks:
            problem = sink_problem(label, merged)
            sinks[label] = "up" if problem is None else problem
            if problem is not None:
                sink_ok = False
                not_ready.append({"pipeline": p.name, "sink": label, "reason": problem})
        symbols = p.symbols if p.symbols is not None else merged.symbols_seen(p.name)
        if not symbols:
            not_ready.append({"pipeline": p.name, "reason": "no symbol seen yet"})
        details: dict[str, Any] = {}
        synced = 0
        for symbol in symbols:
            book = merged.books.get((p.name, symbol))
            link = merged.links.get((p.name, symbol))
            problems = [
                x
                for x in (
                    book_problem(book, now, expect.max_book_age_s, expect.max_book_lag_s),
                    link_problem(link),
                )
                if x
            ]
            details[symbol] = {
                "ready": not problems and sink_ok,
                "book": book["state"] if book else BookState.AWAITING_SNAPSHOT.value,
                "connected": None if link is None else not link["down"],
                "last_update_id": book["last_update_id"] if book else None,
                "last_update_age_s": _age(now, book["last_update_at"]) if book else None,
                "lag_s": _lag(book),
            }
            if problems:
                not_ready.append(
                    {"pipeline": p.name, "symbol": symbol, "reason": "; ".join(problems)}
                )
            if book is not None and book["state"] == BookState.SYNCED.value:
                synced += 1
        pipelines[p.name] = {
            "books": f"{synced} of {len(symbols)} synced",
            "symbols": details,
            "sinks": sinks,
        }
    ok = not not_ready
    return ok, {
        "status": "ready" if ok else "not_ready",
        "not_ready": not_ready,
        "pipelines": pipelines,
    }


def stall_problem(report: dict[str, Any], now: float, stall_after_s: float) -> str | None:
    """Why a process counts as stalled, or None.

    Stalled: a connection is up, a frame was received after the last time a worker processed
    any, and that was more than ``stall_after_s`` ago. A quiet exchange (nothing received) is
    not a stall; the source's silence timeout deals with it.
    """
    if not (report.get("connections") or {}).get("up"):
        return None
    received = report.get("received_at")
    processed = report.get("processed_at")
    since = processed if processed is not None else report.get("started_at") or now
    if received is None or (processed is not None and received <= processed):
        return None
    if now - since <= stall_after_s:
        return None
    return (
        f"stalled: connected and receiving, but no frame processed for {now - since:.1f} s "
        f"(limit {stall_after_s:g} s)"
    )


def health(expect: Expectations, merged: Merged, started_at: float) -> tuple[bool, dict[str, Any]]:
    """``/health``: unhealthy when a process has stalled or stopped reporting."""
    now = merged.now
    problems: list[str] = []
    for i, report in sorted(merged.reports.items()):
        stall = stall_problem(report, now, expect.stall_after_s)
        if stall:
            problems.append(f"process {i}: {stall}")
    for i, why in sorted(merged.absent.items()):
        # At start-up, give the other processes as long as a stall to report for the first time.
        if why != "no report yet" or now - started_at > expect.stall_after_s:
            problems.append(f"process {i}: {why}")
    reports = merged.reports.values()
    processed = [r["processed_at"] for r in reports if r.get("processed_at") is not None]
    received = [r["received_at"] for r in reports if r.get("received_at") is not None]
    pipelines: dict[str, Any] = {}
    for p in expect.pipelines:
        symbols = p.symbols if p.symbols is not None else merged.symbols_seen(p.name)
        books = [merged.books.get((p.name, s)) for s in symbols]
        links = [merged.links.get((p.name, s)) for s in symbols]
        pipelines[p.name] = {
            "symbols": len(symbols),
            "synced": sum(1 for b in books if b and b["state"] == BookState.SYNCED.value),
            # None for a source without connections (replay)
            "connected": (
                sum(1 for lk in links if lk is not None and not lk["down"])
                if any(lk is not None for lk in links)
                else None
            ),
            "sinks": {label: sink_problem(label, merged) or "up" for label in p.sinks},
        }
    ok = not problems
    return ok, {
        "status": "healthy" if ok else "unhealthy",
        "service": SERVICE,
        "version": __version__,
        "uptime_s": round(now - started_at, 3),
        "processes": {"expected": expect.process_count, "reporting": len(merged.reports)},
        "workers": sum(int(r.get("workers") or 0) for r in reports),
        "connections": {
            "up": sum((r.get("connections") or {}).get("up", 0) for r in reports),
            "down": sum((r.get("connections") or {}).get("down", 0) for r in reports),
        },
        "last_frame_processed_age_s": _age(now, max(processed)) if processed else None,
        "last_frame_received_age_s": _age(now, max(received)) if received else None,
        "pipelines": pipelines,
        "problems": problems,
    }
