"""The simulator's own send rate: the reader's frame count, and one tiny real run."""

from __future__ import annotations

from benchmarks.sim_rate import MARKER, MarkerCounter, measure


def test_markers_split_between_reads_are_counted_once() -> None:
    stream = b'{"data":{"e":"depthUpdate","u":1}}' * 5 + b'{"e":"bookTicker"}'
    for cut in range(len(stream) + 1):
        counter = MarkerCounter(MARKER)
        counter.feed(stream[:cut])
        counter.feed(stream[cut:])
        assert counter.count == 5, cut
    one_byte_at_a_time = MarkerCounter(MARKER)
    for i in range(len(stream)):
        one_byte_at_a_time.feed(stream[i : i + 1])
    assert one_byte_at_a_time.count == 5


def test_a_tiny_run_reads_the_simulator_on_each_connection() -> None:
    r = measure(2, 2, warmup_s=0.5, measure_s=2.5, rate=500)  # 2+ traffic lines
    assert r.connections == 2 and r.seconds >= 2.5
    assert r.frames_per_s > 0 and r.sim_sent_per_s > 0
    assert r.sim_cpu_pct > 0
