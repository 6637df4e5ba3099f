"""Where this process stands in a bytewax cluster, and how the processes of one host share health.

``python -m bytewax.run flows.main -i 1 -a "h:2101;h:2102"`` does not put the process id in the
environment, so :func:`detect` reads ``bytewax.run``'s own arguments from ``sys.argv`` and, like
``bytewax.run``, falls back to ``BYTEWAX_PROCESS_ID``, ``BYTEWAX_ADDRESSES``,
``BYTEWAX_WORKERS_PER_PROCESS``, ``BYTEWAX_POD_NAME``/``BYTEWAX_STATEFULSET_NAME`` and
``BYTEWAX_HOSTFILE_PATH``.

With several processes, every process writes into one shared directory (see ``docs/health.md``):

* its Prometheus samples, through prometheus-client's multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR``, which must be set before ``prometheus_client`` is imported, so
  :func:`prepare` runs before the dataflow's modules are imported), and
* its :meth:`~health.state.HealthState.snapshot` as ``process-<i>.json``, replaced atomically
  every :data:`REPORT_INTERVAL_S` by :class:`ReportWriter`.

Process 0 serves the HTTP port and merges them; a report older than :data:`STALE_AFTER_S` is a
process that is gone or frozen. Nothing here imports ``prometheus_client``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from market_data import MarketDataError
from market_data.config import HealthSettings

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REPORT_INTERVAL_S = 0.5
"""How often each process of a cluster rewrites its report file."""
STALE_AFTER_S = 3.0
"""A report not rewritten for this long belongs to a process that is gone or frozen."""


class HealthError(MarketDataError):
    """The health sidecar cannot be set up as configured."""


@dataclass(frozen=True)
class Topology:
    """A process's place in the bytewax cluster."""

    process_id: int = 0
    process_count: int = 1
    workers_per_process: int = 1
    addresses: tuple[str, ...] = ()

    @property
    def clustered(self) -> bool:
        """Several processes form the cluster."""
        return self.process_count > 1

    @property
    def worker_count(self) -> int:
        """Bytewax workers in the whole cluster: processes times workers per process."""
        return self.process_count * self.workers_per_process

    @property
    def processes_on_host(self) -> int:
        """Processes of the cluster on this process's host (they share the exchange's IP limits).

        Counted from the cluster's addresses: those that name the same host as this one's.
        """
        if not self.addresses or self.process_id >= len(self.addresses):
            return 1
        host = self.addresses[self.process_id].rpartition(":")[0]
        return max(1, sum(1 for a in self.addresses if a.rpartition(":")[0] == host))

    @property
    def serves(self) -> bool:
        """Whether the process serves the HTTP port (process 0 of a cluster, or the only one)."""
        return self.process_id == 0


def _bytewax_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """``bytewax.run``'s scaling arguments, if ``argv`` is a ``bytewax.run`` command line."""
    if len(argv) < 1 or Path(argv[0]).parts[-2:] != ("bytewax", "run.py"):
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("-w", "--workers-per-process", type=int)
    parser.add_argument("-i", "--process-id", type=int)
    parser.add_argument("-a", "--addresses")
    try:
        args, _ = parser.parse_known_args(list(argv[1:]))
    except SystemExit:  # bytewax.run has already accepted them; never stop the flow for this
        return None
    return args


def detect(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Topology:
    """The topology of this process, from ``bytewax.run``'s arguments and the environment."""
    argv = sys.argv if argv is None else argv
    env = os.environ if environ is None else environ
    args = _bytewax_args(argv)
    workers = getattr(args, "workers_per_process", None) or env.get("BYTEWAX_WORKERS_PER_PROCESS")
    process_id: Any = getattr(args, "process_id", None)
    if process_id is None:
        process_id = env.get("BYTEWAX_PROCESS_ID")
    if process_id is None and "BYTEWAX_POD_NAME" in env and "BYTEWAX_STATEFULSET_NAME" in env:
        process_id = env["BYTEWAX_POD_NAME"].replace(env["BYTEWAX_STATEFULSET_NAME"] + "-", "")
    addresses = getattr(args, "addresses", None) or env.get("BYTEWAX_ADDRESSES")
    if process_id is not None and addresses is None and "BYTEWAX_HOSTFILE_PATH" in env:
        with contextlib.suppress(OSError):
            lines = Path(env["BYTEWAX_HOSTFILE_PATH"]).read_text().splitlines()
            addresses = ";".join(line.strip() for line in lines if line.strip())
    try:
        pid = int(process_id) if process_id is not None else 0
        wpp = max(1, int(workers)) if workers else 1
    except ValueError:
        pid, wpp = 0, 1
    addrs = tuple(a for a in (addresses or "").split(";") if a) if process_id is not None else ()
    return Topology(pid, max(1, len(addrs)), wpp, addrs)


def shared_dir(
    settings: HealthSettings, topology: Topology, environ: Mapping[str, str] | None = None
) -> Path:
    """The directory the processes of a cluster share.

    ``service.health.shared_dir`` if set, else ``$PROMETHEUS_MULTIPROC_DIR``, else
    ``<tmp>/market-data-health-<hash of the cluster addresses>``: the same for every process
    of one cluster, different for two clusters on one host (their addresses cannot be the same).
    """
    env = os.environ if environ is None else environ
    if settings.shared_dir:
        return Path(settings.shared_dir)
    if env.get(MULTIPROC_ENV):
        return Path(env[MULTIPROC_ENV])
    digest = hashlib.sha256(";".join(topology.addresses).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"{_DEFAULT_PREFIX}{digest}"


_DEFAULT_PREFIX = "market-data-health-"


def _is_default(directory: Path) -> bool:
    """Whether ``directory`` is the derived default (which this service may remove)."""
    return directory.parent == Path(tempfile.gettempdir()) and directory.name.startswith(
        _DEFAULT_PREFIX
    )


def report_path(directory: Path, process_id: int) -> Path:
    """Where process ``process_id`` writes its report."""
    return directory / f"process-{process_id}.json"


def prepare(
    settings: HealthSettings,
    topology: Topology,
    environ: dict[str, str] | os._Environ[str] | None = None,
) -> Path | None:
    """Set up the shared directory of a cluster; call it before the dataflow's modules load.

    Returns the directory, or None when there is nothing to share (one process, or the sidecar
    disabled). Sets ``PROMETHEUS_MULTIPROC_DIR`` and removes the sample files that this
    process's predecessor (same process id, earlier run) left.
    """
    env = os.environ if environ is None else environ
    if not settings.enabled or not topology.clustered:
        return None
    directory = shared_dir(settings, topology, env)
    if _single_process_metrics():
        raise HealthError(
            f"process {topology.process_id} of {topology.process_count}: prometheus_client was "
            f"imported before {MULTIPROC_ENV} could be set, so other processes' metrics cannot "
            f"be merged; set {MULTIPROC_ENV}={directory} in the environment of every process"
        )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _forget_predecessor(directory, topology.process_id)
    except OSError as exc:
        raise HealthError(
            f"cannot use {directory} as the cluster's shared directory: {exc}"
        ) from exc
    env[MULTIPROC_ENV] = str(directory)
    logger.info(
        "health: process %d of %d shares metrics and readiness through %s",
        topology.process_id,
        topology.process_count,
        directory,
    )
    return directory


def _single_process_metrics() -> bool:
    """Whether prometheus_client is already imported, without multiprocess mode."""
    values = sys.modules.get("prometheus_client.values")
    return values is not None and not getattr(values.ValueClass, "_multiprocess", False)


def _forget_predecessor(directory: Path, process_id: int) -> None:
    """Remove the sample files of the process that had ``process_id`` in an earlier run."""
    old = read_report(report_path(directory, process_id))
    old_pid = old.get("pid") if old else None
    if isinstance(old_pid, int) and old_pid != os.getpid():
        for path in directory.glob(f"*_{old_pid}.db"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def read_report(path: Path) -> dict[str, Any] | None:
    """A report file's content, or None if it is missing or unreadable."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Replace ``path`` with ``report`` atomically (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(report))
    os.replace(tmp, path)


def read_reports(directory: Path, process_count: int) -> dict[int, dict[str, Any] | None]:
    """Every process's last report (None where there is none)."""
    return {i: read_report(report_path(directory, i)) for i in range(process_count)}


class ReportWriter:
    """Rewrites this process's report every :data:`REPORT_INTERVAL_S`, in a daemon thread.

    At a clean exit of the process it stops and removes its report and the process's sample
    files, and the default shared directory once it is empty (a crashed process's files are
    removed by its successor, see :func:`prepare`, and ignored meanwhile).
    """

    def __init__(
        self,
        path: Path,
        snapshot: Callable[[], dict[str, Any]],
        interval_s: float = REPORT_INTERVAL_S,
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    def start(self) -> None:
        """Write the first report now, then keep writing in the background."""
        self.write()
        self._thread = threading.Thread(target=self._run, name="health-report", daemon=True)
        self._thread.start()
        atexit.register(self.remove)

    def remove(self) -> None:
        """Stop, then remove this process's report and sample files (at exit)."""
        self.stop()
        directory, pid = self.path.parent, os.getpid()
        mine = read_report(self.path)
        paths = list(directory.glob(f"*_{pid}.db"))
        if mine is not None and mine.get("pid") == pid:  # not a successor's
            paths.append(self.path)
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if _is_default(directory):
            with contextlib.suppress(OSError):  # not empty: another process still runs
                directory.rmdir()

    def stop(self) -> None:
        """Stop writing (the last report stays, and goes stale)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * self._interval_s + 1)

    def write(self) -> None:
        """Write one report now; a failure is logged once, not raised."""
        try:
            write_report(self.path, self._snapshot())
            self._failed = False
        except OSError as exc:
            if not self._failed:
                logger.error("health: cannot write %s: %s", self.path, exc)
            self._failed = True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.write()


def fresh(report: dict[str, Any] | None, now: float, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether ``report`` was written recently enough to describe a live process."""
    if report is None:
        return False
    written = report.get("written_at")
    return isinstance(written, int | float) and now - written <= stale_after_s
