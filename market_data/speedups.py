"""The optional C versions of the depth level parser and the book payload writer.

``market_data/_speedups.c`` is built with the package when a C compiler (and the Python headers)
are there; the extension is optional: without them, ``pip install`` still succeeds. Each of its
functions returns exactly what the Python code returns or ``None``, and then the Python code
runs, so a missing or refused extension changes speed, never output. Setting
``MARKET_DATA_PURE_PYTHON=1`` turns it off, to compare or to rule it out.

Measured on a stream of ~20-level updates: ``parse_frame`` 16-18 µs -> 7.5 µs, the top-20 payload
8 µs -> 3.4 µs (1 µs when its levels are in the CPU cache).
"""

from __future__ import annotations

import os
from types import ModuleType

from market_data.events import DECIMALS

PURE_ENV = "MARKET_DATA_PURE_PYTHON"
ON = "C speedups on (market_data._speedups)"


def turned_off() -> bool:
    """True when ``MARKET_DATA_PURE_PYTHON`` asks for the Python code (any value but 0)."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def load() -> tuple[ModuleType | None, str]:
    """The C module, or ``None``; and one line for the start-up log saying which runs, and why."""
    if turned_off():
        return None, f"C speedups off ({PURE_ENV} is set): pure Python"
    try:
        from market_data import _speedups
    except ImportError as exc:
        return None, (
            f"C speedups not built ({exc}; a C compiler and the Python headers are needed at "
            "install): pure Python, slower"
        )
    if _speedups.DECIMALS != DECIMALS:  # built from an older source tree
        return None, (
            f"C speedups not used: built for {_speedups.DECIMALS} decimals, the events have "
            f"{DECIMALS}; reinstall: pure Python, slower"
        )
    return _speedups, ON


SPEEDUPS, STATUS = load()
