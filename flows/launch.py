"""Run a bytewax cluster of N local processes: ``python -m flows.launch -n 2 [-w 1] [-- ...]``.

``python -m bytewax.run`` 0.21 has ``-w`` (threads, which share one GIL) and ``-i``/``-a`` (one
process of a cluster) but no ``-p``; this starts process ``0..N-1`` of one cluster on
``127.0.0.1:<base-port + i>``, forwards Ctrl-C / SIGTERM to all of them, and exits with the first
non-zero status (stopping the others) or 0 when all end well. Each process runs the same
``flows.main`` with the same ``PIPELINES_FILE``; symbols' books are spread over all workers.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

STOP_GRACE_S = 10.0


def free_ports(n: int) -> list[int]:
    """``n`` currently free TCP ports on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def commands(
    processes: int, workers: int, ports: list[int], target: str, extra: list[str]
) -> list[list[str]]:
    """The ``bytewax.run`` command line of each process."""
    addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
    return [
        [sys.executable, "-m", "bytewax.run", target, "-i", str(i), "-a", addresses,
         "-w", str(workers), *extra]
        for i in range(processes)
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Start the cluster and wait for it."""
    parser = argparse.ArgumentParser(prog="python -m flows.launch", description=__doc__)
    parser.add_argument("-n", "--processes", type=int, default=2)
    parser.add_argument("-w", "--workers-per-process", type=int, default=1)
    parser.add_argument("--base-port", type=int, default=0, help="0: pick free ports")
    parser.add_argument("--target", default="flows.main")
    parser.add_argument("extra", nargs="*", help="more bytewax.run arguments (after --)")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.workers_per_process < 1:
        parser.error("--processes and --workers-per-process must be at least 1")
    ports = (
        [args.base_port + i for i in range(args.processes)]
        if args.base_port
        else free_ports(args.processes)
    )
    procs = [
        subprocess.Popen(cmd)
        for cmd in commands(
            args.processes, args.workers_per_process, ports, args.target, args.extra
        )
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    status = 0
    while any(p.poll() is None for p in procs):
        for p in procs:
            code = p.poll()
            if code not in (None, 0) and status == 0:
                status = code
                print(
                    f"flows.launch: a process exited with {code}; stopping the others",
                    file=sys.stderr,
                )
                forward(signal.SIGTERM, None)
                deadline = time.monotonic() + STOP_GRACE_S
                for q in procs:
                    try:
                        q.wait(max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        q.kill()
        time.sleep(0.1)
    for p in procs:
        if p.returncode not in (0, None) and status == 0:
            status = p.returncode
    return status


if __name__ == "__main__":
    raise SystemExit(main())
