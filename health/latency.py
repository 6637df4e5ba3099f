"""Fine-grained end-to-end latency reports, for benchmarks: ``MARKET_DATA_LATENCY_REPORT=path``.

With that variable set, each Redis sink partition (one per worker) records, for every book update
it delivers, the time from the frame's receipt (``recv_ns``, stamped when the worker read it off
the socket) to the return of the pipeline that carried it, in a
:class:`~market_data.histogram.LatencyRecorder` (per-second histograms with a resolution of
1/128, and the longest gap between deliveries); and, in a second recorder, the time from the
exchange's event time ``E`` (milliseconds, so up to 1 ms more) to the same return: with the
simulator on the same host's clock that includes any wait in the socket before the read. When
the partition closes (the flow ends: ``run_for_s``, SIGTERM, Ctrl-C) it writes one JSON file::

    {"format": 1, "pid": 123, "worker": 0, "sink": "redis:bench", "origin_unix": 1700000000,
     "latency": {<LatencyRecorder.to_dict()>}, "event_latency": {<LatencyRecorder.to_dict()>},
     "trades": 42, "gc": {<GcWatch.to_dict()>}}

``origin_unix`` is the whole wall-clock second at the recorder's ``origin_ns``: interval ``k`` of
every report is the second ``origin_unix + k``, so the reports of several processes line up.
``{pid}`` and ``{worker}`` in the path are replaced; a path without them gets ``.<pid>.w<worker>``
before its suffix, so workers and processes never overwrite each other.

The ``gc`` part comes from :class:`GcWatch`, installed once per process with the first report: the
number and total time of the collections of each generation, and every collection that took at
least :data:`GC_LOGGED_NS`, with when it started, so a reader can tell a GC pause from others.
Without the variable nothing is recorded and nothing is installed.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from market_data.histogram import LatencyRecorder

logger = logging.getLogger(__name__)

ENV_VAR = "MARKET_DATA_LATENCY_REPORT"
REPORT_FORMAT = 1
GC_LOGGED_NS = 1_000_000
"""Collections at least this long (1 ms) are listed one by one in the report."""
GC_LOGGED_MAX = 10_000


class GcWatch:
    """Times every garbage collection of the process through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.total_ns = [0, 0, 0]
        self.max_ns = [0, 0, 0]
        self.long: list[tuple[int, int, int]] = []  # (start perf_counter_ns, duration ns, gen)
        self._started = 0

    def callback(self, phase: str, info: Mapping[str, Any]) -> None:
        """The ``gc.callbacks`` hook."""
        now = time.perf_counter_ns()
        if phase == "start":
            self._started = now
            return
        gen, took = info["generation"], now - self._started
        self.collections[gen] += 1
        self.total_ns[gen] += took
        self.max_ns[gen] = max(self.max_ns[gen], took)
        if took >= GC_LOGGED_NS and len(self.long) < GC_LOGGED_MAX:
            self.long.append((self._started, took, gen))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "collections": list(self.collections),
            "total_ns": list(self.total_ns),
            "max_ns": list(self.max_ns),
            "thresholds": list(gc.get_threshold()),
            "frozen": gc.get_freeze_count(),
            "long": [{"start_ns": s, "ns": d, "generation": g} for s, d, g in self.long],
        }


_gc_watch: GcWatch | None = None
_gc_lock = threading.Lock()


def gc_watch() -> GcWatch:
    """The process's :class:`GcWatch`, installed on first use."""
    global _gc_watch
    with _gc_lock:
        if _gc_watch is None:
            _gc_watch = GcWatch()
            gc.callbacks.append(_gc_watch.callback)
        return _gc_watch


def report_path(template: str, pid: int, worker: int) -> Path:
    """Where worker ``worker`` of process ``pid`` writes its report (see the module doc)."""
    if "{pid}" in template or "{worker}" in template:
        return Path(template.replace("{pid}", str(pid)).replace("{worker}", str(worker)))
    path = Path(template)
    return path.with_name(f"{path.stem}.{pid}.w{worker}{path.suffix}")


class LatencyReport:
    """One sink partition's recorder and the file it goes to when the partition closes."""

    def __init__(self, path: Path, sink: str, worker: int) -> None:
        self.path = path
        self.sink = sink
        self.worker = worker
        # Intervals start on whole wall-clock seconds, so the reports of every worker and
        # process line up: interval k covers the second origin_unix + k.
        now_unix, now_ns = time.time(), time.perf_counter_ns()
        self.origin_unix = math.floor(now_unix)
        self.recorder = LatencyRecorder(now_ns - round((now_unix - self.origin_unix) * 1e9))
        self.event_recorder = LatencyRecorder(self.recorder.origin_ns)
        self.trades = 0  # trades delivered (their latency is not recorded)
        self.gc = gc_watch()

    def write(self) -> None:
        """Write the report; a failure is logged, never raised (the flow is ending anyway)."""
        body = {
            "format": REPORT_FORMAT,
            "pid": os.getpid(),
            "worker": self.worker,
            "sink": self.sink,
            "origin_unix": self.origin_unix,
            "latency": self.recorder.to_dict(),
            "event_latency": self.event_recorder.to_dict(),
            "trades": self.trades,
            "gc": self.gc.to_dict(),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The standard json module: a histogram's total of nanoseconds can pass 2**64 (an
            # exchange clock years off), which orjson refuses. Written once, at the end.
            self.path.write_text(json.dumps(body, separators=(",", ":")))
        except (OSError, TypeError, ValueError) as exc:
            logger.error("cannot write the latency report %s: %s", self.path, exc)
            return
        logger.info("latency report written to %s", self.path)


def report_from_env(
    sink: str, worker: int, environ: Mapping[str, str] | None = None
) -> LatencyReport | None:
    """A report for this sink partition when ``$MARKET_DATA_LATENCY_REPORT`` asks for one."""
    template = (os.environ if environ is None else environ).get(ENV_VAR)
    if not template:
        return None
    return LatencyReport(report_path(template, os.getpid(), worker), sink, worker)
