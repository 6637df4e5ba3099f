"""A process-wide request to stop the dataflow gracefully, set by SIGINT / SIGTERM.

bytewax 0.21 has no shutdown hook: SIGTERM kills the process without closing anything, and SIGINT
raises ``KeyboardInterrupt`` wherever the main thread happens to be (possibly in a sink, half-way
through a write). Instead, :func:`install_signal_handlers` makes the first SIGINT or SIGTERM only
set a flag; every source checks :func:`stop_requested` at the top of ``next_batch`` and ends its
partition by raising ``StopIteration``, so the flow ends the normal way: bytewax closes every
sink (the Redis sink delivers what it holds, the shm sink unlinks its segments) and the process
exits with status 0. A second signal while stopping restores the default behaviour and re-raises
it, for an operator who cannot wait.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

logger = logging.getLogger(__name__)

_stop = threading.Event()
_reason = ""


def request_stop(reason: str) -> None:
    """Ask every source of this process to end its partitions."""
    global _reason
    if not _stop.is_set():
        _reason = reason
        _stop.set()


def stop_requested() -> bool:
    """True once a stop was requested (cheap: checked by every ``next_batch``)."""
    return _stop.is_set()


def stop_reason() -> str:
    """Why the stop was requested ("" if it was not)."""
    return _reason


def reset() -> None:
    """Forget a stop request (for a process that runs several flows one after another)."""
    global _reason
    _stop.clear()
    _reason = ""


def _handle(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if not _stop.is_set():
        request_stop(name)
        logger.warning(
            "%s received: stopping the sources, flushing and closing the sinks "
            "(send it again to stop at once)",
            name,
        )
        return
    logger.warning("%s received again: stopping at once", name)
    signal.signal(signum, signal.SIG_DFL)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    os.kill(os.getpid(), signum)


def install_signal_handlers(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> bool:
    """Make SIGINT and SIGTERM request a graceful stop; False if not on the main thread.

    Python runs signal handlers on the main thread only, and only the main thread may install
    them; a flow built elsewhere (a test, an embedding program) keeps the default handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in signums:
        signal.signal(signum, _handle)
    return True
