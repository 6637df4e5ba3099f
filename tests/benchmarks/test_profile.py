"""The profile command's aggregation of py-spy's raw samples."""

from __future__ import annotations

from benchmarks.profile import aggregate, table

RAW = """\
main (a.py:1);run (b.py:2);parse (c.py:3) 6
main (a.py:1);run (b.py:2);apply (d.py:4) 3
main (a.py:1);run (b.py:2);parse (c.py:3);to_units (c.py:9) 1
garbage line
"""


def test_self_and_inclusive_shares_of_the_samples() -> None:
    total, own, inclusive = aggregate(RAW)
    assert total == 10
    assert own == {"parse (c.py:3)": 6, "apply (d.py:4)": 3, "to_units (c.py:9)": 1}
    assert inclusive["parse (c.py:3)"] == 7  # its own 6 plus the call it made
    assert inclusive["main (a.py:1)"] == 10


def test_table_lists_the_largest_shares_first() -> None:
    total, own, _ = aggregate(RAW)
    lines = table("self time", own, total, top=2).splitlines()
    assert lines[2] == "| `parse (c.py:3)` | 60.0% |"
    assert lines[3] == "| `apply (d.py:4)` | 30.0% |"
    assert len(lines) == 4
