"""How a process learns its place in a bytewax cluster, and the shared directory's files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from health.cluster import (
    MULTIPROC_ENV,
    HealthError,
    ReportWriter,
    Topology,
    detect,
    fresh,
    prepare,
    read_report,
    read_reports,
    report_path,
    shared_dir,
)
from market_data.config import HealthSettings

RUN = "/venv/lib/python3.11/site-packages/bytewax/run.py"
ADDRS = "127.0.0.1:2101;127.0.0.1:2102"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([RUN, "flows.main"], {}, Topology()),
        ([RUN, "flows.main", "-w", "2"], {}, Topology(0, 1, 2)),
        ([RUN, "flows.main", "-w2"], {}, Topology(0, 1, 2)),
        (
            [RUN, "flows.main", "-i", "1", "-a", ADDRS],
            {},
            Topology(1, 2, 1, ("127.0.0.1:2101", "127.0.0.1:2102")),
        ),
        (
            [RUN, "flows.main", "--process-id=0", f"--addresses={ADDRS}", "-s", "5"],
            {},
            Topology(0, 2, 1, ("127.0.0.1:2101", "127.0.0.1:2102")),
        ),
        # bytewax.run reads the same variables when the flags are absent
        (
            [RUN, "flows.main"],
            {"BYTEWAX_PROCESS_ID": "1", "BYTEWAX_ADDRESSES": ADDRS},
            Topology(1, 2, 1, ("127.0.0.1:2101", "127.0.0.1:2102")),
        ),
        (
            [RUN, "flows.main", "-i", "0"],
            {"BYTEWAX_PROCESS_ID": "1", "BYTEWAX_ADDRESSES": ADDRS},
            Topology(0, 2, 1, ("127.0.0.1:2101", "127.0.0.1:2102")),
        ),
        (
            [RUN, "flows.main"],
            {
                "BYTEWAX_POD_NAME": "md-1",
                "BYTEWAX_STATEFULSET_NAME": "md",
                "BYTEWAX_ADDRESSES": ADDRS,
            },
            Topology(1, 2, 1, ("127.0.0.1:2101", "127.0.0.1:2102")),
        ),
        # another program's flags are not bytewax.run's
        (["pytest", "-i", "1", "-a", ADDRS], {}, Topology()),
        # addresses without a process id: bytewax runs one process
        ([RUN, "flows.main"], {"BYTEWAX_ADDRESSES": ADDRS}, Topology()),
    ],
)
def test_detect(argv, env, expected):
    assert detect(argv, env) == expected


def test_detect_reads_bytewax_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a:1\n\nb:1\nc:1\n")
    env = {"BYTEWAX_PROCESS_ID": "2", "BYTEWAX_HOSTFILE_PATH": str(hostfile)}
    assert detect(["x"], env) == Topology(2, 3, 1, ("a:1", "b:1", "c:1"))


def test_shared_dir_rule(tmp_path):
    two = Topology(0, 2, 1, ("h:1", "h:2"))
    other = Topology(0, 2, 1, ("h:3", "h:4"))
    default = shared_dir(HealthSettings(), two, {})
    assert default.name.startswith("market-data-health-")
    assert shared_dir(HealthSettings(), Topology(1, 2, 1, ("h:1", "h:2")), {}) == default
    assert shared_dir(HealthSettings(), other, {}) != default
    assert shared_dir(HealthSettings(), two, {MULTIPROC_ENV: "/x"}) == Path("/x")
    configured = HealthSettings(shared_dir=str(tmp_path))
    assert shared_dir(configured, two, {MULTIPROC_ENV: "/x"}) == tmp_path


def test_prepare_does_nothing_for_one_process_or_when_disabled(tmp_path):
    env: dict[str, str] = {}
    assert prepare(HealthSettings(shared_dir=str(tmp_path)), Topology(), env) is None
    disabled = HealthSettings(enabled=False, shared_dir=str(tmp_path))
    assert prepare(disabled, Topology(0, 2, 1, ("a", "b")), env) is None
    assert env == {}


def test_prepare_refuses_once_prometheus_client_chose_single_process_mode(tmp_path):
    import prometheus_client  # noqa: F401  (this test process has it, without multiprocess)

    env: dict[str, str] = {}
    with pytest.raises(HealthError, match=MULTIPROC_ENV):
        prepare(HealthSettings(shared_dir=str(tmp_path)), Topology(1, 2, 1, ("a", "b")), env)


def test_prepare_removes_only_its_predecessors_sample_files(tmp_path, monkeypatch):
    import health.cluster as cluster

    # as in a fresh process, before prometheus_client is imported
    monkeypatch.setattr(cluster, "_single_process_metrics", lambda: False)
    report_path(tmp_path, 1).write_text('{"pid": 999999991, "written_at": 0}')
    report_path(tmp_path, 0).write_text('{"pid": 999999990, "written_at": 0}')
    for name in ("counter_999999991.db", "histogram_999999991.db", "counter_999999990.db"):
        (tmp_path / name).write_bytes(b"")
    env: dict[str, str] = {}
    got = prepare(HealthSettings(shared_dir=str(tmp_path)), Topology(1, 2, 1, ("a", "b")), env)
    assert got == tmp_path
    assert env == {MULTIPROC_ENV: str(tmp_path)}
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_999999990.db"]


def test_reports_are_replaced_atomically_and_go_stale(tmp_path):
    n = 0

    def snapshot() -> dict:
        nonlocal n
        n += 1
        return {"pid": os.getpid(), "written_at": time.time(), "n": n}

    writer = ReportWriter(report_path(tmp_path, 0), snapshot, interval_s=0.05)
    writer.start()
    try:
        deadline = time.monotonic() + 5
        while (read_report(report_path(tmp_path, 0)) or {}).get("n", 0) < 3:
            assert time.monotonic() < deadline, "the writer did not rewrite its report"
            time.sleep(0.02)
    finally:
        writer.stop()
    assert not list(tmp_path.glob(".*.tmp"))  # no leftovers
    reports = read_reports(tmp_path, 2)
    assert reports[1] is None
    assert fresh(reports[0], time.time())
    assert not fresh(reports[0], time.time() + 10)
    (tmp_path / "process-1.json").write_text("{half a file")
    assert read_reports(tmp_path, 2)[1] is None


def test_at_exit_a_process_removes_its_own_files_and_the_empty_default_dir(tmp_path):
    import tempfile
    import uuid

    own, other = os.getpid(), 999999993
    default = Path(tempfile.gettempdir()) / f"market-data-health-test{uuid.uuid4().hex[:8]}"
    for directory in (tmp_path, default):
        directory.mkdir(exist_ok=True)
        (directory / f"counter_{own}.db").write_bytes(b"")
        (directory / f"histogram_{other}.db").write_bytes(b"")
        writer = ReportWriter(report_path(directory, 0), lambda: {"pid": own, "written_at": 0})
        writer.start()
        writer.remove()
        assert sorted(p.name for p in directory.iterdir()) == [f"histogram_{other}.db"]
    (default / f"histogram_{other}.db").unlink()
    writer = ReportWriter(report_path(default, 0), lambda: {"pid": own, "written_at": 0})
    writer.start()
    writer.remove()
    assert not default.exists()  # the derived default goes once empty
    assert tmp_path.exists()  # a configured directory stays
