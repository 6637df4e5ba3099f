"""pipelines.yaml: defaults, env interpolation, and every error reported at once with its path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from market_data import ConfigError, MarketDataError
from market_data.config import AppConfig, ServiceSettings, config_path, load_config, parse_config
from market_data.events import Market
from market_data.options import (
    BinanceFuturesOptions,
    BinanceSpotOptions,
    OrderBookOptions,
    RedisSinkOptions,
    ShmSinkOptions,
    StdoutSinkOptions,
)

MINIMAL = """
pipelines:
  - name: futures
    source: {type: binance_futures, symbols: [BTCUSDT]}
    operators: [{type: orderbook}]
    sinks: [{type: stdout}]
"""


def errors_of(text: str, environ: dict[str, str] | None = None, name: str = "p.yaml") -> list[str]:
    """The error lines of a ConfigError, without the file-name prefix (checked here once)."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, name, environ or {})
    message = str(info.value)
    head, *lines = message.splitlines()
    assert re.fullmatch(rf"{re.escape(name)}: \d+ configuration errors?:", head), head
    assert head.startswith(f"{name}: {len(lines)} configuration error")
    for line in lines:
        assert line.startswith(f"  {name}: "), line
    return [line.removeprefix(f"  {name}: ") for line in lines]


def pipeline(source: str, operators: str = "[{type: orderbook}]", sinks: str = "[{type: stdout}]",
             name: str = "p") -> str:  # fmt: skip
    return (
        f"  - name: {name}\n    source: {source}\n    operators: {operators}\n    sinks: {sinks}\n"
    )


def test_minimal_config_gets_every_default() -> None:
    config = parse_config(MINIMAL, "p.yaml", {})
    assert isinstance(config, AppConfig) and config.path == "p.yaml"
    assert config.service == ServiceSettings()
    assert config.service.health.enabled and config.service.logging.level == "INFO"
    (p,) = config.pipelines
    assert p.name == "futures" and p.step_prefix == "futures"
    assert p.source == BinanceFuturesOptions(symbols=["BTCUSDT"])
    assert isinstance(p.source, BinanceFuturesOptions)
    assert p.source.ws_url == "wss://fstream.binance.com"
    assert p.source.rest_url == "https://fapi.binance.com"
    assert p.source.depth_speed_ms == 100 and p.source.snapshot_limit == 1000
    assert p.operators == (OrderBookOptions(depth=20, max_levels=5000, max_buffer=10000),)
    assert p.sinks == (StdoutSinkOptions(),)


def test_full_config_with_several_pipelines() -> None:
    text = (
        "service:\n  health: {host: 127.0.0.1, port: 9100, stall_after_s: 5}\n"
        "  logging: {level: DEBUG, format: json}\npipelines:\n"
        + pipeline(
            "{type: binance_futures, symbols: [BTCUSDT, ETHUSDT], depth_speed_ms: 250}",
            "[{type: orderbook, depth: 5}]",
            "[{type: redis, mode: both}, {type: shm, slots: 16}]",
            name="Binance-Futures",
        )
        + pipeline("{type: binance_spot, symbols: [BTCUSDT]}", name="spot")
        + pipeline("{type: replay, path: [a.jsonl, b.jsonl.gz], market: spot}", name="replay")
    )
    config = parse_config(text, "p.yaml", {})
    assert config.service.health.port == 9100 and config.service.logging.format == "json"
    fut, spot, replay = config.pipelines
    assert fut.step_prefix == "binance_futures"
    assert fut.operators[0].depth == 5  # type: ignore[attr-defined]
    assert fut.sinks == (RedisSinkOptions(mode="both"), ShmSinkOptions(slots=16))
    assert isinstance(spot.source, BinanceSpotOptions)
    assert spot.source.ws_url == "wss://stream.binance.com:9443"
    assert replay.source.paths() == ["a.jsonl", "b.jsonl.gz"]  # type: ignore[attr-defined]
    assert replay.source.market is Market.SPOT  # type: ignore[attr-defined]


def test_options_compare_by_value_and_are_frozen() -> None:
    a = parse_config(MINIMAL, "a.yaml", {}).pipelines[0]
    b = parse_config(MINIMAL, "b.yaml", {}).pipelines[0]
    assert a == b and a.source == b.source and a.sinks == b.sinks
    with pytest.raises(ValueError, match="frozen"):
        a.source.type = "binance_spot"


# -- environment interpolation -----------------------------------------------------------------


def _redis_url(env: dict[str, str], value: str) -> str:
    text = "pipelines:\n" + pipeline(
        "{type: binance_futures, symbols: [BTCUSDT]}", sinks=f'[{{type: redis, url: "{value}"}}]'
    )
    sink = parse_config(text, "p.yaml", env).pipelines[0].sinks[0]
    assert isinstance(sink, RedisSinkOptions)
    return sink.url


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ({}, "${REDIS_URL:-redis://localhost:6379}", "redis://localhost:6379"),
        ({"REDIS_URL": "redis://r:1"}, "${REDIS_URL:-redis://localhost:6379}", "redis://r:1"),
        ({"REDIS_URL": ""}, "${REDIS_URL:-redis://d:2}", "redis://d:2"),  # empty counts as unset
        ({"REDIS_URL": "redis://r:1"}, "${REDIS_URL}", "redis://r:1"),
        ({"H": "h", "P": "7"}, "redis://${H}:${P}/0", "redis://h:7/0"),
        ({}, "redis://x:${PORT:-}", "redis://x:"),
        ({}, "redis://plain:6379", "redis://plain:6379"),
    ],
)
def test_env_interpolation(env: dict[str, str], value: str, expected: str) -> None:
    assert _redis_url(env, value) == expected


def test_interpolated_numbers_are_validated_as_numbers() -> None:
    text = "service:\n  health: {port: '${PORT:-9191}'}\n" + MINIMAL
    assert parse_config(text, "p.yaml", {}).service.health.port == 9191
    assert parse_config(text, "p.yaml", {"PORT": "8080"}).service.health.port == 8080
    assert errors_of(text, {"PORT": "http"}) == [
        "service.health.port: input should be a valid integer, unable to parse string as an "
        "integer; got 'http'"
    ]


def test_missing_env_variable_is_reported_once_with_its_path() -> None:
    text = "pipelines:\n" + pipeline(
        "{type: binance_futures, symbols: [BTCUSDT], ws_url: '${WS}'}",
        sinks="[{type: stdout}, {type: redis, url: '${REDIS_URL}'}]",
    )
    assert errors_of(text) == [
        "pipelines[0].source.ws_url: environment variable WS is not set and has no default",
        "pipelines[0].sinks[1].url: environment variable REDIS_URL is not set and has no default",
    ]


def test_env_is_read_from_the_process_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MD_TEST_SYMBOL", "SOLUSDT")
    text = MINIMAL.replace("[BTCUSDT]", "['${MD_TEST_SYMBOL}']")
    assert parse_config(text, "p.yaml").pipelines[0].source.symbols == ["SOLUSDT"]  # type: ignore[attr-defined]


# -- errors --------------------------------------------------------------------------------------

BROKEN = """
service:
  health: {port: 70000, colour: red}
  logging: {level: LOUD}
pipeline: typo
pipelines:
  - name: main
    source:
      type: binance_futures
      symbols: [BTCUSDT, btcusdt]
      ws_url: http://fstream.binance.com
      rest_url: fapi.binance.com
      depth_speed_ms: 300
    operators: [{type: orderbook, depth: 0}, {type: orderbok}]
    sinks:
      - {type: redis, url: '${REDIS_URL}'}
      - {type: kafka}
      - {type: shm, slots: many}
      - {}
      - {type: stdout, colour: red}
  - name: "bad name!"
    source: {type: replay}
    operators: [{type: orderbook, max_buffer: -5}]
    sinks: [{type: jsonl}]
    extra: 1
  - name: spot
    source: {type: binance_spot, symbols: [BTCUSDT, BTCUSDT], depth_speed_ms: 250}
    operators: [{type: orderbook, depth: 'ten'}]
    sinks: [{type: redis, url: 'http://localhost:6379'}]
"""


BROKEN_ERRORS = [
    "pipelines[0].sinks[0].url: environment variable REDIS_URL is not set and has no default",
    "pipeline: unknown key; expected one of pipelines, service",
    "service.health.port: input should be less than or equal to 65535; got 70000",
    "service.health.colour: unknown key",
    "service.logging.level: input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'; got 'LOUD'",
    "pipelines[0].source.symbols: expected upper-case symbols like BTCUSDT, which "
    "['btcusdt'] are not; got ['BTCUSDT', 'btcusdt']",
    "pipelines[0].source.depth_speed_ms: expected 100, 250 or 500 (futures depth stream "
    "speeds, ms); got 300",
    "pipelines[0].source.ws_url: expected a ws/wss URL; got 'http://fstream.binance.com'",
    "pipelines[0].source.rest_url: expected a http/https URL; got 'fapi.binance.com'",
    "pipelines[0].operators[0].depth: input should be greater than 0; got 0",
    "pipelines[0].operators[1].type: unknown operator type; expected one of orderbook; "
    "got 'orderbok'",
    "pipelines[0].sinks[1].type: unknown sink type; expected one of jsonl, redis, shm, "
    "stdout; got 'kafka'",
    "pipelines[0].sinks[2].slots: input should be a valid integer, unable to parse string "
    "as an integer; got 'many'",
    "pipelines[0].sinks[3].type: missing; expected one of jsonl, redis, shm, stdout",
    "pipelines[0].sinks[4].colour: unknown key; expected one of type",
    "pipelines[1].name: string should match pattern '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'; "
    "got 'bad name!'",
    "pipelines[1].extra: unknown key; expected one of name, operators, sinks, source",
    # the parts of an invalid pipeline are checked too
    "pipelines[1].source.path: missing required key",
    "pipelines[1].operators[0].max_buffer: input should be greater than 0; got -5",
    "pipelines[1].sinks[0].path: missing required key",
    "pipelines[2].source.symbols: expected each symbol once, but ['BTCUSDT'] repeat; "
    "got ['BTCUSDT', 'BTCUSDT']",
    "pipelines[2].source.depth_speed_ms: expected 100 or 1000 (spot depth stream speeds, "
    "ms); got 250",
    "pipelines[2].operators[0].depth: input should be a valid integer, unable to parse "
    "string as an integer; got 'ten'",
    "pipelines[2].sinks[0].url: expected a redis/rediss/unix URL; got 'http://localhost:6379'",
]


def test_broken_config_reports_every_error_at_once_with_paths() -> None:
    assert sorted(errors_of(BROKEN)) == sorted(BROKEN_ERRORS)


def test_config_error_is_a_market_data_error() -> None:
    assert issubclass(ConfigError, MarketDataError)


def test_single_error_is_worded_in_the_singular() -> None:
    text = MINIMAL.replace("{type: stdout}", "{type: stdout, x: 1}")
    with pytest.raises(ConfigError, match=r"^p\.yaml: 1 configuration error:\n"):
        parse_config(text, "p.yaml", {})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{type: binance_futures, symbols: []}", "source.symbols: value should have at least 1"),
        ("{type: binance_futures}", "source.symbols: missing required key"),
        ("{type: binance_futures, symbols: BTCUSDT}", "symbols: input should be a valid list"),
        ("{type: binance_futures, symbols: [BTC-USDT]}", "source.symbols: expected upper-case"),
        ("{type: binance_futures, symbols: [BTCUSDT], ws_url: 'wss://'}", "expected a ws/wss URL"),
        ("{type: binance_futures, symbols: [BTCUSDT], snapshot_limit: 7}", "input should be 5, 10"),
        ("{type: binance_futures, symbols: [BTCUSDT], silence_timeout_s: 0}", "greater than 0"),
        ("{type: binance_futures, symbols: [BTCUSDT], reconnect_delay_ms: true}", None),
        ("{type: 5}", "source.type: unknown source type; expected one of binance_futures, "
                      "binance_spot, replay; got 5"),
        ("[binance_futures]", "pipelines[0].source: input should be a valid dictionary"),
        ("{type: replay, path: []}", "source.path"),
        ("{type: replay, path: x, speed: -1}", "source.speed: input should be greater than or"),
    ],
)  # fmt: skip
def test_source_errors(source: str, expected: str | None) -> None:
    text = "pipelines:\n" + pipeline(source)
    if expected is None:  # accepted by pydantic's lax mode (true == 1): not an error
        parse_config(text, "p.yaml", {})
        return
    errors = errors_of(text)
    assert any(expected in e for e in errors), errors
    assert all(e.startswith("pipelines[0].source") for e in errors), errors


@pytest.mark.parametrize(
    ("operators", "sinks", "expected"),
    [
        ("[]", "[{type: stdout}]", "pipelines[0].operators: list should have at least 1 item"),
        ("[{type: orderbook}]", "[]", "pipelines[0].sinks: list should have at least 1 item"),
        ("[{type: orderbook, depth: -1}]", "[{type: stdout}]",
         "pipelines[0].operators[0].depth: input should be greater than 0; got -1"),
        ("[{type: orderbook, max_levels: 0}]", "[{type: stdout}]",
         "pipelines[0].operators[0].max_levels: input should be greater than 0; got 0"),
        ("[{type: orderbook}, {type: orderbook}]", "[{type: stdout}]",
         "pipelines[0].operators: expected exactly one orderbook operator; "
         "got ['orderbook', 'orderbook']"),
        ("[{type: orderbook}]", "[{type: redis, mode: cluster}]",
         "pipelines[0].sinks[0].mode: input should be 'pubsub', 'streams' or 'both'"),
        ("[{type: orderbook}]", "[{type: redis, url: 'localhost:6379'}]",
         "pipelines[0].sinks[0].url: expected a redis/rediss/unix URL; got 'localhost:6379'"),
        ("[{type: orderbook}]", "[{type: shm, name: 'a/b'}]",
         "pipelines[0].sinks[0].name: string should match pattern"),
        ("[{type: orderbook}]", "[stdout]",
         "pipelines[0].sinks[0]: input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_operator_and_sink_errors(operators: str, sinks: str, expected: str) -> None:
    text = "pipelines:\n" + pipeline(
        "{type: binance_futures, symbols: [BTCUSDT]}", operators, sinks
    )
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors


def test_same_symbol_twice_for_one_source_type_is_an_error() -> None:
    text = (
        "pipelines:\n"
        + pipeline("{type: binance_futures, symbols: [BTCUSDT, ETHUSDT]}", name="a")
        + pipeline("{type: binance_spot, symbols: [ETHUSDT]}", name="b")  # other market: fine
        + pipeline("{type: binance_futures, symbols: [SOLUSDT, ETHUSDT]}", name="c")
    )
    assert errors_of(text) == [
        "pipelines[2].source.symbols: ETHUSDT is also in pipeline 'a' with the same source "
        "type; got it twice"
    ]


def test_pipeline_names_must_be_unique() -> None:
    text = (
        "pipelines:\n"
        + pipeline("{type: binance_futures, symbols: [BTCUSDT]}", name="a")
        + pipeline("{type: binance_spot, symbols: [BTCUSDT]}", name="a")
    )
    assert errors_of(text) == ["pipelines: pipeline names must be unique; got 'a' twice"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "p.yaml: expected a mapping with 'pipelines'; got an empty file"),
        ("- a\n- b\n", "p.yaml: expected a mapping with 'pipelines'; got list"),
        ("pipelines: []\n", "pipelines: expected a non-empty list of pipelines; got []"),
        ("service: {}\n", "pipelines: expected a non-empty list of pipelines; got None"),
        ("pipelines: {a: 1}\n", "pipelines: expected a non-empty list of pipelines; got {'a': 1}"),
        ("pipelines: [5]\n", "pipelines[0]: input should be a valid dictionary"),
        ("pipelines:\n  - {name: x}\n", "pipelines[0].source: missing required key"),
    ],
)
def test_structural_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "p.yaml", {})
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("pipelines:\n  - name: a\n    source: {type: x\n    sinks: []\n", 4),
        ("pipelines:\n  - name: a\n\tsource: {}\n", 3),
        ("service:\n  health: {port: 1}\n  logging: [a, b\n", 4),
    ],
)
def test_invalid_yaml_names_the_line(text: str, line: int) -> None:
    with pytest.raises(ConfigError, match=rf"^p\.yaml: invalid YAML at line {line}, column \d+: "):
        parse_config(text, "p.yaml", {})


# -- files -----------------------------------------------------------------------------------------


def test_load_config_reads_the_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert load_config(path, {}).path == str(path)
    path.write_text(MINIMAL.replace("stdout", "stdoot"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(f"{path}: 1 configuration error:")
    assert f"{path}: pipelines[0].sinks[0].type: unknown sink type" in str(info.value)


def test_load_config_of_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the config file: No such file"):
        load_config(missing, {})


def test_the_shipped_pipelines_yaml_is_valid() -> None:
    shipped = Path(__file__).resolve().parents[2] / "pipelines.yaml"
    if not shipped.exists():
        pytest.skip("no pipelines.yaml in this tree")
    config = load_config(shipped, {})
    assert config.pipelines


def test_config_path_comes_from_the_environment() -> None:
    assert config_path({}) == "pipelines.yaml"
    assert config_path({"PIPELINES_FILE": ""}) == "pipelines.yaml"
    assert config_path({"PIPELINES_FILE": "/etc/md.yaml"}) == "/etc/md.yaml"


def test_a_key_given_twice_is_an_error_with_both_lines() -> None:
    text = """pipelines:
  - name: a
    source: {type: replay, path: x.jsonl}
    operators: [{type: orderbook}]
    sinks: [{type: stdout}]
    sinks: [{type: shm}]
"""
    with pytest.raises(ConfigError, match=r"key 'sinks' given twice \(lines 5 and 6\)"):
        parse_config(text, "p.yaml", {})


def test_empty_env_value_is_kept_by_plain_reference_and_replaced_by_default() -> None:
    text = """pipelines:
  - name: a
    source: {type: replay, path: "x${SUFFIX}.jsonl"}
    operators: [{type: orderbook}]
    sinks: [{type: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379}"}]
"""
    config = parse_config(text, "p.yaml", {"SUFFIX": "", "REDIS_URL": ""})
    pipe = config.pipelines[0]
    assert pipe.source.path == "x.jsonl"  # type: ignore[attr-defined]
    assert pipe.sinks[0].url == "redis://127.0.0.1:6379"  # type: ignore[attr-defined]


def test_a_depth_the_book_could_never_publish_is_a_configuration_error(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        """
pipelines:
  - name: p
    source: {type: binance_futures, symbols: [BTCUSDT], snapshot_limit: 50}
    operators: [{type: orderbook, depth: 100, max_levels: 80}]
    sinks: [{type: stdout}]
"""
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    text = str(info.value)
    assert "operators[0].depth: expected at most max_levels (80)" in text
    assert "operators[0].depth: expected at most the source's snapshot_limit (50)" in text
