"""Process helpers shared by the benchmarks."""

from __future__ import annotations

from pathlib import Path


def max_rss_kib(pid: int) -> int:
    """The largest resident set (KiB) among ``pid`` and its descendants, from /proc."""
    best, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    best = max(best, int(line.split()[1]))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue  # the process ended meanwhile
    return best
