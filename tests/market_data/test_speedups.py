"""The C speedups return exactly what the Python code returns, or ``None``: never another value.

Both are run on the same inputs: wire-shaped ones (where the C code must answer) and malformed or
unusual ones (where it may leave the answer to Python, but must not give a different one).
"""

from __future__ import annotations

import random
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data import ParseError, speedups
from market_data.events import SCALE, BookUpdate, DepthDelta
from sinks import payload
from sinks.payload import book_dict
from sources import parse
from sources.parse import parse_frame

C: Any = speedups.SPEEDUPS
NOT_HERE = "market_data._speedups is not built, or is turned off"
needs_c = pytest.mark.skipif(C is None, reason=NOT_HERE)


def _python_levels(raw: object) -> tuple[tuple[int, int], ...] | None:
    """The Python parser's answer for one side; ``None`` where it reports an error."""
    saved, parse._fast_levels = parse._fast_levels, None
    try:
        return parse._levels(raw, "bids")
    except ParseError:
        return None
    finally:
        parse._fast_levels = saved


def _python_book(update: BookUpdate) -> bytes:
    return orjson.dumps(book_dict(update))


def test_the_extension_is_built_where_a_compiler_is() -> None:
    # It is optional at install; this catches a build that broke without anyone noticing.
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if speedups.turned_off() or shutil.which(compiler) is None or not headers.exists():
        pytest.skip("turned off, or no C compiler or Python headers here")
    assert C is not None, speedups.STATUS
    assert speedups.STATUS == speedups.ON


@needs_c
def test_the_built_module_is_not_older_than_its_source() -> None:
    # The build is optional: a C file that no longer compiles leaves the last good module in place
    # (pip says so only in a warning), and the tests would then pass on old code.
    source = Path(speedups.__file__).with_name("_speedups.c")
    assert Path(C.__file__).stat().st_mtime >= source.stat().st_mtime, (
        "market_data/_speedups.c changed since the module was built: pip install -e . again, "
        "and read its warnings"
    )


@needs_c
def test_the_parser_and_the_payload_call_the_c_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The [c] runs of the parse and payload tests compare C with Python; this shows that C is what
    # parse_frame and encode_book call first.
    assert parse._fast_levels is C.levels and payload._fast_book is C.book_json
    side = ((1, 2),)
    monkeypatch.setattr(parse, "_fast_levels", lambda raw: side)
    monkeypatch.setattr(payload, "_fast_book", lambda *args: b"from C")
    frame = '{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"pu":0,"b":[["1","1"]],"a":[]}'
    ev = parse_frame(frame, 0.0)
    assert isinstance(ev, DepthDelta) and ev.bids is side and ev.asks is side
    assert payload.encode_book(BookUpdate("X", side, side, 1, 2, 0.0)) == b"from C"


@pytest.mark.parametrize(
    ("value", "off"), [("1", True), ("yes", True), ("0", False), ("", False), (None, False)]
)
def test_pure_python_env_turns_it_off(
    monkeypatch: pytest.MonkeyPatch, value: str | None, off: bool
) -> None:
    if value is None:
        monkeypatch.delenv(speedups.PURE_ENV, raising=False)
    else:
        monkeypatch.setenv(speedups.PURE_ENV, value)
    module, status = speedups.load()
    assert speedups.turned_off() is off
    if off:
        assert module is None
        assert status == "C speedups off (MARKET_DATA_PURE_PYTHON is set): pure Python"
    else:
        assert (module is None) is (C is None)


# -- levels ---------------------------------------------------------------------------------------

DIGITS = st.text("0123456789", min_size=1, max_size=12)
VALID = st.builds(
    lambda whole, frac, zeros: f"{whole}.{frac}{'0' * zeros}" if frac is not None else whole,
    DIGITS,
    st.none() | st.text("0123456789", max_size=8),
    st.integers(0, 3),
)
NOISE = st.text("0123456789.-+e _x\u0663\u00b2", max_size=24)  # \u0663: Arabic-Indic 3
VALUE = st.one_of(VALID, NOISE, st.sampled_from(["", ".", "5.", ".5", "1.000000001", "9" * 30]))
ENTRY = st.one_of(
    st.lists(VALUE, min_size=2, max_size=2),
    st.lists(VALUE, min_size=0, max_size=4),
    st.tuples(VALUE, VALUE),
    st.lists(st.one_of(VALUE, st.integers(), st.none(), st.floats()), min_size=2, max_size=3),
)


@needs_c
@settings(max_examples=1000, deadline=None)
@given(raw=st.lists(ENTRY, max_size=6))
def test_levels_never_differ_from_python(raw: list[object]) -> None:
    fast = C.levels(raw)
    if fast is not None:
        assert fast == _python_levels(raw)
        assert all(type(level) is tuple and len(level) == 2 for level in fast)
        assert all(type(p) is int and type(q) is int for p, q in fast)


@needs_c
@settings(max_examples=500, deadline=None)
@given(raw=st.lists(st.lists(VALID, min_size=2, max_size=3), max_size=8))
def test_levels_answers_every_wire_shaped_side(raw: list[list[str]]) -> None:
    # Plain decimals whose units fit in 18 digits (eight past the point): C must answer them.
    short = all(len(v.partition(".")[0].lstrip("0")) + 8 <= 18 for entry in raw for v in entry[:2])
    fast = C.levels(raw)
    if short:
        assert fast is not None
    if fast is not None:
        assert fast == _python_levels(raw)


@needs_c
@pytest.mark.parametrize(
    "raw",
    [
        None,
        "7.6",
        (["7.6", "1"],),
        [("7.6", "1")],
        [["7.6"]],
        [["-7.6", "1"]],
        [["7.6", 1]],
        [["7.6", "1e3"]],
        [["1.123456789", "1"]],
        [["12345678901.0", "1"]],  # 19 digits in units: past C's 18-digit bound, exact in Python
        [["\u0663", "1"]],
        [["0" * 4301 + "1", "1"]],  # int() refuses more than 4,300 digits, zeros included
    ],
)
def test_levels_leaves_the_unusual_to_python(raw: object) -> None:
    assert C.levels(raw) is None


@needs_c
def test_levels_of_real_frames() -> None:
    side = [["7.5040", "813"], ["7.6090", "0"], ["0.35170000", "4265.00000000"], ["5.", ".5"]]
    assert C.levels(side) == (
        (750_400_000, 813 * SCALE),
        (760_900_000, 0),
        (35_170_000, 4265 * SCALE),
        (5 * SCALE, SCALE // 2),
    )
    assert C.levels([["1.1234567800", "3"]]) == ((112_345_678, 3 * SCALE),)  # zeros past 8


# -- book payload ---------------------------------------------------------------------------------

UNITS = st.one_of(
    st.integers(0, 2_000),  # below 1e-5: orjson writes an exponent
    st.integers(0, 10**15),  # up to 15 digits: always written by C
    st.integers(0, 2**63 - 1),
    st.integers(1, 10**6).map(lambda n: n * 10**8),  # whole numbers: "5.0"
    st.integers(2**63, 2**70),  # past int64: left to orjson
)
LEVELS = st.lists(st.tuples(UNITS, UNITS), max_size=6).map(tuple)


def _book(symbol: str, bids: tuple, asks: tuple, uid: int = 1, ts: int = 2) -> BookUpdate:
    return BookUpdate(symbol, bids, asks, uid, ts, 0.0)


@needs_c
@settings(max_examples=1000, deadline=None)
@given(
    symbol=st.one_of(st.sampled_from(["BTCUSDT", "1000PEPEUSDT"]), st.text(max_size=6)),
    bids=LEVELS,
    asks=LEVELS,
    uid=st.integers(-(2**63), 2**64 - 1),
    ts=st.integers(0, 2**63 - 1),
)
def test_book_json_never_differs_from_orjson(
    symbol: str, bids: tuple, asks: tuple, uid: int, ts: int
) -> None:
    update = _book(symbol, bids, asks, uid, ts)
    fast = C.book_json(symbol, bids, asks, uid, ts)
    if fast is not None:
        assert fast == _python_book(update)


def _significant(units: int) -> int:
    return len(str(units).rstrip("0"))


def test_book_json_writes_every_float_as_orjson_does() -> None:
    if C is None:
        pytest.skip(NOT_HERE)
    rng = random.Random(7)
    values = [0, 1, 999, 1000, 10**8, 10**15, 10**15 + 1, 2**63 - 1]
    for digits in range(1, 20):
        values += [rng.randrange(10 ** (digits - 1), 10**digits) for _ in range(2_000)]
        values += [rng.randrange(1, 10**digits) * 10 ** rng.randrange(0, 8) for _ in range(500)]
    answered = 0
    for units in values:
        if units >= 2**63:
            continue
        levels = ((units, units),)
        fast = C.book_json("X", levels, (), 1, 2)
        if _significant(units) <= 15:
            assert fast is not None, units
        if fast is not None:
            answered += 1
            assert fast == _python_book(_book("X", levels, ())), units
    assert answered > len(values) * 3 // 4


@needs_c
@pytest.mark.parametrize(
    "args",
    [
        ('BTC"USDT', (), (), 1, 2),  # needs escaping
        ("BTC\u00e9", (), (), 1, 2),
        ("X", [(1, 1)], (), 1, 2),  # a list, not a tuple
        ("X", ((1, 1, 1),), (), 1, 2),
        ("X", ((True, 1),), (), 1, 2),
        ("X", ((-1, 1),), (), 1, 2),
        ("X", ((1.5, 1),), (), 1, 2),
        ("X", (), (), None, 2),
        ("X", (), (), 1, 2**64),
    ],
)
def test_book_json_leaves_the_unusual_to_orjson(args: tuple) -> None:
    assert C.book_json(*args) is None


@needs_c
def test_book_json_checks_its_argument_count() -> None:
    with pytest.raises(TypeError, match="expected 5 arguments, got 2"):
        C.book_json("X", ())


@needs_c
def test_book_json_of_a_deep_book() -> None:
    # Past the writer's 8 KiB stack buffer: the same bytes from a heap buffer.
    bids = tuple((5_000_000_000_000 - i * 10_000_000, 1_234_000 + i) for i in range(500))
    asks = tuple((5_000_100_000_000 + i * 10_000_000, 99_000 + i) for i in range(500))
    fast = C.book_json("BTCUSDT", bids, asks, 1, 2)
    assert fast is not None and len(fast) > 8192
    assert fast == _python_book(_book("BTCUSDT", bids, asks))
