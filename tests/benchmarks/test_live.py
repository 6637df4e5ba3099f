"""The live benchmark cases: how reports become figures, and one tiny real run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import live
from benchmarks.run import main
from market_data.histogram import LatencyRecorder
from sources.simulator.wsframes import text_frames
from tests.redis_server import redis_url

MS = 1_000_000
T0 = 1_700_000_000  # a whole second: interval k of every report is the second T0 + k


def report(pid: int, deliveries: list[tuple[int, int]], gcs: list[tuple[int, int]]) -> Any:
    """A latency report: ``deliveries`` are (at ms, latency ms), ``gcs`` (start ms, ms).

    The latency from the event time is the read-to-Redis latency plus a 2 ms wait in the socket.
    """
    origin_ns = 5_000 * MS
    rec, event = LatencyRecorder(origin_ns), LatencyRecorder(origin_ns)
    for at_ms, latency_ms in deliveries:
        rec.record(latency_ms * MS, origin_ns + at_ms * MS)
        event.record((latency_ms + 2) * MS, origin_ns + at_ms * MS)
    long = [{"start_ns": origin_ns + s * MS, "ns": d * MS, "generation": 2} for s, d in gcs]
    return {
        "pid": pid,
        "origin_unix": T0,
        "latency": rec.to_dict(),
        "event_latency": event.to_dict(),
        "gc": {"long": long},
    }


def every(start_ms: int, stop_ms: int, step_ms: int, latency_ms: int = 1) -> list[tuple[int, int]]:
    return [(t, latency_ms) for t in range(start_ms, stop_ms, step_ms)]


def test_figures_leave_out_the_warm_up_and_the_last_second_and_find_gc_pauses() -> None:
    # Process 1 delivers every 10 ms for 6 s; in second 3 it pauses 100 ms during a 90 ms GC.
    # Process 2 starts a second later, pauses 70 ms in second 4 with no GC, stops at 5.5 s.
    one = [*every(0, 3_410, 10), (3_500, 95), *every(3_510, 6_000, 10)]
    two = [*every(1_000, 4_300, 10), *every(4_360, 5_500, 10)]
    reports = [report(1, one, [(3_405, 90), (1_500, 50)]), report(2, two, [])]
    traffic = live.SimTraffic(
        [{"t": T0 + s, "depth_frames_queued": 150 * s, "backlog": s} for s in range(7)]
    )
    f = live.summarize("c", reports, warmup_s=2, traffic=traffic)
    # Window: from 2 s after the first delivered second to the start of process 2's last one.
    assert f.seconds == 3  # seconds 2, 3, 4
    assert f.updates == 300 - 9 + 300 - 6  # process 1 lost 9 deliveries to its pause
    assert f.updates_per_s == pytest.approx(f.updates / 3)
    assert f.max_us == pytest.approx(95_000, rel=1 / 128)
    assert f.p50_us == pytest.approx(1_000, rel=1 / 128)
    assert f.event_p50_us == pytest.approx(3_000, rel=1 / 128)
    assert f.event_p99_us == pytest.approx(3_000, rel=1 / 128)  # the 95+2 ms one is in the 1%
    assert f.event_max_us == pytest.approx(97_000, rel=1 / 128)
    assert f.longest_gap_ms == pytest.approx(100)
    assert (f.pauses, f.pauses_with_gc) == (2, 1)  # the 50 ms GC at 1.5 s is in the warm-up
    assert f.gc_max_ms == 90 and f.gc_over_1ms == [0, 0, 1]
    assert f.sim_sent_per_s == pytest.approx(150) and f.sim_max_backlog == 5
    assert [s["t"] for s in f.seconds_by_interval] == [2, 3, 4]


def test_nothing_after_the_warm_up_is_an_error_not_a_figure() -> None:
    with pytest.raises(RuntimeError, match="warm-up"):
        live.summarize("c", [report(1, every(0, 2_500, 10), [])], 5, live.SimTraffic())


def test_unknown_cases_are_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--cases", "core,e2e,warp"])
    assert "warp" in capsys.readouterr().err


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with redis_url() as found:
        yield found


def test_a_tiny_live_run_measures_the_real_flow_on_the_simulator(url: str) -> None:
    started = time.monotonic()
    f = live.run_case(
        "smoke", ["BTCUSDT"], 300, warmup_s=1, measure_s=2, redis_url=url, gc="{freeze: true}"
    )
    assert f.workers == 1 and f.seconds >= 1 and f.updates > 0
    assert 0 < f.p50_us <= f.p99_us <= f.p999_us <= f.max_us
    assert f.sim_sent_per_s > 0
    assert sum(s["count"] for s in f.seconds_by_interval) == f.updates
    assert time.monotonic() - started < 60


def test_the_redis_round_trip_baseline_measures_one_reply_per_publish(url: str) -> None:
    # Each PUBLISH must get exactly one reply (_read_replies raises on an extra one, the socket
    # timeout on a missing one), and a refused one is an error, not a figure.
    p50, p99 = live.redis_round_trip(url, count=50, spacing_s=0)
    assert 0 < p50 <= p99 < 5e6


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_blaster_frames_say_their_length(size: int) -> None:
    frame = text_frames(("x" * size,))  # the blaster frames each update with the simulator's
    assert frame[0] == 0x81  # final text frame, unmasked
    head = {125: 2, 0: 2, 126: 4, 65_535: 4}.get(size, 10)
    assert len(frame) == head + size and frame[head:] == b"x" * size


def test_a_tiny_run_on_premade_frames_syncs_and_publishes(url: str) -> None:
    # Enough frames to outlast the run (6 s) at ~25,000 a second per symbol, or it fails.
    f = live.throughput_case(1, symbols=2, warmup_s=1, measure_s=2, redis_url=url, premade=300_000)
    assert "pre-made frames" in f.case
    assert f.workers == 1 and f.updates > 0 and f.sim_sent_per_s > 0
    assert f.event_p99_us is None  # the frames' E is the generator's, not a send time
