"""market-data: exchange feeds to exact local order books, distributed to other programs."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("market-data")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


class MarketDataError(Exception):
    """Root of every exception this project raises on purpose."""


class ConfigError(MarketDataError):
    """The configuration is invalid; the message lists every problem found."""


class ParseError(MarketDataError):
    """A frame or a REST body could not be understood."""
