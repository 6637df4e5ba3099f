"""Optional CPU pinning of the worker processes: ``service.cpu_affinity`` in the config.

``cpu_affinity: [2, 3]`` keeps every process of the service on CPUs 2 and 3;
``cpu_affinity: [[2], [3]]`` puts process 0 of a cluster on CPU 2 and process 1 on CPU 3
(process ``i`` takes set ``i`` modulo the number of sets). It is applied with
``os.sched_setaffinity`` when the dataflow is built, before bytewax starts its worker threads,
which inherit it (so does the health sidecar's thread, started afterwards). Linux only; elsewhere
it is logged and ignored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from market_data import ConfigError

logger = logging.getLogger(__name__)

Setting = Sequence[int] | Sequence[Sequence[int]] | None


def cpus_for(setting: Setting, process_id: int) -> frozenset[int] | None:
    """The CPUs process ``process_id`` should run on, or None to leave it alone."""
    if not setting:
        return None
    sets = [[c] if isinstance(c, int) else list(c) for c in setting]
    if all(isinstance(c, int) for c in setting):  # one set for every process
        return frozenset(c for s in sets for c in s)
    return frozenset(sets[process_id % len(sets)])


def apply_cpu_affinity(setting: Setting, process_id: int) -> frozenset[int] | None:
    """Pin this process (its threads started from now on) as ``setting`` says.

    Raises :class:`ConfigError` if the CPUs are not available to the process.
    """
    cpus = cpus_for(setting, process_id)
    if cpus is None:
        return None
    if not hasattr(os, "sched_setaffinity"):
        logger.warning("service.cpu_affinity is ignored: this platform cannot pin processes")
        return None
    available = os.sched_getaffinity(0)
    if not cpus <= available:
        raise ConfigError(
            f"service.cpu_affinity: process {process_id} cannot run on CPUs "
            f"{sorted(cpus - available)}; expected some of {sorted(available)}; got {sorted(cpus)}"
        )
    os.sched_setaffinity(0, cpus)
    logger.info("process %d pinned to CPUs %s", process_id, ",".join(map(str, sorted(cpus))))
    return cpus
