"""Garbage-collector tuning of the worker processes, on by default: ``service.gc`` in the config.

CPython's full collections scan every tracked object, and a flow process holds some 60,000 of
them from its imports alone, so one full collection stops every worker thread for tens of
milliseconds at unpredictable times. ``freeze: true`` runs ``gc.collect()``
then ``gc.freeze()`` once the dataflow is built: what start-up made moves to a permanent
generation that later collections skip. ``gen0_threshold`` sets how many allocations (net of
deallocations) trigger a young-generation collection (Python's default: 700); a higher value
means fewer collections, each over more objects, and fewer short-lived objects promoted to the
older generations. Objects made after the freeze (books, caches) are collected as usual.
"""

from __future__ import annotations

import gc
import logging

from market_data.config import GcSettings

logger = logging.getLogger(__name__)


def tune_gc(settings: GcSettings) -> None:
    """Apply ``settings`` to this process's collector (a no-op when both are turned off)."""
    if settings.gen0_threshold is not None:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gen0_threshold, gen1, gen2)
    if settings.freeze:
        gc.collect()
        gc.freeze()
    if settings.freeze or settings.gen0_threshold is not None:
        logger.info(
            "gc: thresholds %s, %d objects frozen", gc.get_threshold(), gc.get_freeze_count()
        )
