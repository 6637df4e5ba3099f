"""Where the flow's time goes: ``python -m benchmarks.profile [--sink redis] [--updates N]``.

Runs the whole dataflow (``python -m bytewax.run flows.main``) over a seeded replay, as
``benchmarks.run`` does, under py-spy's sampling profiler (a dev dependency), then prints the
Python functions that took the largest share of the samples, by self time and inclusive of what
they call. Time spent inside bytewax's Rust runtime shows up as ``bytewax/run.py`` itself.
Start-up (imports, building the flow) is included: a larger ``--updates`` makes it smaller.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.run import ROOT, replay_config, write_recordings
from benchmarks.streams import generate


def aggregate(raw: str) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, self samples and inclusive samples per frame, from py-spy's raw output."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, own, inclusive


def table(title: str, counts: Counter[str], total: int, top: int) -> str:
    """A markdown table of the ``top`` frames by share of ``total`` samples."""
    lines = [f"| {title} | share |", "|---|---:|"]
    for frame, n in counts.most_common(top):
        lines.append(f"| `{frame.strip()[:110] or '(native)'}` | {100 * n / total:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Profile one replay run and print the tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--updates", type=int, default=15_000, help="per symbol")
    parser.add_argument("--sink", default="redis", choices=("jsonl", "shm", "redis"))
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    streams = [generate(f"SYM{i}USDT", args.updates, seed=7) for i in range(args.symbols)]
    with tempfile.TemporaryDirectory(prefix="md-profile-") as tmp:
        folder = Path(tmp)
        paths = write_recordings(streams, folder)
        config = folder / "profile.yaml"
        config.write_text(replay_config(paths, args.sink, folder, name="profile"))
        out = folder / "samples.txt"
        cmd = [py_spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(out), "--"]
        cmd += [sys.executable, "-m", "bytewax.run", "flows.main"]
        env = {**os.environ, "PIPELINES_FILE": str(config)}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            print(f"py-spy failed ({done.returncode}):\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        total, own, inclusive = aggregate(out.read_text())
    frames = sum(len(s.frames) for s in streams)
    print(f"{frames} depth frames, {args.symbols} symbols, sink {args.sink}: {total} samples\n")
    print(table("self time", own, total, args.top))
    print()
    print(table("inclusive time", inclusive, total, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
