"""HistogramBatch: observations added in one go expose exactly what ``observe`` would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from health.metrics import HistogramBatch

BUCKETS = (1, 2.5, 5, 10, 25, 50, 100)


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


@given(
    batches=st.lists(
        st.lists(
            st.one_of(st.sampled_from(BUCKETS), st.floats(min_value=0, max_value=500)),
            max_size=30,
        ),
        max_size=5,
    )
)
def test_batched_observations_equal_one_observe_each(batches: list[list[float]]) -> None:
    direct, batched = CollectorRegistry(), CollectorRegistry()
    one = Histogram("lat", "x", ["symbol"], buckets=BUCKETS, registry=direct).labels("A")
    many = Histogram("lat", "x", ["symbol"], buckets=BUCKETS, registry=batched).labels("A")
    batch = HistogramBatch(many)
    for values in batches:
        for v in values:
            one.observe(v)
            batch.observe(v)  # values on a bucket's bound count in that bucket, as observe does
        batch.flush()
        got, want = samples(batched), samples(direct)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_nothing_reaches_the_histogram_before_flush() -> None:
    registry = CollectorRegistry()
    child = Histogram("lat", "x", ["symbol"], buckets=BUCKETS, registry=registry).labels("A")
    batch = HistogramBatch(child)
    batch.observe(3.0)
    assert samples(registry)[("lat_count", "")] == 0
    batch.flush()
    batch.flush()  # a second flush adds nothing
    assert samples(registry)[("lat_count", "")] == 1
    assert samples(registry)[("lat_bucket", "5.0")] == 1
    assert samples(registry)[("lat_bucket", "2.5")] == 0
