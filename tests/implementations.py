"""Run a test module under both implementations of the hot pure functions: the C speedups
(``market_data/_speedups.c``) and the Python code they must equal.

Import ``implementation`` into a test module to run each of its tests under both (module scope, so
hypothesis's examples share it), or ``pure_python`` for tests of the Python path itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from market_data.speedups import SPEEDUPS
from sinks import payload
from sources import parse

IMPLEMENTATIONS = ["c", "python"] if SPEEDUPS is not None else ["python"]


def _turn_off(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(parse, "_fast_levels", None)
    mp.setattr(payload, "_fast_book", None)


@pytest.fixture(scope="module", params=IMPLEMENTATIONS, autouse=True)
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "python":
            _turn_off(mp)
        else:  # nothing left them patched
            assert SPEEDUPS is not None
            assert parse._fast_levels is SPEEDUPS.levels
            assert payload._fast_book is SPEEDUPS.book_json
        yield request.param


@pytest.fixture(scope="module", autouse=True)
def pure_python() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        _turn_off(mp)
        yield
