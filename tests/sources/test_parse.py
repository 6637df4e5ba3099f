"""Frame and snapshot parsing: real Binance frames, exact units, and no exception on bad data.

The sample frames are copied from the cryptofeed captures in ``tests/data`` (see its README).
"""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data import MarketDataError, ParseError
from market_data.events import DepthDelta, DepthSnapshot, FrameError, Ignored, Trade
from sources.parse import EXCERPT_CHARS, parse_frame, parse_snapshot, to_units
from tests.implementations import implementation  # noqa: F401 (autouse)

E8 = 10**8

FUT_DEPTH = (
    '{"stream":"sushiusdt@depth@100ms","data":{"e":"depthUpdate","E":1626992741037,'
    '"T":1626992741024,"s":"SUSHIUSDT","U":600859599090,"u":600859600917,"pu":600859598061,'
    '"b":[["7.5040","813"],["7.6090","0"],["7.6110","2"]],"a":[["7.6150","1563"],'
    '["7.6220","3284"]]}}'
)
SPOT_DEPTH = (
    '{"stream":"nknusdt@depth@100ms","data":{"e":"depthUpdate","E":1633998512568,'
    '"s":"NKNUSDT","U":499869753,"u":499869754,"b":[["0.35170000","4265.00000000"]],'
    '"a":[["0.35290000","10968.00000000"]]}}'
)
FUT_TRADE = (
    '{"stream":"ctkusdt@aggTrade","data":{"e":"aggTrade","E":1626992741575,"a":16599292,'
    '"s":"CTKUSDT","p":"1.01100","q":"10","f":23961322,"l":23961322,"T":1626992741421,'
    '"m":false}}'
)
SPOT_TRADE = (
    '{"stream":"nknusdt@aggTrade","data":{"e":"aggTrade","E":1633998523963,"s":"NKNUSDT",'
    '"a":15683430,"p":"0.35280000","q":"58.00000000","f":19862790,"l":19862790,'
    '"T":1633998523963,"m":true,"M":true}}'
)
FUT_BOOK_TICKER = (
    '{"stream":"sushiusdt@bookTicker","data":{"e":"bookTicker","u":600859600576,'
    '"s":"SUSHIUSDT","b":"7.6110","B":"2","a":"7.6120","A":"297","T":1626992741012,'
    '"E":1626992741017}}'
)
SPOT_BOOK_TICKER = (  # spot bookTicker frames carry no "e"
    '{"stream":"nknusdt@bookTicker","data":{"u":499869768,"s":"NKNUSDT","b":"0.35210000",'
    '"B":"672.00000000","a":"0.35260000","A":"3199.00000000"}}'
)
FUT_KLINE = (
    '{"stream":"ctkusdt@kline_1m","data":{"e":"kline","E":1626992741424,"s":"CTKUSDT",'
    '"k":{"t":1626992700000,"T":1626992759999,"s":"CTKUSDT","i":"1m","f":23961275,'
    '"L":23961322,"o":"1.01000","c":"1.01100","h":"1.01100","l":"1.01000","v":"3917",'
    '"n":48,"x":false,"q":"3957.89900","V":"1729","Q":"1748.01900","B":"0"}}}'
)
FUT_SNAPSHOT = (
    '{"lastUpdateId":600859605926,"E":1626992741264,"T":1626992741261,'
    '"bids":[["7.6110","6"],["7.6080","161"]],"asks":[["7.6120","297"],["7.6130","12"]]}'
)
SPOT_SNAPSHOT = (
    '{"lastUpdateId":499869752,"bids":[["0.35210000","672.00000000"]],'
    '"asks":[["0.35260000","3199.00000000"]]}'
)


def test_futures_depth_frame_with_pu() -> None:
    ev = parse_frame(FUT_DEPTH, 1626992741.081672, 42)
    assert ev == DepthDelta(
        symbol="SUSHIUSDT",
        first_update_id=600859599090,
        final_update_id=600859600917,
        prev_final_update_id=600859598061,
        event_time_ms=1626992741037,
        bids=((750_400_000, 813 * E8), (760_900_000, 0), (761_100_000, 2 * E8)),
        asks=((761_500_000, 1563 * E8), (762_200_000, 3284 * E8)),
        recv_time=1626992741.081672,
        recv_ns=42,
    )


def test_spot_depth_frame_without_pu() -> None:
    ev = parse_frame(SPOT_DEPTH.encode(), 5.0)  # bytes are accepted as well
    assert isinstance(ev, DepthDelta)
    assert ev.symbol == "NKNUSDT" and ev.prev_final_update_id is None
    assert (ev.first_update_id, ev.final_update_id) == (499869753, 499869754)
    assert ev.bids == ((35_170_000, 4265 * E8),) and ev.asks == ((35_290_000, 10968 * E8),)


def test_bare_frame_without_envelope() -> None:
    bare = orjson.dumps(orjson.loads(FUT_DEPTH)["data"])
    assert parse_frame(bare, 1.0) == parse_frame(FUT_DEPTH, 1.0)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            FUT_TRADE,
            Trade(
                "CTKUSDT", 16599292, 101_100_000, 10 * E8, 1626992741421, False, 1626992741575, 7.0
            ),
        ),
        (
            SPOT_TRADE,
            Trade(
                "NKNUSDT", 15683430, 35_280_000, 58 * E8, 1633998523963, True, 1633998523963, 7.0
            ),
        ),
    ],
)
def test_agg_trade_frames(frame: str, expected: Trade) -> None:
    assert parse_frame(frame, 7.0) == expected


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (FUT_BOOK_TICKER, Ignored("bookTicker", "SUSHIUSDT")),
        (SPOT_BOOK_TICKER, Ignored("bookTicker", "NKNUSDT")),
        (FUT_KLINE, Ignored("kline", "CTKUSDT")),
        ('{"e":"markPriceUpdate","s":"BTCUSDT","E":1}', Ignored("markPriceUpdate", "BTCUSDT")),
        ('{"result":null,"id":1}', Ignored("subscription_response")),
        ('{"result":["btcusdt@depth"],"id":3}', Ignored("subscription_response")),
        ('{"e":"brandNewEvent","s":"BTCUSDT"}', Ignored("unknown:brandNewEvent", "BTCUSDT")),
        ('{"stream":"x@y","data":{"e":"fooBar"}}', Ignored("unknown:fooBar")),
    ],
)
def test_frames_the_service_does_not_use_are_ignored(frame: str, expected: Ignored) -> None:
    assert parse_frame(frame, 1.0) == expected


@pytest.mark.parametrize(
    "frame",
    [
        '{"code": 0, "msg": "Unknown property", "id": 1}',  # as documented
        '{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":2}',  # as sent
    ],
)
def test_server_error_answers_are_frame_errors_saying_so(frame: str) -> None:
    ev = parse_frame(frame, 3.0)
    assert isinstance(ev, FrameError)
    assert ev.reason.startswith("server error ")
    assert ("Unknown property" in ev.reason) or ("invalid stream" in ev.reason)
    assert ev.excerpt == frame and ev.recv_time == 3.0


def _depth(**changes: object) -> str:
    data = orjson.loads(FUT_DEPTH)["data"]
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return orjson.dumps({"stream": "sushiusdt@depth@100ms", "data": data}).decode()


def _trade(**changes: object) -> str:
    data = orjson.loads(FUT_TRADE)["data"]
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return orjson.dumps(data).decode()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("", "invalid JSON"),
        ('{"e":"depthUpdate"', "invalid JSON"),
        (b"\xff\xfe{}", "invalid JSON"),
        ("[1, 2]", "expected a JSON object; got list"),
        ("42", "expected a JSON object; got int"),
        ('"text"', "expected a JSON object; got str"),
        ('{"stream":"a@depth","data":[1]}', "envelope 'data' is not an object"),
        ('{"stream":"a@depth"}', "envelope 'data' is not an object"),
        ('{"foo": 1}', "no event type 'e'"),
        ('{"e": 5}', "event type must be a string; got 5"),
        (_depth(U=..., u=...), "depthUpdate: field 'U' must be an integer; got None"),
        (_depth(u="600859600917"), "field 'u' must be an integer"),
        (_depth(E=True), "field 'E' must be an integer; got True"),
        (_depth(U=10, u=9), "U=10 is after final update id u=9"),
        (_depth(pu="1"), "field 'pu' must be an integer"),
        (_depth(s=""), "field 's' must be a non-empty string"),
        (_depth(s=...), "field 's' must be a non-empty string"),
        (_depth(b=...), "bids must be a list of [price, quantity]; got NoneType"),
        (_depth(a={"7.6": "1"}), "asks must be a list of [price, quantity]; got dict"),
        (_depth(b=[["7.6"]]), "bids level must be [price, quantity]"),
        (_depth(b=["7.6", "1"]), "bids level must be [price, quantity]"),
        (_depth(b=[[7.6, "1"]]), "expected a decimal string; got 7.6"),
        (_depth(a=[["7.6", "-1"]]), "non-negative decimal"),
        (_depth(a=[["7.6", "1e3"]]), "non-negative decimal"),
        (_depth(a=[["7.123456789", "1"]]), "more than 8 decimals"),
        (_depth().replace("600859600917", "1" + "0" * 30), "field 'u' must be an integer"),
        (_trade(m="false"), "aggTrade: field 'm' must be a boolean"),
        (_trade(p=None), "expected a decimal string; got None"),
        (_trade(q="٣"), "non-negative decimal"),
        (_trade(a=1.5), "field 'a' must be an integer"),
        (_trade(T=...), "field 'T' must be an integer"),
        (_trade(p="9" * 5000), "aggTrade: "),
    ],
)
def test_malformed_frames_are_frame_errors_with_a_reason(frame: str | bytes, reason: str) -> None:
    ev = parse_frame(frame, 9.5)
    assert isinstance(ev, FrameError), ev
    assert reason in ev.reason
    assert ev.recv_time == 9.5
    assert len(ev.excerpt) <= EXCERPT_CHARS + 3


def test_frame_error_keeps_the_symbol_and_a_short_excerpt() -> None:
    frame = _depth(a=[["7.6", "x"]] * 100)
    ev = parse_frame(frame, 1.0)
    assert isinstance(ev, FrameError) and ev.symbol == "SUSHIUSDT"
    assert ev.excerpt == frame[:EXCERPT_CHARS] + "..."


# -- to_units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("0", 0),
        ("0.00000000", 0),
        ("1", E8),
        ("7.6110", 761_100_000),
        ("0.00000001", 1),
        ("0.35280000", 35_280_000),
        ("123456789.12345678", 12_345_678_912_345_678),
        ("1.1234567800000", 112_345_678),  # zeros past the eighth decimal are harmless
        ("00012.5", 1_250_000_000),
        ("99999999999999999999", 99_999_999_999_999_999_999 * E8),  # no float on the way
    ],
)
def test_to_units_is_exact(text: str, units: int) -> None:
    assert to_units(text) == units


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "-1",
        "+1",
        "-0",
        "1e5",
        "1E-2",
        "0x10",
        " 1",
        "1 ",
        "1_000",
        "1,5",
        "1.2.3",
        "0.000000001",
        "0.123456789",
        "1.000000001000",
        "١٢٣",  # Arabic-Indic digits
        "\uff11\uff12",  # full-width digits
        "²",
        "nan",
        "inf",
        "9" * 5000,  # longer than int() converts
    ],
)
def test_to_units_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        to_units(text)


@pytest.mark.parametrize("value", [None, 1, 1.5, b"1", ["1"]])
def test_to_units_rejects_non_strings(value: object) -> None:
    with pytest.raises(ParseError, match="expected a decimal string"):
        to_units(value)  # type: ignore[arg-type]


def test_parse_error_is_a_market_data_error() -> None:
    assert issubclass(ParseError, MarketDataError)


@settings(max_examples=300, deadline=None)
@given(
    value=st.decimals(
        min_value=0, max_value=10**12, places=8, allow_nan=False, allow_infinity=False
    ),
    pad=st.integers(0, 4),
)
def test_to_units_matches_decimal(value: Decimal, pad: int) -> None:
    text = f"{value:f}" + ("0" * pad if "." in f"{value:f}" else "")
    assert to_units(text) == int(value * E8)


# -- never an exception --------------------------------------------------------------------------

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["7.6110", "0", "1e3", "-1", "", "0.123456789", "9" * 4400]),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
KEYS = ["e", "E", "s", "U", "u", "pu", "b", "a", "p", "q", "m", "T", "result", "id", "code", "msg"]


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    base = dict(orjson.loads(draw(st.sampled_from([FUT_DEPTH, SPOT_DEPTH, FUT_TRADE])))["data"])
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        if draw(st.booleans()):
            base.pop(key, None)
        else:
            base[key] = draw(JSON)
    if draw(st.booleans()):
        base["e"] = draw(st.sampled_from(["depthUpdate", "aggTrade", None, 1, "kline"]))
    frame = orjson.dumps({"stream": "x@y", "data": base} if draw(st.booleans()) else base)
    if draw(st.booleans()):  # truncated or corrupted bytes
        cut = draw(st.integers(0, len(frame)))
        frame = frame[:cut] + draw(st.binary(max_size=3))
    return frame if draw(st.booleans()) else frame.decode("utf-8", "replace")


@settings(max_examples=400, deadline=None)
@given(frame=frames())
def test_parse_frame_never_raises_on_mangled_frames(frame: str | bytes) -> None:
    ev = parse_frame(frame, 1.0)
    assert isinstance(ev, DepthDelta | Trade | Ignored | FrameError)
    if isinstance(ev, FrameError):
        assert ev.reason


@settings(max_examples=200, deadline=None)
@given(frame=st.one_of(st.text(max_size=40), st.binary(max_size=40)))
def test_parse_frame_never_raises_on_noise(frame: str | bytes) -> None:
    assert isinstance(parse_frame(frame, 1.0), DepthDelta | Trade | Ignored | FrameError)


# -- snapshots -----------------------------------------------------------------------------------


def test_futures_snapshot() -> None:
    snap = parse_snapshot("SUSHIUSDT", FUT_SNAPSHOT, 1626992741.301402, 7)
    assert snap == DepthSnapshot(
        symbol="SUSHIUSDT",
        last_update_id=600859605926,
        bids=((761_100_000, 6 * E8), (760_800_000, 161 * E8)),
        asks=((761_200_000, 297 * E8), (761_300_000, 12 * E8)),
        recv_time=1626992741.301402,
        event_time_ms=1626992741264,
        recv_ns=7,
    )


def test_levels_are_pairs_of_ints_on_every_path() -> None:
    """The book keeps the parser's level tuples and publishes them as they are: each must be an
    immutable (price, quantity) pair, whether the values were cached, new, or sent with extra
    entries (longer entries keep their first two values)."""
    new = f"7.{len(FUT_DEPTH)}7"  # a price string this process has not converted yet
    frame = FUT_DEPTH.replace('["7.5040","813"]', f'["{new}","813","x"]')
    for ev in (parse_frame(frame, 0.0), parse_frame(frame, 0.0)):  # uncached, then cached
        assert isinstance(ev, DepthDelta)
        for side in (ev.bids, ev.asks):
            assert type(side) is tuple
            assert all(type(lv) is tuple and len(lv) == 2 for lv in side)
            assert all(type(p) is int and type(q) is int for p, q in side)
        assert ev.bids[0] == (to_units(new), 813 * E8)


def test_spot_snapshot_has_no_event_time() -> None:
    snap = parse_snapshot("NKNUSDT", SPOT_SNAPSHOT.encode(), 2.0)
    assert isinstance(snap, DepthSnapshot)
    assert snap.last_update_id == 499869752 and snap.event_time_ms is None
    assert snap.bids == ((35_210_000, 672 * E8),) and snap.asks == ((35_260_000, 3199 * E8),)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"code":-1121,"msg":"Invalid symbol."}', "snapshot: server error -1121: Invalid symbol."),
        ("<html>502 Bad Gateway</html>", "snapshot: invalid JSON"),
        ("[]", "expected a JSON object; got list"),
        ('{"bids":[],"asks":[]}', "field 'lastUpdateId' must be an integer"),
        ('{"lastUpdateId":1,"E":"1","bids":[],"asks":[]}', "field 'E' must be an integer"),
        ('{"lastUpdateId":1,"bids":[["1","x"]],"asks":[]}', "non-negative decimal"),
        ('{"lastUpdateId":1,"bids":[],"asks":null}', "asks must be a list"),
        ('{"lastUpdateId":1,"bids":[],"asks":[["1", "' + "1" * 5000 + '"]]}', "too long"),
    ],
)
def test_bad_snapshots_are_frame_errors(body: str, reason: str) -> None:
    ev = parse_snapshot("BTCUSDT", body, 4.0)
    assert isinstance(ev, FrameError)
    assert reason in ev.reason
    assert ev.symbol == "BTCUSDT" and ev.recv_time == 4.0
