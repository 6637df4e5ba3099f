"""``python -m market_data``: look at what the service publishes.

``book SYMBOL`` shows a live ladder of the symbol's top levels, its spread, last trades and
update rate in the terminal, read from shared memory (default: every ring on this host, or the
sink names given with ``--name``) or from Redis (``--source redis``). A banner says when the
book is stale, resyncing or awaiting its snapshot, or when the service is not running. Ctrl-C
quits. ``--once`` prints one picture as plain text and exits (0 if the book is live, 1 if not).

    python -m market_data book BTCUSDT
    python -m market_data book BTCUSDT --name market_data_demo
    python -m market_data book ETHUSDT --source redis --redis-url redis://127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Protocol

from market_data.bookview import LEVELS_SHOWN, BookView, Condition, render, render_text
from market_data.options import SYMBOL_RE


class Feed(Protocol):
    """What the loop needs of a feed (:mod:`sinks.feeds`)."""

    def poll(self, view: BookView) -> int:
        """Apply new records to the view."""
        ...

    def describe(self) -> str:
        """Where the records come from."""
        ...

    def close(self) -> None:
        """Release the source."""
        ...


def _symbol(value: str) -> str:
    symbol = value.upper()
    if not SYMBOL_RE.match(symbol):
        raise argparse.ArgumentTypeError(f"expected a symbol like BTCUSDT; got {value!r}")
    return symbol


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {value}")
    return number


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m market_data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("book", help="a live ladder of one symbol's book in the terminal")
    b.add_argument("symbol", type=_symbol, help="e.g. BTCUSDT")
    b.add_argument("--source", choices=("shm", "redis"), default="shm")
    b.add_argument(
        "--name",
        action="append",
        help="shm sink name (repeatable; default: every ring on this host)",
    )
    b.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),
        help="default: $REDIS_URL or redis://127.0.0.1:6379",
    )
    b.add_argument("--prefix", default="", help="the Redis sink's channel_prefix")
    b.add_argument("--levels", type=int, default=LEVELS_SHOWN, help="levels per side")
    b.add_argument("--refresh-hz", type=_positive, default=10.0, help="redraws per second")
    b.add_argument("--once", action="store_true", help="print one picture and exit")
    b.add_argument("--exit-after", type=_positive, help="exit after S seconds")
    b.set_defaults(func=book)
    return p


def make_feed(args: argparse.Namespace) -> Feed:
    """The feed the arguments ask for."""
    from sinks.feeds import RedisFeed, ShmFeed

    if args.source == "redis":
        return RedisFeed(args.symbol, args.redis_url, args.prefix)
    return ShmFeed(args.symbol, args.name)


def book(args: argparse.Namespace) -> int:
    """The ``book`` command."""
    feed = make_feed(args)
    view = BookView(args.symbol, feed.describe(), status_known=args.source == "shm")
    period = 1.0 / args.refresh_hz
    try:
        if args.once:
            return _once(feed, view, args.levels, args.exit_after or 5.0)
        return _live(feed, view, args.levels, period, args.exit_after)
    except KeyboardInterrupt:
        return 0
    finally:
        feed.close()


def _once(feed: Feed, view: BookView, levels: int, wait_s: float) -> int:
    """Wait up to ``wait_s`` for a live book, print one picture; 0 if it is live."""
    deadline = time.monotonic() + wait_s
    while True:
        feed.poll(view)
        head = view.headline(time.time())
        if head.trusted or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    sys.stdout.write(render_text(view, time.time(), levels))
    return 0 if head.condition is Condition.LIVE else 1


def _live(feed: Feed, view: BookView, levels: int, period: float, exit_after: float | None) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    deadline = None if exit_after is None else time.monotonic() + exit_after
    with Live(console=console, auto_refresh=False, screen=console.is_terminal) as live:
        while deadline is None or time.monotonic() < deadline:
            tick = time.monotonic() + period
            feed.poll(view)
            live.update(render(view, time.time(), levels), refresh=True)
            time.sleep(max(0.0, tick - time.monotonic()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m market_data``."""
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
