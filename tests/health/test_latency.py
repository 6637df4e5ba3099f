"""Latency reports: where they go, and the Redis sink writing one when asked."""

from __future__ import annotations

import gc
import json
import time
import uuid
from pathlib import Path

import orjson
import pytest

from health.latency import ENV_VAR, LatencyReport, gc_watch, report_from_env, report_path
from market_data.config import PipelineConfig
from market_data.events import BookUpdate, Trade
from market_data.histogram import LatencyHistogram, LatencyRecorder
from market_data.options import OrderBookOptions, RedisSinkOptions, ReplayOptions
from sinks.redis import build_sink


def test_report_paths_never_collide_between_workers_and_processes() -> None:
    assert report_path("/r/lat-{pid}-{worker}.json", 7, 1) == Path("/r/lat-7-1.json")
    assert report_path("/r/lat.json", 7, 1) == Path("/r/lat.7.w1.json")
    assert report_path("/r/lat-{worker}.json", 7, 0) == Path("/r/lat-0.json")


def test_no_variable_no_report() -> None:
    assert report_from_env("redis:p", 0, {}) is None
    assert report_from_env("redis:p", 0, {ENV_VAR: ""}) is None


def test_gc_watch_times_collections() -> None:
    watch = gc_watch()
    assert gc_watch() is watch  # one per process
    before = watch.collections[2]
    gc.collect()
    assert watch.collections[2] == before + 1 and watch.max_ns[2] > 0


def test_redis_sink_writes_the_latency_of_delivered_books_on_close(
    redis: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "lat-{worker}.json"))
    prefix = f"test-{uuid.uuid4().hex[:10]}:"
    options = RedisSinkOptions(url=redis, channel_prefix=prefix)
    pipeline = PipelineConfig("p", ReplayOptions(path="x"), (OrderBookOptions(),), (options,))
    part = build_sink(options, pipeline).build("publish_redis", 3, 4)
    bids, asks = ((100, 1),), ((101, 1),)
    start = time.perf_counter_ns()
    received = [start - 2_000_000, start - 1_000_000, start]  # 2 ms, 1 ms, 0 ms before
    part.write_batch(
        [BookUpdate("BTCUSDT", bids, asks, i, 1, 0.0, ns) for i, ns in enumerate(received)]
    )
    part.write_batch([BookUpdate("BTCUSDT", bids, asks, 9, 1, 0.0, 0)])  # not stamped: not timed
    part.write_batch([Trade("BTCUSDT", 5, 100, 1, 1, False, 0, 0.0, start)])
    done = time.perf_counter_ns()
    part.close()
    report = orjson.loads((tmp_path / "lat-3.json").read_bytes())
    assert (report["worker"], report["sink"], report["trades"]) == (3, "redis:p", 1)
    recorder = LatencyRecorder.from_dict(report["latency"])
    hist = LatencyHistogram.merged(h for _, h, _ in recorder.intervals())
    assert hist.count == 3
    assert 2_000_000 <= hist.max <= done - received[0]
    assert hist.min <= done - received[2]
    assert report["gc"]["thresholds"] and "long" in report["gc"]


def test_a_report_is_written_even_when_event_times_are_years_off(tmp_path: Path) -> None:
    # E years in the past (a recorded or generated stream): the nanosecond total passes 2**64.
    report = LatencyReport(tmp_path / "lat.json", "redis:p", 0)
    now = time.perf_counter_ns()
    years_ns = 3 * 365 * 86_400 * 10**9
    for i in range(300):
        report.recorder.record(50_000, now + i)
        report.event_recorder.record(years_ns, now + i)
    report.write()
    body = json.loads((tmp_path / "lat.json").read_text())
    events = LatencyRecorder.from_dict(body["event_latency"])
    assert sum(h.count for _, h, _ in events.intervals()) == 300
    assert sum(h.total for _, h, _ in events.intervals()) == 300 * years_ns > 2**64
