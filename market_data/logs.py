"""Logging set-up: one line per event, as ``key=value`` text or JSON."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from market_data.redact import redact

if TYPE_CHECKING:
    from market_data.config import LoggingSettings


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` (and ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as a JSON line."""
        obj = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(obj).decode()


TEXT_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s"


class RedactingFilter(logging.Filter):
    """Masks passwords in log messages (a Redis URL from the environment, say)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the message by its redacted text when it holds a credential."""
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def setup_logging(settings: LoggingSettings) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)


class Occurrences:
    """Which occurrences of a repeated problem to log: the 1st, 10th, 100th, ... of each key.

    A flood of malformed frames is then a handful of lines that still say how many there were;
    the metrics count every one.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._counts: dict[object, int] = {}

    def note(self, key: object) -> int | None:
        """Count one occurrence of ``key``; return the count when this one should be logged."""
        counts = self._counts
        n = counts.get(key, 0) + 1
        if n == 1 and len(counts) >= self.max_keys:
            counts.clear()  # bounded: a stream of ever-new keys must not grow memory
        counts[key] = n
        while n % 10 == 0:
            n //= 10
        return counts[key] if n == 1 else None
