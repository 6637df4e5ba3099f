"""Entry point: ``python -m bytewax.run flows.main`` runs the flow described by pipelines.yaml.

The config file is ``$PIPELINES_FILE`` or ``./pipelines.yaml``; the factory form
``python -m bytewax.run "flows.main:build_flow('other.yaml')"`` names one directly. A config error
prints every problem and exits with status 2, without a traceback.

Building the flow also starts the health sidecar (``/health``, ``/ready``, ``/metrics``; see
``docs/health.md``) once per process, and makes SIGINT and SIGTERM stop the flow gracefully (see
:mod:`market_data.shutdown`): the sources end, the sinks flush and close, shared memory is
unlinked, and the process exits with status 0; a second signal stops it at once. Last, it applies
``service.gc`` (see :mod:`flows.gc_tuning`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from bytewax.dataflow import Dataflow

from flows.build import build_dataflow
from flows.gc_tuning import tune_gc
from health.cluster import HealthError, detect, prepare
from market_data import ConfigError
from market_data.config import config_path, load_config
from market_data.logs import setup_logging
from market_data.shutdown import install_signal_handlers

logger = logging.getLogger(__name__)


def build_flow(path: str | None = None) -> Dataflow:
    """Load the config at ``path``, build its dataflow and start the process's health sidecar.

    ``path`` defaults to ``$PIPELINES_FILE`` or ``./pipelines.yaml``.
    """
    path = path or config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(config.service.logging)
    install_signal_handlers()  # before anything starts: a signal from now on stops gracefully
    topology = detect()
    try:
        # Before the dataflow's modules import prometheus_client: a cluster's processes need its
        # multiprocess mode, which is chosen at that import.
        shared = prepare(config.service.health, topology)
    except HealthError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    flow = build_dataflow(config)
    from health import server  # imports prometheus_client, so only after prepare()

    server.start(config, topology, shared)
    tune_gc(config.service.gc)  # last: everything start-up made so far can be frozen
    return flow


def __getattr__(name: str) -> Any:
    # `flow` is built on first access, so importing this module (or using the factory form)
    # does not load the default config.
    if name == "flow":
        flow = build_flow()
        globals()["flow"] = flow
        return flow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
