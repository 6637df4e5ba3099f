"""The documentation says what the code does: every config key, the real step ids, real metrics,
links that resolve."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pydantic import BaseModel

from market_data.config import (
    GcSettings,
    HealthSettings,
    LoggingSettings,
    ServiceSettings,
    parse_config,
)
from market_data.registry import OPERATORS, SINKS, SOURCES

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def test_configuration_reference_names_every_key():
    text = (DOCS / "configuration.md").read_text()
    missing = []
    models: list[tuple[str, type[BaseModel]]] = [
        ("service.health.", HealthSettings),
        ("service.logging.", LoggingSettings),
        ("service.gc.", GcSettings),
        ("service.", ServiceSettings),
    ]
    for prefix, model in models:
        for key in model.model_fields:
            if key not in ("health", "logging", "gc") and f"`{prefix}{key}`" not in text:
                missing.append(prefix + key)
    for registry in (SOURCES, OPERATORS, SINKS):
        for name in registry.names():
            kind = registry.get(name)
            assert kind is not None
            if f"`{name}`" not in text:
                missing.append(f"type {name}")
            options: type[BaseModel] = kind.options
            for key in options.model_fields:
                if f"| `{key}` |" not in text:
                    missing.append(f"{name}.{key}")
    assert not missing, f"docs/configuration.md does not describe {missing}"


def test_configuration_examples_are_valid():
    """Every YAML example validates: whole configs, and source or sink snippets in a pipeline."""
    text = (DOCS / "configuration.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    assert len(blocks) >= 5
    for block in blocks:
        config: dict[str, Any] = {
            "pipelines": [
                {
                    "name": "p",
                    "source": {"type": "replay", "path": "x"},
                    "operators": [{"type": "orderbook"}],
                    "sinks": [{"type": "stdout"}],
                }
            ]
        }
        if isinstance(block, list):  # a sink entry
            config["pipelines"][0]["sinks"] = block
        elif "pipelines" in block:
            config = block
        elif "source" in block:
            config["pipelines"][0]["source"] = block["source"]
        elif "symbols" in block:  # "adding a symbol"
            config["pipelines"][0]["source"] = {"type": "binance_futures", **block}
        else:
            config.update(block)
        parse_config(yaml.safe_dump(config), "docs/configuration.md", {})


def step_ids(flow: Any) -> list[str]:
    return [s.step_id.removeprefix("market_data.") for s in flow.substeps]


def test_architecture_shows_the_real_step_ids(tmp_path):
    from flows.build import build_dataflow

    config = parse_config(
        f"""
pipelines:
  - name: binance-futures
    source: {{type: replay, path: {REPO}/tests/data/binance_futures_2021-07-22.jsonl.gz}}
    operators: [{{type: orderbook}}]
    sinks: [{{type: redis}}, {{type: shm, name: doc_test_{tmp_path.name}}}]
""",
        "doc",
        {},
    )
    ids = step_ids(build_dataflow(config))
    assert ids == [
        "binance_futures_source",
        "binance_futures_order_book_by_symbol",
        "binance_futures_order_book",
        "binance_futures_order_book_unkey",
        "binance_futures_sink_0_redis",
        "binance_futures_sink_1_shm",
    ]
    text = (DOCS / "architecture.md").read_text()
    diagram = re.search(r"```mermaid\nflowchart LR\n  src(.*?)```", text, re.S)
    assert diagram, "the dataflow diagram"
    for step in ids:
        assert f'"{step}<br/>' in diagram.group(1), step
        generic = step.replace("binance_futures_", "<pipeline>_").replace("_0_redis", "_<i>_<type>")
        if "sink_1" not in step:
            assert f"`{generic}`" in text, generic


def exported_names() -> set[str]:
    """Every series name the sidecar's /metrics can carry."""
    from prometheus_client import REGISTRY, generate_latest

    import health.metrics  # noqa: F401  (registers the metrics)
    from health.metrics import state_families
    from health.report import Expectations, Merged

    names = set()
    text = generate_latest(REGISTRY).decode()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names |= (
            {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
        )
    for family in state_families(Expectations(()), Merged(0.0), True):
        names.add(family.name)
    return names


FUNCTIONS = {"histogram_quantile", "label_values"}


def test_grafana_dashboard_queries_real_metrics():
    dash = orjson.loads((DOCS / "grafana" / "market-data.json").read_bytes())
    known = exported_names()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    used = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = re.sub(r'"[^"]*"', "", target["expr"])  # label values
            expr = re.sub(r"\b(by|without) \([^)]*\)", "", expr)  # label names
            expr = re.sub(r"\{[^}]*\}", "", expr)
            metrics = {t for t in re.findall(r"[a-z_:][a-z0-9_:]*", expr) if "_" in t} - FUNCTIONS
            assert metrics, target["expr"]
            assert metrics <= known, f"{panel['title']}: unknown {metrics - known}"
            used |= metrics
    # Every metric of the service (not the process/python defaults) is on the dashboard.
    ours = {n for n in known if not n.startswith(("process_", "python_"))}
    # _created: prometheus_client's creation-time series, present once a labelled child exists
    # (e.g. after other tests ran flows in this process).
    ours -= {n for n in ours if n.endswith(("_sum", "_count", "_created"))}
    ours -= {n for n in ours if n.startswith("processing_latency_microseconds")}  # legacy twin
    assert not ours - used, f"not on the dashboard: {sorted(ours - used)}"


@pytest.mark.parametrize(
    "doc", ["README.md", *[f"docs/{p.name}" for p in sorted(DOCS.glob("*.md"))]]
)
def test_relative_links_resolve(doc):
    path = REPO / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{doc}: broken link {target}"
