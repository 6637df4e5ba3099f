"""The input edges under generated inputs: ``benchmarks.fuzz`` with a CI-sized budget.

The dedicated run is ``python -m benchmarks.fuzz --inputs 100000`` (figures in the README).
"""

from __future__ import annotations

import os
import struct

import pytest

from benchmarks.fuzz import fold, format_report, fuzz, run_config, targets
from sinks.shm import ShmReader
from sinks.shm_format import Layout, init_header

BUDGET = {"frame": 10_000, "snapshot": 1000, "config": 1000, "shm": 10_000, "recording": 10_000}


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_no_generated_input_crashes_and_every_rejection_has_a_reason(name: str) -> None:
    report = fuzz(targets()[name], BUDGET[name], seed=1)
    print(format_report(report))
    assert report.crashes == 0, format_report(report)
    assert report.inputs == BUDGET[name]
    assert report.accepted + report.rejected == report.inputs
    # The mutations reach both sides: valid inputs are still accepted, broken ones rejected,
    # each for a stated reason.
    assert report.accepted > 0 and report.rejected > report.inputs // 4
    assert all(reason.strip() for reason in report.reasons)
    assert len(report.reasons) >= 5


def test_fold_groups_reasons_by_their_fixed_text() -> None:
    assert fold("field 'U' must be an integer; got '12a'") == fold(
        "field 'u' must be an integer; got 'zz'"
    )
    assert fold("invalid JSON: unexpected end of data: line 1 column 17 (char 16)") == (
        "invalid JSON: unexpected end of data: line N column N (char N)"
    )


# -- regressions found by the fuzzer ---------------------------------------------------------------


def test_segment_claiming_a_pid_beyond_pid_t_reads_as_writer_gone() -> None:
    """A garbage header with writer pid 0xFFFFFFFF once made ``pid_alive`` raise OverflowError."""
    layout = Layout(4, 128)
    buf = bytearray(layout.total_size)
    view = memoryview(buf)
    init_header(view, layout, writer_pid=1, worker_index=0, worker_count=1)
    view.release()
    struct.pack_into("<I", buf, 32, 0xFFFFFFFF)  # writer_pid (see docs/shm-format.md)
    name = f"rel_fuzz_pid_{os.getpid()}"
    with open(f"/dev/shm/{name}", "wb") as fh:
        fh.write(buf)
    try:
        with ShmReader(name, start="first") as reader:
            assert reader.header().writer_pid == 0xFFFFFFFF
            assert reader.writer_gone()
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_config_errors_never_show_a_password_from_the_environment() -> None:
    """An error quoting a value that ``${REDIS_URL}`` filled in once printed its password."""
    text = (
        "pipelines:\n"
        "  - name: p\n"
        '    source: {type: "${REDIS_URL}", symbols: [BTCUSDT]}\n'
        "    operators: [{type: orderbook}]\n"
        '    sinks: [{type: redis, url: "${REDIS_URL}", mode: nope}]\n'
    )
    accepted, reason = run_config(text.encode())  # raises if the password shows
    assert not accepted and "redis://:***@127.0.0.1:6379/0" in reason


@pytest.mark.parametrize(
    "text", ["? [a]\n: 1\n", "{x: 1}: 2\n", "pipelines:\n  - {source: {type: x, [BTCUSDT]}}\n"]
)
def test_a_list_or_mapping_as_a_yaml_key_is_a_config_error(text: str) -> None:
    """The duplicate-key check once raised TypeError on an unhashable key, not a config error."""
    accepted, reason = run_config(text.encode())
    assert not accepted and "unhashable key" in reason
