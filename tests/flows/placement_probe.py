"""Test-only: where (process, thread) each symbol's events were read and where its book was kept.

:func:`install` wraps the sources' ``next_batch`` and the book operator's ``on_batch`` to note the
process id and thread of each call by symbol; the service's own code stays untouched. In a test
process, pass pytest's ``monkeypatch``. For a real ``bytewax.run`` process (or every process of
a ``flows.launch`` cluster), run the target ``tests.flows.placement_probe:build_flow()`` with
``PLACEMENT_PROBE_DIR`` set: each process writes ``<pid>.json`` there when it exits, and
:func:`read_dir` merges them.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from bytewax.dataflow import Dataflow

ENV = "PLACEMENT_PROBE_DIR"
TARGET = "tests.flows.placement_probe:build_flow()"

Place = tuple[int, int]  # (process id, thread id)


class Where:
    """For each symbol: the places its events were read at, and where its book was kept."""

    def __init__(self) -> None:
        self.read: dict[str, set[Place]] = defaultdict(set)
        self.kept: dict[str, set[Place]] = defaultdict(set)

    def merge(self, other: dict[str, Any]) -> None:
        for symbol, places in other["read"].items():
            self.read[symbol] |= {tuple(p) for p in places}
        for symbol, places in other["kept"].items():
            self.kept[symbol] |= {tuple(p) for p in places}

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "read": {s: sorted(p) for s, p in self.read.items()},
                "kept": {s: sorted(p) for s, p in self.kept.items()},
            }
        )

    def crossings(self, by_process: bool = False) -> dict[str, tuple[set[Any], set[Any]]]:
        """Symbols whose events were read anywhere but at the one place their book was kept.

        ``by_process``: compare processes only (threads of one process share objects).
        """
        out: dict[str, tuple[set[Any], set[Any]]] = {}
        for symbol, places in self.kept.items():
            read: set[Any] = self.read.get(symbol, set())
            kept: set[Any] = places
            if by_process:
                read, kept = {pid for pid, _ in read}, {pid for pid, _ in kept}
            if len(kept) != 1 or read != kept:
                out[symbol] = (read, kept)
        return out

    def places(self) -> set[Place]:
        """Every place a book was kept at."""
        return {p for kept in self.kept.values() for p in kept}


def _here() -> Place:
    return (os.getpid(), threading.get_ident())


def install(where: Where, setattr_: Callable[[Any, str, Any], None] = setattr) -> None:
    """Wrap the sources' partitions and the book logic so that they note into ``where``."""
    from operators.orderbook import BookLogic
    from sources.binance import _BinancePartition
    from sources.replay import _ReplayPartition

    def noting_reads(original: Callable[[Any], list[Any]]) -> Callable[[Any], list[Any]]:
        def next_batch(self: Any) -> list[Any]:
            out = original(self)
            here = _here()
            for symbol in {getattr(ev, "symbol", None) for ev in out}:
                if symbol is not None:
                    where.read[symbol].add(here)
            return out

        return next_batch

    original_on_batch = BookLogic.on_batch

    def on_batch(self: BookLogic, values: list[Any]) -> Any:
        where.kept[values[0].symbol].add(_here())
        return original_on_batch(self, values)

    setattr_(_BinancePartition, "next_batch", noting_reads(_BinancePartition.next_batch))
    setattr_(_ReplayPartition, "next_batch", noting_reads(_ReplayPartition.next_batch))
    setattr_(BookLogic, "on_batch", on_batch)


def build_flow() -> Dataflow:
    """``flows.main``'s flow, probed; this process's findings go to ``$PLACEMENT_PROBE_DIR``."""
    from flows.main import build_flow as build

    where = Where()
    install(where)
    out = Path(os.environ[ENV]) / f"{os.getpid()}.json"
    atexit.register(lambda: out.write_bytes(where.as_json()))
    return build()


def read_dir(directory: Path, expect_files: int) -> Where:
    """Merge what every process wrote into ``directory``."""
    files = sorted(directory.glob("*.json"))
    assert len(files) == expect_files, f"expected {expect_files} probe files: {files}"
    where = Where()
    for path in files:
        where.merge(orjson.loads(path.read_bytes()))
    return where
