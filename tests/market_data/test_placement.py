"""market_data.placement: the pure rules, and the same rules checked against bytewax itself."""

from __future__ import annotations

import random
import string
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSource, cluster_main
from hypothesis import given
from hypothesis import strategies as st

from market_data import MarketDataError
from market_data.placement import (
    partition_names,
    place_symbols,
    worker_of_key,
    worker_of_partition,
)

SYMBOL = st.text(alphabet=string.ascii_uppercase + string.digits, min_size=1, max_size=12)


def random_keys(seed: int, n: int = 200) -> list[str]:
    rng = random.Random(seed)
    keys = {
        "".join(rng.choices(string.ascii_uppercase + string.digits, k=rng.randint(3, 16)))
        for _ in range(n)
    }
    # Lengths around SipHash's 8-byte blocks, non-ASCII text, and the empty key.
    keys |= {"", "A", "BTCUSDT", "ETHUSDT1", "BTCUSDT_250627", "1000PEPEUSDT", "币安人生USDT"}
    return sorted(keys)


# --- bytewax itself ----------------------------------------------------------------------------


def bytewax_workers_of_keys(keys: list[str], workers: int) -> dict[str, int]:
    """The worker bytewax's keyed stateful step runs each key on, from a real cluster."""
    seen: dict[str, int] = {}
    flow = Dataflow("routing_probe")
    keyed = op.key_on("key", op.input("inp", flow, TestingSource(keys)), lambda k: k)
    kept = op.stateful_map("state", keyed, lambda state, v: (state, v))
    op.inspect_debug("where", kept, lambda _s, item, _e, worker: seen.__setitem__(item[0], worker))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return seen


class _OneItem(StatefulSourcePartition[str, None]):
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = False

    def next_batch(self) -> list[str]:
        if self.sent:
            raise StopIteration
        self.sent = True
        return [self.name]

    def snapshot(self) -> None:
        return None


class _Named(FixedPartitionedSource[str, None]):
    """Partitions that each emit their own name once."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def list_parts(self) -> list[str]:
        return list(self.names)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _OneItem:
        return _OneItem(for_part)


def bytewax_workers_of_partitions(names: list[str], workers: int) -> dict[str, int]:
    """The worker bytewax runs each partition on, from a real cluster."""
    seen: dict[str, int] = {}
    flow = Dataflow("placement_probe")
    parts = op.input("inp", flow, _Named(names))
    op.inspect_debug("where", parts, lambda _s, item, _e, worker: seen.__setitem__(item, worker))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return seen


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_worker_of_key_is_where_bytewax_routes_each_key(workers: int) -> None:
    keys = random_keys(seed=workers)
    routed = bytewax_workers_of_keys(keys, workers)
    assert {k: worker_of_key(k, workers) for k in keys} == routed
    assert set(routed.values()) == set(range(workers))  # the check covers every worker


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("count", [1, 3, 8, 20, 21, 64])
def test_sorted_partition_j_runs_on_worker_j_mod_workers(workers: int, count: int) -> None:
    names = partition_names("binance_futures", count)
    listed = names[::-1]  # list_parts' order does not matter, only the names' sorted order
    placed = bytewax_workers_of_partitions(listed, workers)
    assert placed == {name: worker_of_partition(j, workers) for j, name in enumerate(names)}


def test_placed_symbols_are_read_on_the_worker_that_keeps_their_books() -> None:
    symbols = random_keys(seed=7, n=40)[1:]  # not the empty key
    workers = 3
    groups = place_symbols(symbols, workers, partitions=5)
    placed = bytewax_workers_of_partitions(partition_names("p", len(groups)), workers)
    routed = bytewax_workers_of_keys(symbols, workers)
    for name, group in zip(partition_names("p", len(groups)), groups, strict=True):
        assert all(routed[s] == placed[name] for s in group), name


# --- the pure rules ----------------------------------------------------------------------------


def round_robin(symbols: list[str], partitions: int) -> list[list[str]]:
    """The source's split before placement existed (what one worker must still get)."""
    n = max(1, min(partitions, len(symbols)))
    return [symbols[i::n] for i in range(n)]


@given(st.lists(SYMBOL, min_size=1, max_size=60, unique=True), st.integers(1, 30))
def test_one_worker_keeps_the_round_robin_split(symbols: list[str], partitions: int) -> None:
    assert place_symbols(symbols, 1, partitions) == round_robin(symbols, partitions)


@given(
    st.lists(SYMBOL, min_size=1, max_size=60, unique=True),
    st.integers(1, 8),
    st.integers(1, 30),
)
def test_each_group_holds_only_its_workers_symbols(
    symbols: list[str], workers: int, partitions: int
) -> None:
    groups = place_symbols(symbols, workers, partitions)
    assert len(groups) == max(workers, min(partitions, len(symbols)))
    assert sorted(s for g in groups for s in g) == sorted(symbols)  # each symbol exactly once
    for j, group in enumerate(groups):
        assert all(worker_of_key(s, workers) == j % workers for s in group)
        assert group == [s for s in symbols if s in group]  # configured order kept
    for w in range(workers):  # a worker's symbols are spread evenly over its groups
        sizes = [len(g) for g in groups[w::workers]]
        assert max(sizes) - min(sizes) <= 1


def test_a_worker_without_symbols_gets_an_empty_group() -> None:
    # Both symbols route to worker 1 of 2: group 0 (worker 0) must exist, empty.
    symbols = [s for s in random_keys(seed=1) if s and worker_of_key(s, 2) == 1][:2]
    assert place_symbols(symbols, 2, 4) == [[], symbols]


@pytest.mark.parametrize("count", [1, 2, 9, 10, 11, 100, 101, 1000])
def test_partition_names_sort_in_index_order(count: int) -> None:
    names = partition_names("binance_spot", count)
    assert sorted(names) == names
    assert len(set(names)) == count


def test_one_worker_routes_everything_to_worker_0() -> None:
    assert {worker_of_key(k, 1) for k in random_keys(seed=3)} == {0}


@pytest.mark.parametrize(("workers", "partitions"), [(0, 4), (2, 0)])
def test_rejects_counts_below_one(workers: int, partitions: int) -> None:
    with pytest.raises(MarketDataError, match="at least 1"):
        place_symbols(["BTCUSDT"], workers, partitions)
