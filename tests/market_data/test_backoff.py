import pytest
from hypothesis import given
from hypothesis import strategies as st

from market_data import MarketDataError
from market_data.backoff import ExponentialBackoff


@pytest.mark.parametrize(
    ("failures", "expected_s"),
    [(-1, 0.0), (0, 0.0), (1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (1000, 1.0)],
)
def test_doubles_from_initial_up_to_the_cap(failures: int, expected_s: float) -> None:
    assert ExponentialBackoff(0.1, 1.0).compute(failures) == pytest.approx(expected_s)


def test_from_ms_converts_to_seconds() -> None:
    assert ExponentialBackoff.from_ms(100, 5000) == ExponentialBackoff(0.1, 5.0)


@pytest.mark.parametrize(("initial_s", "max_s"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_rejects_impossible_bounds(initial_s: float, max_s: float) -> None:
    with pytest.raises(MarketDataError, match="initial_s"):
        ExponentialBackoff(initial_s, max_s)


@given(
    initial_ms=st.integers(1, 10_000),
    extra_ms=st.integers(0, 100_000),
    failures=st.integers(1, 10**6),
)
def test_delay_is_monotonic_and_within_bounds(
    initial_ms: int, extra_ms: int, failures: int
) -> None:
    policy = ExponentialBackoff.from_ms(initial_ms, initial_ms + extra_ms)
    delay = policy.compute(failures)
    assert policy.initial_s <= delay <= policy.max_s
    assert policy.compute(failures + 1) >= delay
