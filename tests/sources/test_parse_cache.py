"""The price/quantity cache of the parser never changes a result, also when it overflows."""

from __future__ import annotations

import orjson

from market_data.events import DepthDelta
from sources import parse
from sources.parse import parse_frame, to_units
from sources.recording import Record, read_records
from tests.flows.helpers import FUTURES, SPOT
from tests.implementations import pure_python  # noqa: F401 (autouse)


def test_cached_levels_equal_direct_conversion(monkeypatch):
    monkeypatch.setattr(parse, "UNITS_CACHE_MAX", 64)
    parse._UNITS_CACHE.clear()
    deltas = 0
    for path in (FUTURES, SPOT):
        for rec in read_records(path):
            if not isinstance(rec, Record) or rec.kind != "ws":
                continue
            ev = parse_frame(rec.frame, rec.t)
            if isinstance(ev, DepthDelta):
                data = orjson.loads(rec.frame)["data"]
                assert ev.bids == tuple((to_units(p), to_units(q)) for p, q in data["b"])
                assert ev.asks == tuple((to_units(p), to_units(q)) for p, q in data["a"])
                deltas += 1
    assert deltas > 900
    assert 0 < len(parse._UNITS_CACHE) <= 64  # not empty: the Python path ran, not the C parser
    # A full cache is freed a few entries at each later miss, so at most one waits at a time.
    assert len(parse._RETIRED) <= 1 and sum(map(len, parse._RETIRED)) <= 64


def test_a_bad_string_is_never_cached():
    frame = '{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"pu":0,"b":[["-1.0","1"]],"a":[]}'
    assert type(parse_frame(frame, 0.0)).__name__ == "FrameError"
    assert "-1.0" not in parse._UNITS_CACHE
    assert type(parse_frame(frame, 0.0)).__name__ == "FrameError"  # still refused the 2nd time
