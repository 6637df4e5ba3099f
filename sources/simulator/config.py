"""The simulator's settings, with Binance's real values as defaults where Binance has one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from market_data import ConfigError
from market_data.events import Market
from sources.simulator.faults import FaultConfig
from sources.simulator.market import SymbolSpec, default_spec

DAY_S = 86_400.0


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything a :class:`~sources.simulator.server.Simulator` needs; cheap to build and copy.

    ``None`` means "as Binance does for ``market``": USD-M Futures pings every 180 s and waits
    600 s for the pong, allows 10 incoming messages a second and 2400 request weight a minute;
    spot pings every 20 s, waits 60 s, allows 5 messages a second and 6000 weight a minute.
    """

    symbols: tuple[str, ...] = ("BTCUSDT",)
    market: Market = Market.FUTURES
    host: str = "127.0.0.1"
    ws_port: int = 0  # 0: any free port
    rest_port: int = 0
    seed: int = 1
    rate: float = 100.0
    """Book updates per second for each symbol not in ``rates``."""
    rates: Mapping[str, float] = field(default_factory=dict)
    specs: Mapping[str, SymbolSpec] = field(default_factory=dict)
    """Grid and starting price per symbol; :func:`~sources.simulator.market.default_spec` else."""
    levels: int = 1_000
    """Levels kept per side around the touch (at least 10)."""
    trade_probability: float = 0.05
    """Chance that an update carries a taker trade."""
    sweep_every_s: float | None = None
    """Every symbol, once in this many seconds of simulated ticks, has a sweep: a taker order that
    empties its best ``sweep_levels`` levels of one side (each symbol at its own tick of the
    period). With many ``levels`` it makes the touch wander far into the book. A sweep waits
    until the makers are done with the one before (a few dozen updates): with fewer updates
    than that between them (``rate`` times this), sweeps come less often. ``None``: off."""
    sweep_levels: int = 80
    """Levels a sweep takes (a side always keeps one level at least)."""
    tick_ms: int = 50
    """Generation step; every push interval (100, 250, 500, 1000 ms) must be a multiple of it."""
    depth_frame_per_update: bool = False
    """Push every update at once as its own depth frame (on each depth stream) instead of
    merging a stream's updates over its 100/250/500 ms interval as Binance does: a load-test
    mode in which ``rate`` is depth frames per second."""
    max_backlog: int | None = None
    """Load tests: while a client has more than this many frames queued, ticks generate
    nothing, so the pace follows the slowest client. ``None``: as Binance, a client that falls
    :data:`~sources.simulator.server.MAX_QUEUED_FRAMES` behind is dropped."""
    history_updates: int = 100_000
    """Updates per symbol that :meth:`Simulator.book_at` can go back to."""
    ping_interval_s: float | None = None
    pong_timeout_s: float | None = None
    max_lifetime_s: float = DAY_S
    max_streams: int = 1024
    max_messages_per_s: int | None = None
    weight_budget: int | None = None
    weight_window_s: float = 60.0
    ban_after_429: int = 3
    """Requests over the budget in one window before the client is banned (418)."""
    ban_s: float = 120.0
    legacy_delivers: bool = False
    """Deliver futures streams on the legacy ``/ws`` and ``/stream`` paths (Binance no longer
    does: those paths acknowledge subscriptions and send nothing)."""
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "market", Market(self.market))
        object.__setattr__(self, "symbols", tuple(s.upper() for s in self.symbols))
        errors = []
        if not self.symbols:
            errors.append("symbols: at least one symbol is needed")
        for name in ("rate", "max_lifetime_s", "weight_window_s", "ban_s", "sweep_levels"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}: must be positive; got {getattr(self, name)}")
        for sym, rate in self.rates.items():
            if sym.upper() not in self.symbols:
                errors.append(f"rates: {sym!r} is not one of the symbols {list(self.symbols)}")
            elif rate <= 0:
                errors.append(f"rates.{sym}: must be positive; got {rate}")
        if self.levels < 10:
            errors.append(f"levels: must be at least 10; got {self.levels}")
        if self.sweep_every_s is not None and self.sweep_every_s <= 0:
            errors.append(f"sweep_every_s: must be positive or None; got {self.sweep_every_s}")
        if self.tick_ms <= 0 or 100 % self.tick_ms:
            errors.append(f"tick_ms: must divide 100; got {self.tick_ms}")
        if self.max_backlog is not None and self.max_backlog < 1:
            errors.append(f"max_backlog: must be at least 1; got {self.max_backlog}")
        if not 0 <= self.trade_probability <= 1:
            errors.append(f"trade_probability: must be in [0, 1]; got {self.trade_probability}")
        if errors:
            raise ConfigError("invalid simulator config: " + "; ".join(errors))

    def rate_of(self, symbol: str) -> float:
        """Updates per second of ``symbol``."""
        upper = {k.upper(): v for k, v in self.rates.items()}
        return upper.get(symbol, self.rate)

    def sweep_every_ticks(self) -> int | None:
        """Ticks between two sweeps of a symbol (at least one); None when sweeps are off."""
        if self.sweep_every_s is None:
            return None
        return max(1, round(self.sweep_every_s * 1000 / self.tick_ms))

    def spec_of(self, symbol: str) -> SymbolSpec:
        """The grid of ``symbol``."""
        return self.specs.get(symbol) or default_spec(symbol)

    @property
    def futures(self) -> bool:
        """True for USD-M Futures, False for spot."""
        return self.market is Market.FUTURES

    def ping_interval(self) -> float:
        """Seconds between the server's pings."""
        if self.ping_interval_s is not None:
            return self.ping_interval_s
        return 180.0 if self.futures else 20.0

    def pong_timeout(self) -> float:
        """Seconds the server waits for a pong before dropping the connection."""
        if self.pong_timeout_s is not None:
            return self.pong_timeout_s
        return 600.0 if self.futures else 60.0

    def message_limit(self) -> int:
        """Incoming messages a second allowed per connection."""
        if self.max_messages_per_s is not None:
            return self.max_messages_per_s
        return 10 if self.futures else 5

    def weight_limit(self) -> int:
        """REST request weight allowed per window."""
        if self.weight_budget is not None:
            return self.weight_budget
        return 2400 if self.futures else 6000
