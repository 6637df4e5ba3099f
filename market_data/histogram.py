"""Latency histograms in the HdrHistogram style: fine resolution, cheap to record, mergeable.

Pure: no clock and no I/O; callers pass nanoseconds in. A :class:`LatencyHistogram` counts
non-negative integers in log-linear buckets: values below 256 exactly, above that 128 linear
buckets per power of two, so any percentile it reports is within 1/128 (0.8 %) of a value that
was recorded, over the whole range of a 64-bit integer, in 7,424 counters. Recording is one
``bit_length``, a shift and a list increment.

>>> h = LatencyHistogram()
>>> for ns in (1_000, 2_000, 3_000, 250_000):
...     h.record(ns)
>>> h.percentile(0.5), h.percentile(1.0)  # the 2,000 reads as its bucket's top, 2,007
(2007, 250000)

Like HdrHistogram, a percentile reads as the largest value of its bucket: at most 1/128 above
what was recorded, never below it.

A :class:`LatencyRecorder` keeps one histogram per interval (a second by default) of the moment
each latency was taken, and the longest gap between two records in each, so that whoever reads
it can leave out a warm-up and see when a pause happened. Both survive a round trip through
``to_dict``/``from_dict`` (plain JSON types), which is how processes hand them over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from market_data import MarketDataError

SUB_BUCKET_BITS = 7
"""128 linear buckets per power of two: a relative resolution of 1/128."""
_EXACT = 1 << (SUB_BUCKET_BITS + 1)  # values below this have a bucket each
_SHIFT_BASE = SUB_BUCKET_BITS + 1
BUCKETS = ((64 - _SHIFT_BASE) << SUB_BUCKET_BITS) + _EXACT
"""Counters needed for every value below 2**64."""
MAX_VALUE = (1 << 64) - 1


def bucket_of(value: int) -> int:
    """The index of the bucket counting ``value`` (negative values count as 0)."""
    if value < _EXACT:
        return value if value > 0 else 0
    shift = min(value, MAX_VALUE).bit_length() - _SHIFT_BASE
    return (shift << SUB_BUCKET_BITS) + (min(value, MAX_VALUE) >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest value counted by bucket ``index``."""
    if not 0 <= index < BUCKETS:
        raise ValueError(f"expected a bucket index in [0, {BUCKETS}); got {index}")
    if index < _EXACT:
        return index, index
    shift = (index >> SUB_BUCKET_BITS) - 1
    mantissa = index - (shift << SUB_BUCKET_BITS)
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class LatencyHistogram:
    """Counts of integer values (nanoseconds) with a resolution of 1/128 of the value."""

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value: int) -> None:
        """Count one value; negatives count as 0 (a clock that stepped back)."""
        if value < 0:
            value = 0
        if value < _EXACT:
            self.counts[value] += 1
        else:
            v = value if value <= MAX_VALUE else MAX_VALUE
            shift = v.bit_length() - _SHIFT_BASE
            self.counts[(shift << SUB_BUCKET_BITS) + (v >> shift)] += 1
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def merge(self, other: LatencyHistogram) -> None:
        """Add every value counted by ``other`` to this histogram."""
        if other.count == 0:
            return
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    @classmethod
    def merged(cls, histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
        """A new histogram counting everything the given ones count."""
        out = cls()
        for h in histograms:
            out.merge(h)
        return out

    def percentile(self, q: float) -> int:
        """The value at quantile ``q`` (0..1): the ``ceil(q * count)``-th smallest, to 1/128.

        It is the largest value of the bucket that holds that rank, but never above the largest
        value recorded nor below the smallest. 0 for an empty histogram.
        """
        if not 0 <= q <= 1:
            raise ValueError(f"expected a quantile between 0 and 1; got {q}")
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(q * self.count - 1e-9))  # 0.7 * 10 is 7.000000000000001
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return max(self.min, min(bucket_bounds(i)[1], self.max))
        return self.max  # not reached: the counts add up to count

    def mean(self) -> float:
        """The mean of the values recorded (exact), 0.0 when empty."""
        return self.total / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: the non-zero buckets as ``[index, count]`` pairs."""
        return {
            "sub_bucket_bits": SUB_BUCKET_BITS,
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "buckets": [[i, n] for i, n in enumerate(self.counts) if n],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        """The histogram :meth:`to_dict` described; refuses another resolution or a bad index."""
        if data.get("sub_bucket_bits") != SUB_BUCKET_BITS:
            raise MarketDataError(
                f"expected a histogram with sub_bucket_bits={SUB_BUCKET_BITS}; "
                f"got {data.get('sub_bucket_bits')!r}"
            )
        h = cls()
        for i, n in data["buckets"]:
            if not 0 <= i < BUCKETS:
                raise MarketDataError(f"expected bucket indexes below {BUCKETS}; got {i}")
            h.counts[i] += n
        h.count, h.total, h.min, h.max = data["count"], data["total"], data["min"], data["max"]
        if sum(h.counts) != h.count:
            raise MarketDataError(f"bucket counts add up to {sum(h.counts)}, not {h.count}")
        return h


class LatencyRecorder:
    """Latencies by interval of the moment they were taken, and the longest gap in each.

    ``record(latency_ns, at_ns)`` files the latency under interval
    ``(at_ns - origin_ns) // interval_ns``; the gap of a record is ``at_ns`` minus the previous
    record's ``at_ns``, filed under the later record's interval with the ``at_ns`` it ended at.
    Records of one batch share an ``at_ns``, so a gap is time in which nothing was delivered.
    """

    __slots__ = ("_gaps", "_intervals", "_last_at", "interval_ns", "origin_ns")

    def __init__(self, origin_ns: int, interval_ns: int = 1_000_000_000) -> None:
        if interval_ns <= 0:
            raise ValueError(f"expected a positive interval; got {interval_ns} ns")
        self.origin_ns = origin_ns
        self.interval_ns = interval_ns
        self._intervals: dict[int, LatencyHistogram] = {}
        self._gaps: dict[int, tuple[int, int]] = {}  # interval -> (longest gap, its end)
        self._last_at: int | None = None

    def record(self, latency_ns: int, at_ns: int) -> None:
        """Count one latency, taken at ``at_ns`` (same clock as ``origin_ns``)."""
        k = (at_ns - self.origin_ns) // self.interval_ns
        h = self._intervals.get(k)
        if h is None:
            h = self._intervals[k] = LatencyHistogram()
            self._gaps[k] = (0, at_ns)
        h.record(latency_ns)
        last = self._last_at
        if last is not None and at_ns - last > self._gaps[k][0]:
            self._gaps[k] = (at_ns - last, at_ns)
        self._last_at = at_ns

    def intervals(self) -> list[tuple[int, LatencyHistogram, int]]:
        """``(interval, histogram, longest gap ns)`` for every interval with records, in order."""
        return [(k, self._intervals[k], self._gaps[k][0]) for k in sorted(self._intervals)]

    def gap_end(self, interval: int) -> int:
        """When the longest gap of ``interval`` ended (``at_ns`` of the record that ended it)."""
        return self._gaps[interval][1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "origin_ns": self.origin_ns,
            "interval_ns": self.interval_ns,
            "intervals": [
                {
                    "interval": k,
                    "gap_max_ns": gap,
                    "gap_end_ns": self._gaps[k][1],
                    "histogram": h.to_dict(),
                }
                for k, h, gap in self.intervals()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyRecorder:
        """The recorder :meth:`to_dict` described (without its last record time)."""
        rec = cls(data["origin_ns"], data["interval_ns"])
        for item in data["intervals"]:
            k = item["interval"]
            rec._intervals[k] = LatencyHistogram.from_dict(item["histogram"])
            rec._gaps[k] = (item["gap_max_ns"], item["gap_end_ns"])
        return rec
