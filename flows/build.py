"""Build the bytewax dataflow from a validated configuration.

Step ids are ``<pipeline>_<role>`` in snake_case: ``binance_futures_source``,
``binance_futures_order_book``, ``binance_futures_sink_0_redis``.
"""

from __future__ import annotations

import logging

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from flows.affinity import apply_cpu_affinity
from health.cluster import detect
from market_data import speedups
from market_data.config import AppConfig, PipelineConfig
from market_data.events import Market
from market_data.registry import OPERATORS, SINKS, SOURCES
from market_data.runtime import PipelineRuntime

logger = logging.getLogger(__name__)

FLOW_ID = "market_data"


def build_dataflow(config: AppConfig) -> Dataflow:
    """The dataflow for every pipeline of ``config``; pins the process if the config asks."""
    apply_cpu_affinity(config.service.cpu_affinity, detect().process_id)
    flow = Dataflow(FLOW_ID)
    if speedups.SPEEDUPS is None and not speedups.turned_off():
        logger.warning("%s", speedups.STATUS)
    else:
        logger.info("%s", speedups.STATUS)
    for pipeline in config.pipelines:
        _add_pipeline(flow, pipeline)
    return flow


def _add_pipeline(flow: Dataflow, pipeline: PipelineConfig) -> None:
    prefix = pipeline.step_prefix
    kind = SOURCES.get(pipeline.source.type)
    assert kind is not None  # validated
    # Shared by this pipeline's source and operators; a recording's event times are history.
    runtime = PipelineRuntime(live=pipeline.source.type != "replay")
    source = kind.builder()(pipeline.source, pipeline, runtime=runtime)
    market: Market = getattr(source, "market", Market.FUTURES)
    stream = op.input(f"{prefix}_source", flow, source)
    for i, options in enumerate(pipeline.operators):
        op_kind = OPERATORS.get(options.type)
        assert op_kind is not None
        step = f"{prefix}_order_book" if options.type == "orderbook" else f"{prefix}_op_{i}"
        stream = op_kind.builder()(step, stream, options, market, runtime=runtime)
    for i, options in enumerate(pipeline.sinks):
        sink_kind = SINKS.get(options.type)
        assert sink_kind is not None
        sink = sink_kind.builder()(options, pipeline)
        op.output(f"{prefix}_sink_{i}_{options.type}", stream, sink)
    logger.info(
        "pipeline %s: source %s (%s rules), %d operator(s), sinks %s",
        pipeline.name,
        pipeline.source.type,
        market.value,
        len(pipeline.operators),
        ", ".join(s.type for s in pipeline.sinks),
    )
