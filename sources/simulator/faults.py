"""Fault injection for the simulator: what can go wrong, how often, and the decision per frame.

Pure: the policy draws from a ``random.Random`` it is given (seeded per connection by the server,
so a run is reproducible) and returns what to do; the server does it. Everything is off by
default. Rates are probabilities per data frame sent on one connection (stream faults) or per
snapshot request (REST faults).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace
from enum import StrEnum

from market_data import ConfigError


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """How often each fault happens. Zero everywhere (the default) is a well-behaved exchange."""

    gap: float = 0.0
    """Depth frame not sent while update ids advance: the next frame's ``pu`` (futures) or ``U``
    (spot) no longer follows the last one the client saw."""
    disconnect: float = 0.0
    """The TCP connection is aborted instead of sending a frame (no close frame)."""
    duplicate: float = 0.0
    """A frame is sent twice in a row."""
    malformed: float = 0.0
    """An extra frame that is not valid JSON (a truncated copy of the real one, or garbage) is sent
    before the real frame, which still follows intact."""
    unknown_event: float = 0.0
    """An extra, well-formed frame of an event type Binance does not document is sent first."""
    snapshot_delay_s: float = 0.0
    """Every REST depth snapshot is answered this many seconds late."""
    snapshot_429: float = 0.0
    """A REST depth snapshot is refused with 429 and ``Retry-After: 1`` (no weight is used)."""
    snapshot_lag: int = 0
    """REST depth snapshots show the book as of this many updates ago, not the latest."""
    agg_trades_delay_s: float = 0.0
    """Every REST aggTrades page is answered this many seconds late (taken when asked)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in RATE_NAMES and not 0.0 <= value <= 1.0:
                raise ConfigError(f"fault {f.name!r} must be a probability in [0, 1]; got {value}")
            if value < 0:
                raise ConfigError(f"fault {f.name!r} must not be negative; got {value}")

    def with_(self, **changes: float) -> FaultConfig:
        """A copy with some faults changed (names as in :func:`parse_faults`)."""
        return replace(self, **{_canonical(k): v for k, v in changes.items()})  # type: ignore[arg-type]


RATE_NAMES = frozenset(
    {"gap", "disconnect", "duplicate", "malformed", "unknown_event", "snapshot_429"}
)
_ALIASES = {
    "gaps": "gap",
    "unknown": "unknown_event",
    "dup": "duplicate",
    "429": "snapshot_429",
    "snapshot_delay": "snapshot_delay_s",
    "agg_trades_delay": "agg_trades_delay_s",
}


def _canonical(name: str) -> str:
    name = name.strip().replace("-", "_")
    name = _ALIASES.get(name, name)
    if name not in {f.name for f in fields(FaultConfig)}:
        known = ", ".join(sorted(f.name for f in fields(FaultConfig)))
        raise ConfigError(f"unknown fault {name!r}; expected one of: {known}")
    return name


def parse_faults(text: str) -> FaultConfig:
    """Parse ``"gaps=0.01,disconnect=0.001,snapshot_lag=50"`` (the CLI's ``--faults``)."""
    values: dict[str, float | int] = {}
    errors = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = item.partition("=")
        if not sep:
            errors.append(f"expected name=value; got {item!r}")
            continue
        try:
            key = _canonical(name)
            values[key] = int(raw) if key == "snapshot_lag" else float(raw)
        except ConfigError as exc:
            errors.append(str(exc))
        except ValueError:
            errors.append(f"fault {name.strip()!r}: expected a number; got {raw!r}")
    if errors:
        raise ConfigError("invalid --faults: " + "; ".join(errors))
    return FaultConfig(**values)  # type: ignore[arg-type]


class Malformed(StrEnum):
    """The two kinds of broken frame."""

    TRUNCATED = "truncated"
    GARBAGE = "garbage"


@dataclass(frozen=True, slots=True)
class FrameAction:
    """What to do with one data frame on one connection."""

    drop: bool = False
    disconnect: bool = False
    duplicate: bool = False
    malformed: Malformed | None = None
    unknown_event: bool = False


SEND = FrameAction()


def frame_action(config: FaultConfig, rng: random.Random, depth: bool) -> FrameAction:
    """Decide the fate of one frame; ``depth`` frames are the only ones that can be dropped.

    Draws the same number of random numbers whatever the configuration, so switching one fault on
    does not reshuffle the decisions of the others.
    """
    draws = [rng.random() for _ in range(6)]
    if draws[0] < config.disconnect:
        return FrameAction(disconnect=True)
    if depth and draws[1] < config.gap:
        return FrameAction(drop=True)
    malformed = None
    if draws[2] < config.malformed:
        malformed = Malformed.TRUNCATED if draws[5] < 0.5 else Malformed.GARBAGE
    action = FrameAction(
        duplicate=draws[3] < config.duplicate,
        malformed=malformed,
        unknown_event=draws[4] < config.unknown_event,
    )
    return SEND if action == SEND else action


def break_frame(text: str, kind: Malformed) -> str:
    """A broken version of ``text`` that no JSON parser accepts."""
    if kind is Malformed.TRUNCATED:
        return text[: max(1, len(text) // 2)]
    return "{" + text[1:].replace('"', "'", 3)


def snapshot_refused(config: FaultConfig, rng: random.Random) -> bool:
    """Whether this snapshot request gets the injected 429."""
    return rng.random() < config.snapshot_429
