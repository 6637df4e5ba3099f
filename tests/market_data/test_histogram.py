"""The latency histogram against sorted data, its merging and its JSON round trip."""

from __future__ import annotations

import math
import random

import pytest

from market_data import MarketDataError
from market_data.histogram import (
    BUCKETS,
    SUB_BUCKET_BITS,
    LatencyHistogram,
    LatencyRecorder,
    bucket_bounds,
    bucket_of,
)

QUANTILES = (0.0, 0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0)


def exact(sorted_values: list[int], q: float) -> int:
    """The ceil(q * n)-th smallest value: the histogram's definition, on the raw data."""
    return sorted_values[max(1, math.ceil(q * len(sorted_values) - 1e-9)) - 1]


def samples(rng: random.Random, n: int) -> list[int]:
    """Latency-like nanoseconds: mostly tens of µs, a tail to tens of ms, some tiny values."""
    out = [int(rng.lognormvariate(10.5, 1.2)) for _ in range(n)]
    out += [rng.randrange(0, 300) for _ in range(n // 50)]
    out += [rng.randrange(20_000_000, 90_000_000) for _ in range(n // 500)]
    rng.shuffle(out)
    return out


def test_buckets_tile_every_value_without_gaps_and_within_resolution() -> None:
    previous_high = -1
    for index in range(BUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1, index
        assert bucket_of(low) == bucket_of(high) == index
        assert high - low + 1 <= max(1, low >> SUB_BUCKET_BITS)  # width <= low / 128
        previous_high = high
    assert previous_high == 2**64 - 1
    assert bucket_of(-5) == 0 and bucket_of(2**70) == BUCKETS - 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_sorted_data_within_one_128th(seed: int) -> None:
    values = samples(random.Random(seed), 20_000)
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    ordered = sorted(values)
    for q in QUANTILES:
        want, got = exact(ordered, q), h.percentile(q)
        assert want <= got <= want + (want >> SUB_BUCKET_BITS), (q, want, got)
    assert (h.count, h.min, h.max, h.total) == (len(values), ordered[0], ordered[-1], sum(values))
    assert h.percentile(0.0) == ordered[0] and h.percentile(1.0) == ordered[-1]


def test_small_values_are_exact_and_negative_ones_count_as_zero() -> None:
    h = LatencyHistogram()
    for v in (-3, 0, 1, 2, 255):
        h.record(v)
    assert [h.percentile(q) for q in (0.2, 0.4, 0.6, 0.8, 1.0)] == [0, 0, 1, 2, 255]


def test_empty_histogram_and_bad_quantiles() -> None:
    h = LatencyHistogram()
    assert (h.percentile(0.99), h.mean()) == (0, 0.0)
    with pytest.raises(ValueError, match="quantile"):
        h.percentile(99)


def test_merging_equals_recording_everything_in_one() -> None:
    rng = random.Random(9)
    parts = [samples(rng, n) for n in (5_000, 1, 0, 3_000)]
    hists = []
    for part in parts:
        h = LatencyHistogram()
        for v in part:
            h.record(v)
        hists.append(h)
    merged = LatencyHistogram.merged(hists)
    whole = LatencyHistogram()
    for v in (v for part in parts for v in part):
        whole.record(v)
    assert merged.counts == whole.counts
    assert (merged.count, merged.min, merged.max, merged.total) == (
        whole.count,
        whole.min,
        whole.max,
        whole.total,
    )
    ordered = sorted(v for part in parts for v in part)
    for q in QUANTILES:
        assert merged.percentile(q) == whole.percentile(q)
        assert merged.percentile(q) >= exact(ordered, q)


def test_json_round_trip_and_refusals() -> None:
    h = LatencyHistogram()
    for v in samples(random.Random(4), 2_000):
        h.record(v)
    back = LatencyHistogram.from_dict(h.to_dict())
    assert back.counts == h.counts and (back.count, back.max) == (h.count, h.max)
    with pytest.raises(MarketDataError, match="sub_bucket_bits"):
        LatencyHistogram.from_dict({**h.to_dict(), "sub_bucket_bits": 5})
    with pytest.raises(MarketDataError, match="add up"):
        LatencyHistogram.from_dict({**h.to_dict(), "count": h.count + 1})


def test_recorder_files_latencies_by_interval_with_the_longest_gap() -> None:
    ms = 1_000_000
    rec = LatencyRecorder(origin_ns=10_000 * ms, interval_ns=1_000 * ms)
    # interval 0: deliveries every 10 ms; interval 1: a 300 ms pause, then a slow one.
    at = 10_000 * ms
    for _ in range(50):
        at += 10 * ms
        rec.record(200_000, at)
    at = 11_200 * ms
    rec.record(40 * ms, at)  # 700 ms after the previous one, filed in interval 1
    rec.record(100_000, at)  # same batch: no gap
    rec.record(100_000, at + 300 * ms)
    (k0, h0, gap0), (k1, h1, gap1) = rec.intervals()
    assert (k0, h0.count, gap0) == (0, 50, 10 * ms)
    assert (k1, h1.count, gap1, h1.max) == (1, 3, 700 * ms, 40 * ms)
    assert rec.gap_end(1) == 11_200 * ms  # when the pause ended, to match it with a GC
    back = LatencyRecorder.from_dict(rec.to_dict())
    assert [(k, h.counts, g, back.gap_end(k)) for k, h, g in back.intervals()] == [
        (k, h.counts, g, rec.gap_end(k)) for k, h, g in rec.intervals()
    ]
