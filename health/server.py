"""The health sidecar: a Flask app with ``/health``, ``/ready`` and ``/metrics``, in a thread.

:func:`start` runs once per process, when the dataflow is built (``flows.main.build_flow``): it
binds ``service.health.host``/``port`` and serves from a daemon thread. In a cluster of several
processes only process 0 listens; every process writes its report and its metric samples into
the shared directory (:mod:`health.cluster`) and process 0 merges them. See ``docs/health.md``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from health import book_page, report
from health.cluster import STALE_AFTER_S, ReportWriter, Topology, read_reports, report_path
from health.metrics import state_families
from health.state import STATE, HealthState, PipelineScope
from market_data.config import AppConfig, HealthSettings

logger = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format that ``generate_latest`` writes (and every Prometheus version reads)."""


class HealthView:
    """Gathers the reports of every process and answers the three endpoints."""

    def __init__(
        self,
        expect: report.Expectations,
        topology: Topology,
        directory: Path | None,
        state: HealthState = STATE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.expect = expect
        self.topology = topology
        self.directory = directory
        self.state = state
        self.clock = clock
        self.started_at = clock()

    def merged(self) -> report.Merged:
        """The current reports of every process, merged."""
        own = self.state.snapshot()
        if self.directory is None:
            reports: dict[int, dict[str, Any] | None] = {self.topology.process_id: own}
        else:
            reports = read_reports(self.directory, self.topology.process_count)
            reports[self.topology.process_id] = own  # fresher than its file
        return report.merge(reports, self.clock(), self.expect.stale_after_s)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """The ``/health`` verdict and body."""
        return report.health(self.expect, self.merged(), self.started_at)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """The ``/ready`` verdict and body."""
        return report.ready(self.expect, self.merged())

    def metrics(self) -> bytes:
        """The Prometheus text exposition of every process's metrics."""
        merged = self.merged()
        ok, _ = report.ready(self.expect, merged)
        extra = _registry(state_families(self.expect, merged, ok))
        if self.directory is None:
            return generate_latest(REGISTRY) + generate_latest(extra)
        pids = {r.get("pid") for r in merged.reports.values()}
        files = [
            str(f) for f in sorted(self.directory.glob("*.db")) if _pid_of(f) in pids
        ]  # only live processes: files of earlier runs and dead processes are left out
        samples = MultiProcessCollector.merge(files, accumulate=True)
        return generate_latest(_registry(samples)) + generate_latest(extra)


def _pid_of(path: Path) -> int | None:
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


class _Fixed:
    """A collector that yields the families it was given (for one scrape)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def _registry(families: Iterable[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return registry


def _json(body: dict[str, Any], ok: bool) -> Response:
    return Response(orjson.dumps(body), status=200 if ok else 503, mimetype="application/json")


def create_app(view: Callable[[], HealthView]) -> Flask:
    """The Flask app; ``view`` returns the current :class:`HealthView` (it can be swapped)."""
    app = Flask("market_data.health")

    @app.get("/health")
    def health() -> Response:
        ok, body = view().health()
        return _json(body, ok)

    @app.get("/ready")
    def ready() -> Response:
        ok, body = view().ready()
        return _json(body, ok)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(view().metrics(), content_type=METRICS_CONTENT_TYPE)

    app.register_blueprint(book_page.blueprint(view))  # /book/<SYMBOL>: docs/consuming.md
    return app


class _QuietHandler(WSGIRequestHandler):
    """Probes come every few seconds: log requests at DEBUG, not one INFO line each."""

    def log(self, type: str, message: str, *args: Any) -> None:
        level = logging.DEBUG if type == "info" else logging.WARNING
        logger.log(level, "%s %s", self.address_string(), message % args)


class Sidecar:
    """The HTTP server (process 0 only) and the report writer (clusters only) of one process."""

    def __init__(
        self,
        settings: HealthSettings,
        view: HealthView,
        topology: Topology,
        directory: Path | None,
    ) -> None:
        self.settings = settings
        self.view = view
        self.topology = topology
        self.directory = directory
        self.port: int | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._writer: ReportWriter | None = None

    def start(self) -> None:
        """Start writing reports (clusters) and serving (process 0); a taken port is logged."""
        if self.directory is not None:
            self._writer = ReportWriter(
                report_path(self.directory, self.topology.process_id), self.view.state.snapshot
            )
            self._writer.start()
        if self.topology.serves:
            self._serve()

    def _serve(self) -> None:
        host, port = self.settings.host, self.settings.port
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            # The books do not depend on the sidecar: keep them flowing, say so loudly.
            logger.error(
                "health: cannot listen on %s:%d (%s); /health, /ready and /metrics are not served",
                host,
                port,
                exc,
            )
            return
        try:
            app = create_app(lambda: self.view)
            self._server = make_server(
                host, port, app, threaded=True, request_handler=_QuietHandler, fd=sock.fileno()
            )
        finally:
            sock.close()  # the server holds its own duplicate of the socket
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )
        self._thread.start()
        logger.info(
            "health: serving /health, /ready and /metrics on http://%s:%d%s",
            host,
            self.port,
            f" for {self.topology.process_count} processes" if self.topology.clustered else "",
        )

    def stop(self) -> None:
        """Stop serving and writing reports."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._writer is not None:
            self._writer.stop()
            self._writer = None

    def serves_as(
        self, settings: HealthSettings, topology: Topology, directory: Path | None
    ) -> bool:
        """Whether this sidecar already serves what ``settings`` etc. ask for."""
        return (settings.host, settings.port, topology, directory) == (
            self.settings.host,
            self.settings.port,
            self.topology,
            self.directory,
        )


_lock = threading.Lock()
_current: Sidecar | None = None


def scopes(config: AppConfig) -> list[PipelineScope]:
    """How the pipelines of ``config`` report to :data:`health.state.STATE`."""
    return [
        PipelineScope(
            p.name,
            p.step_prefix,
            p.source.type,
            tuple(getattr(p.source, "symbols", None) or ()),
        )
        for p in config.pipelines
    ]


def start(config: AppConfig, topology: Topology, directory: Path | None) -> Sidecar | None:
    """Start this process's sidecar for ``config`` (once: later calls reconfigure it).

    ``directory`` is what :func:`health.cluster.prepare` returned. Returns None when
    ``service.health.enabled`` is false.
    """
    global _current
    settings = config.service.health
    # No `*_created` series: multiprocess mode has none, so both modes expose the same names.
    disable_created_metrics()
    with _lock:
        STATE.configure(
            scopes(config),
            process_id=topology.process_id,
            workers=topology.workers_per_process,
            processes=topology.process_count,
        )
        if not settings.enabled:
            if _current is not None:
                _current.stop()
                _current = None
            return None
        view = HealthView(
            report.Expectations.from_config(config, topology.process_count, STALE_AFTER_S),
            topology,
            directory,
        )
        if _current is not None and _current.serves_as(settings, topology, directory):
            _current.view = view
            return _current
        if _current is not None:
            _current.stop()
        _current = Sidecar(settings, view, topology, directory)
        _current.start()
        return _current


def stop() -> None:
    """Stop this process's sidecar, if any (tests; the process's end stops it anyway)."""
    global _current
    with _lock:
        if _current is not None:
            _current.stop()
            _current = None
