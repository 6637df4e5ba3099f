"""The live source's partitions: each runs on the worker that keeps its symbols' books."""

from __future__ import annotations

import pytest

from market_data.events import Market
from market_data.options import BinanceFuturesOptions
from market_data.placement import worker_of_key
from sources.binance import BinanceSource

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "LTCUSDT"]


def source(symbols: list[str], workers: int, partitions: int = 4) -> BinanceSource:
    options = BinanceFuturesOptions(symbols=symbols, partitions=partitions)
    return BinanceSource(options, Market.FUTURES, workers)


def test_one_worker_deals_symbols_round_robin_as_before() -> None:
    src = source(SYMBOLS, 1)
    assert src.list_parts() == [f"binance_futures-{i}" for i in range(4)]
    assert src.groups == [SYMBOLS[i::4] for i in range(4)]


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_group_j_holds_only_symbols_of_worker_j_mod_workers(workers: int) -> None:
    src = source(SYMBOLS, workers, partitions=5)
    names = src.list_parts()
    assert names == sorted(names)  # the order bytewax places them in
    assert len(names) == max(5, workers)
    assert sorted(s for g in src.groups for s in g) == sorted(SYMBOLS)
    for j, group in enumerate(src.groups):
        assert {worker_of_key(s, workers) for s in group} <= {j % workers}


def test_more_than_ten_partitions_keep_their_order_when_sorted() -> None:
    symbols = [f"S{i:02d}USDT" for i in range(30)]
    names = source(symbols, 2, partitions=12).list_parts()
    assert names[:3] == ["binance_futures-00", "binance_futures-01", "binance_futures-02"]
    assert names == sorted(names)


def test_a_worker_without_books_gets_a_partition_that_ends_at_once() -> None:
    only_worker_1 = [s for s in SYMBOLS if worker_of_key(s, 2) == 1]
    src = source(only_worker_1, 2)
    assert src.groups[0] == []
    part = src.build_part("binance_futures_source", src.list_parts()[0], None)
    with pytest.raises(StopIteration):  # and no connection was opened
        part.next_batch()
