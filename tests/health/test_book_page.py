"""The sidecar's /book page: its data from the service's rings, its event stream, and a real render
in headless Chromium against the whole service running on the exchange simulator."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import websocket
from flask import Flask

from health.book_page import blueprint
from market_data.events import SCALE
from sinks.shm import ShmWriter, segment_name
from sinks.shm_format import RecordType
from tests.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs POSIX shared memory")


def book(u: int, symbol: str = "BTCUSDT") -> bytes:
    return orjson.dumps(
        {
            "symbol": symbol,
            "bids": [[50000.0 - i / 10, 1.0 + i] for i in range(15)],
            "asks": [[50000.1 + i / 10, 0.5 + i] for i in range(15)],
            "last_update_id": u,
            "timestamp": int(time.time() * 1000),  # just now: not behind the exchange
        }
    )


@dataclass
class Merged:
    reports: dict[int, dict[str, Any]]
    books: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


class FakeView:
    """The part of the health view the page uses: which processes and symbols it reports."""

    def __init__(self, pids: set[int], symbols: list[str]) -> None:
        self.pids = pids
        self.symbols = symbols

    def merged(self) -> Merged:
        return Merged(
            {i: {"pid": pid} for i, pid in enumerate(self.pids)},
            {("p", s): {} for s in self.symbols},
        )


@pytest.fixture
def ring() -> Iterator[tuple[str, ShmWriter]]:
    name = f"test_page_{uuid.uuid4().hex[:8]}"
    writer = ShmWriter.create(segment_name(name, 0), 64, 2048)
    yield name, writer
    writer.close()


def app_for(view: FakeView, **kwargs: Any) -> Flask:
    app = Flask("test")
    app.register_blueprint(blueprint(lambda: view, poll_s=0.01, **kwargs))
    return app


def test_snapshot_shows_this_services_book_and_names_its_ring(ring):
    name, writer = ring
    writer.write(RecordType.BOOK, "BTCUSDT", book(5))
    client = app_for(FakeView({os.getpid()}, ["BTCUSDT"])).test_client()
    data = client.get(f"/book/btcusdt/snapshot?name={name}").get_json()
    assert data["condition"] == "live"
    assert data["source"] == f"shm {name}.w0"
    assert data["book"]["last_update_id"] == 5
    assert data["book"]["bids"][0] == [50000.0, 1.0]
    assert len(data["book"]["asks"]) == 10


def test_rings_of_other_processes_are_not_shown(ring):
    name, writer = ring
    writer.write(RecordType.BOOK, "BTCUSDT", book(5))
    client = app_for(FakeView({os.getpid() + 10_000_000}, [])).test_client()
    data = client.get(f"/book/BTCUSDT/snapshot?name={name}").get_json()
    assert data["condition"] == "down"
    assert data["book"] is None


def test_page_index_and_bad_input():
    client = app_for(FakeView({os.getpid()}, ["ETHUSDT", "BTCUSDT"])).test_client()
    page = client.get("/book/BTCUSDT")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "<title>BTCUSDT book" in page.get_data(as_text=True)
    index = client.get("/book/").get_data(as_text=True)
    assert index.index('href="/book/BTCUSDT"') < index.index('href="/book/ETHUSDT"')
    assert client.get("/book/BTC-USDT").status_code == 404
    assert client.get("/book/BTCUSDT/snapshot?name=../etc").status_code == 404


def events_of(chunks: Iterator[bytes], count: int) -> list[dict[str, Any]]:
    """The first ``count`` ``book`` events of an event stream."""
    out, text = [], ""
    for chunk in chunks:
        text += chunk.decode()
        while "\n\n" in text:
            block, text = text.split("\n\n", 1)
            if block.startswith("event: book\n"):
                out.append(orjson.loads(block.split("data: ", 1)[1]))
                if len(out) == count:
                    return out
    return out


def test_event_stream_follows_the_ring_and_frees_its_slot(ring):
    name, writer = ring
    writer.write(RecordType.BOOK, "BTCUSDT", book(1))
    client = app_for(FakeView({os.getpid()}, ["BTCUSDT"]), max_streams=1).test_client()
    resp = client.get(f"/book/BTCUSDT/events?name={name}", buffered=False)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    chunks = resp.iter_encoded()
    (first,) = events_of(chunks, 1)
    assert first["book"]["last_update_id"] == 1
    assert client.get("/book/BTCUSDT/events").status_code == 503  # the one slot is taken
    writer.write(RecordType.BOOK, "BTCUSDT", book(2))
    writer.write(RecordType.STATUS, "BTCUSDT", b'{"symbol":"BTCUSDT","state":"resyncing"}')
    (second,) = events_of(chunks, 1)
    assert second["book"]["last_update_id"] == 2
    assert second["condition"] == "resyncing"
    resp.close()  # the client went away
    again = client.get(f"/book/BTCUSDT/events?name={name}", buffered=False)
    assert again.status_code == 200
    again.close()


# -- the whole service in a browser -------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[int, Any, str]]:
    """``python -m bytewax.run flows.main`` on the simulator; yields (health port, simulator)."""
    from sources.simulator.config import SimulatorConfig
    from sources.simulator.server import Simulator

    port = free_port()
    name = f"test_page_flow_{uuid.uuid4().hex[:8]}"
    with Simulator(SimulatorConfig(symbols=("BTCUSDT",), rate=20.0)) as sim:
        config = Path(tempfile.mkdtemp()) / "pipelines.yaml"
        config.write_text(
            textwrap.dedent(
                f"""\
                service:
                  health: {{host: 127.0.0.1, port: {port}}}
                pipelines:
                  - name: page
                    source:
                      type: binance_futures
                      symbols: [BTCUSDT]
                      ws_url: {sim.ws_url}
                      rest_url: {sim.rest_url}
                      run_for_s: 60
                    operators: [{{type: orderbook, depth: 20}}]
                    sinks: [{{type: shm, name: {name}, slots: 4096, slot_size: 2048}}]
                """
            )
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "flows.main"],
            cwd=REPO,
            env={**os.environ, "PIPELINES_FILE": str(config)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                try:
                    snap = orjson.loads(get(port, "/book/BTCUSDT/snapshot"))
                    if snap["condition"] == "live":
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the service did not sync BTCUSDT in 30 s"
                time.sleep(0.2)
            yield port, sim, name
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return bytes(resp.read())


class Browser:
    """Headless Chromium driven over the DevTools protocol (websocket-client, already a dependency).

    Unlike ``--dump-dom``, this waits in real time for what the page shows after its event stream
    has delivered, and reads the DOM in one consistent step.
    """

    def __init__(self, profile: Path) -> None:
        self._log = open(profile / "chromium.log", "w+")
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "--window-size=1200,800",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self._id = 0
        port = self._devtools_port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            pages = [t for t in orjson.loads(resp.read()) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=20)

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "chromium exited"
            self._log.seek(0)
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", self._log.read())
            if found:
                return int(found.group(1))
            time.sleep(0.05)
        raise AssertionError("chromium did not open its DevTools port in 20 s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(orjson.dumps({"id": self._id, "method": method, "params": params}).decode())
        while True:
            msg = orjson.loads(self.ws.recv())
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return dict(msg["result"])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"still false after {timeout_s} s: {expression}"
            time.sleep(0.1)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium package")
    b = Browser(tmp_path)
    yield b
    b.close()


# What the page shows, read in one step (the page redraws between two of our calls).
SHOWN = """(() => {
  const cells = (tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent);
  const facts = document.getElementById("facts").textContent;
  return {
    badge: document.getElementById("badge").textContent,
    pictures: Number(document.body.dataset.pictures || 0),
    u: Number((facts.match(/u=(\\d+)/) || [0, 0])[1]),
    asks: [...document.querySelectorAll("tr.ask")].map(cells),
    bids: [...document.querySelectorAll("tr.bid")].map(cells),
    spread: cells(document.querySelector("tr.spread") || document.createElement("tr")),
    bidArea: document.getElementById("bid-area").getAttribute("d"),
    askArea: document.getElementById("ask-area").getAttribute("d"),
  };
})()"""


def test_browser_shows_the_exact_book_and_updates_it_live(service, browser):
    port, sim, _ = service
    browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/book/BTCUSDT")
    # the snapshot, then at least two pictures pushed over the event stream
    browser.wait_for(
        'location.pathname === "/book/BTCUSDT" && document.readyState === "complete" '
        "&& Number(document.body.dataset.pictures || 0) >= 3"
    )
    shown = browser.evaluate(SHOWN)
    assert shown["badge"] == "live"
    assert len(shown["asks"]) == len(shown["bids"]) == 10
    # Exactly the exchange's book at the update id the page shows; asks highest first.
    truth = sim.book_at("BTCUSDT", shown["u"], depth=10)
    assert [(float(p), float(q)) for _, p, q in shown["asks"]] == [
        (p / SCALE, q / SCALE) for p, q in reversed(truth.asks)
    ]
    assert [(float(p), float(q)) for q, p, _ in shown["bids"]] == [
        (p / SCALE, q / SCALE) for p, q in truth.bids
    ]
    assert float(shown["spread"][1]) == pytest.approx((truth.asks[0][0] - truth.bids[0][0]) / SCALE)
    for area in ("bidArea", "askArea"):  # the depth chart draws both sides, a step per level
        assert shown[area].count("L") >= 20, shown[area]
    # It keeps updating: a later update id, still exactly the exchange's book.
    browser.wait_for(f"{SHOWN}.u > {shown['u']}")
    later = browser.evaluate(SHOWN)
    truth = sim.book_at("BTCUSDT", later["u"], depth=10)
    assert [float(p) for q, p, _ in later["bids"]] == [p / SCALE for p, _ in truth.bids]
    png = browser.screenshot()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("BOOK_SCREENSHOT")
    if keep:  # to look at it: BOOK_SCREENSHOT=/tmp/book.png pytest tests/health/test_book_page.py
        Path(keep).write_bytes(png)
