"""The sidecar over real HTTP, on a private health state (no dataflow)."""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from health.cluster import Topology
from health.report import Expectations, PipelineExpectation
from health.server import HealthView, Sidecar
from health.state import HealthState, PipelineScope
from market_data.config import HealthSettings
from market_data.events import BookState


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def get(port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


@pytest.fixture
def served():
    clock = Clock()
    state = HealthState(clock)
    state.configure([PipelineScope("p", "p", "binance_futures", ("BTCUSDT",))])
    expect = Expectations((PipelineExpectation("p", ("BTCUSDT",), ("redis:p",)),), stall_after_s=30)
    view = HealthView(expect, Topology(), None, state, clock)
    sidecar = Sidecar(HealthSettings(port=0), view, Topology(), None)
    sidecar.start()
    assert sidecar.port
    yield sidecar.port, state, clock
    sidecar.stop()


def test_ready_answers_503_naming_what_is_missing_then_200(served):
    port, state, clock = served
    status, body, ctype = get(port, "/ready")
    assert (status, ctype) == (503, "application/json")
    assert orjson.loads(body)["not_ready"] == [
        {"pipeline": "p", "sink": "redis:p", "reason": "not started"},
        {"pipeline": "p", "symbol": "BTCUSDT", "reason": "awaiting snapshot"},
    ]
    state.book("p_order_book", "BTCUSDT").changed(BookState.SYNCED, "synced", clock())
    state.connection("binance_futures", ("BTCUSDT",)).connected()
    state.sink("redis:p").up()
    status, body, _ = get(port, "/ready")
    assert status == 200, body
    assert orjson.loads(body)["status"] == "ready"


def test_health_turns_503_when_frames_wait_unprocessed(served):
    port, state, clock = served
    status, body, _ = get(port, "/health")
    assert status == 200
    assert orjson.loads(body)["status"] == "healthy"
    state.connection("binance_futures", ("BTCUSDT",)).connected()
    state.processed_at = clock()
    clock.t += 31
    state.received_at = clock()
    status, body, _ = get(port, "/health")
    assert status == 503
    data = orjson.loads(body)
    assert data["status"] == "unhealthy"
    assert "no frame processed for 31.0 s" in data["problems"][0]


def test_metrics_are_prometheus_text_with_the_state_gauges(served):
    port, state, clock = served
    book = state.book("p_order_book", "BTCUSDT")
    book.changed(BookState.SYNCED, "synced", clock())
    book.updated(7, clock() - 2.5)
    status, body, ctype = get(port, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    key = (("pipeline", "p"), ("symbol", "BTCUSDT"))
    assert samples[("orderbook_staleness_seconds", key)] == pytest.approx(2.5)
    assert samples[("orderbook_synced", key)] == 1.0
    assert samples[("market_data_ready", ())] == 0.0  # no connection, no sink yet


def test_a_taken_port_is_logged_and_the_flow_goes_on(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        state = HealthState()
        view = HealthView(Expectations(()), Topology(), None, state)
        sidecar = Sidecar(HealthSettings(port=port), view, Topology(), None)
        with caplog.at_level(logging.ERROR, logger="health.server"):
            sidecar.start()
        assert sidecar.port is None
        assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
        sidecar.stop()


def test_only_process_0_of_a_cluster_listens(tmp_path):
    state = HealthState()
    view = HealthView(Expectations(()), Topology(1, 2), tmp_path, state)
    sidecar = Sidecar(HealthSettings(port=0), view, Topology(1, 2), tmp_path)
    sidecar.start()
    try:
        assert sidecar.port is None
        assert (tmp_path / "process-1.json").exists()  # it reports instead
    finally:
        sidecar.stop()
