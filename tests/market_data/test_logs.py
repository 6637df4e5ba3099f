"""Log set-up and the occurrence limiter."""

from __future__ import annotations

import logging

import orjson
import pytest

from market_data.config import LoggingSettings
from market_data.logs import Occurrences, setup_logging


def test_occurrences_logs_powers_of_ten_per_key():
    occ = Occurrences()
    logged = [n for n in (occ.note("a") for _ in range(1000)) if n is not None]
    assert logged == [1, 10, 100, 1000]
    assert occ.note("b") == 1  # keys are counted apart


def test_occurrences_stays_bounded():
    occ = Occurrences(max_keys=3)
    for i in range(100):
        occ.note(i)
    assert len(occ._counts) <= 3


@pytest.fixture(autouse=True)
def _keep_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_per_line(capsys):
    setup_logging(LoggingSettings(level="INFO", format="json"))
    logging.getLogger("x.y").info("synced %s at %d", "BTCUSDT", 42)
    line = capsys.readouterr().err.strip()
    obj = orjson.loads(line)
    assert obj["level"] == "info" and obj["logger"] == "x.y"
    assert obj["msg"] == "synced BTCUSDT at 42"


def test_text_logs_are_key_value(capsys):
    setup_logging(LoggingSettings(level="WARNING", format="text"))
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "level=WARNING logger=x msg=shown" in err
