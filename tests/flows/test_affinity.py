"""service.cpu_affinity: which CPUs each process is pinned to, and the pinning itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.affinity import apply_cpu_affinity, cpus_for
from market_data import ConfigError
from market_data.config import parse_config

REPO = Path(__file__).resolve().parents[2]

PIPELINE = """
pipelines:
  - name: p
    source: {type: replay, path: x.jsonl}
    operators: [{type: orderbook}]
    sinks: [{type: stdout}]
"""


@pytest.mark.parametrize(
    ("setting", "process_id", "cpus"),
    [
        (None, 0, None),
        ([2, 3], 0, {2, 3}),
        ([2, 3], 5, {2, 3}),  # one set for every process
        ([[0], [1, 2]], 0, {0}),
        ([[0], [1, 2]], 1, {1, 2}),
        ([[0], [1, 2]], 2, {0}),  # process i takes set i modulo their number
    ],
)
def test_cpus_for(setting, process_id, cpus):
    assert cpus_for(setting, process_id) == (None if cpus is None else frozenset(cpus))


def test_config_takes_a_set_or_a_set_per_process():
    one = parse_config("service: {cpu_affinity: [0, 1]}" + PIPELINE, "f")
    assert one.service.cpu_affinity == [0, 1]
    per = parse_config("service: {cpu_affinity: [[0], [1]]}" + PIPELINE, "f")
    assert per.service.cpu_affinity == [[0], [1]]
    with pytest.raises(ConfigError, match=r"service\.cpu_affinity"):
        parse_config("service: {cpu_affinity: [-1]}" + PIPELINE, "f")
    with pytest.raises(ConfigError, match=r"service\.cpu_affinity"):
        parse_config("service: {cpu_affinity: []}" + PIPELINE, "f")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pinning_applies_to_the_process_and_threads_started_later():
    cpu = min(os.sched_getaffinity(0))
    code = textwrap.dedent(
        f"""
        import os, threading
        from flows.affinity import apply_cpu_affinity
        apply_cpu_affinity([{cpu}], 0)
        seen = []
        t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        t.start(); t.join()
        print(sorted(os.sched_getaffinity(0)), sorted(seen[0]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == f"[{cpu}] [{cpu}]"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_an_unavailable_cpu_is_a_config_error_naming_it():
    missing = max(os.sched_getaffinity(0)) + 1000
    with pytest.raises(ConfigError, match=rf"cannot run on CPUs \[{missing}\]"):
        apply_cpu_affinity([missing], 0)
