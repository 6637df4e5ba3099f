"""``service.gc``: validated with the config, applied to the process's collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from flows.gc_tuning import tune_gc
from market_data import ConfigError
from market_data.config import GcSettings, parse_config

PIPELINE = """
pipelines:
  - {name: p, source: {type: replay, path: x}, operators: [{type: orderbook}],
     sinks: [{type: stdout}]}
"""


@pytest.fixture
def collector() -> Iterator[None]:
    """Put the collector back as it was."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_config_keys_and_their_errors() -> None:
    config = parse_config("service: {gc: {freeze: true, gen0_threshold: 50000}}" + PIPELINE, "f")
    assert config.service.gc == GcSettings(freeze=True, gen0_threshold=50000)
    default = parse_config(PIPELINE, "f").service.gc
    assert default == GcSettings(freeze=True, gen0_threshold=50_000)  # on unless turned off
    with pytest.raises(ConfigError, match="gen0_threshold") as err:
        parse_config("service: {gc: {gen0_threshold: 0, disable: true}}" + PIPELINE, "f")
    assert "disable" in str(err.value)


@pytest.mark.usefixtures("collector")
def test_turned_off_it_leaves_the_collector_alone() -> None:
    before = gc.get_threshold(), gc.get_freeze_count()
    tune_gc(GcSettings(freeze=False, gen0_threshold=None))
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


@pytest.mark.usefixtures("collector")
def test_freeze_moves_what_exists_out_of_collections_and_sets_gen0() -> None:
    _, gen1, gen2 = gc.get_threshold()
    tune_gc(GcSettings(freeze=True, gen0_threshold=50_000))
    assert gc.get_threshold() == (50_000, gen1, gen2)
    assert gc.get_freeze_count() > 10_000  # at least the modules imported so far
    assert len(gc.get_objects()) < gc.get_freeze_count()  # collections now skip those
