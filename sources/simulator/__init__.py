"""A local Binance market-data simulator, for integration tests and an offline demo.

It imitates USD-M Futures (or, with ``market=Market.SPOT``, spot) on loopback: the routed WebSocket
streams (``/public`` diff. and partial depth and bookTicker, ``/market`` aggTrade and markPrice,
legacy paths that acknowledge and stay silent), live SUBSCRIBE, connection limits, pings, the REST
depth snapshot and aggTrades with request weight (and who ignores a ``Retry-After``), and faults
injected on demand. Optional sweeps (large taker orders) make the touch wander through deep
books. It keeps its own book so a test can check a client's book against
:meth:`Simulator.book_at`. Run ``python -m sources.simulator --help``.
"""

from sources.simulator.config import SimulatorConfig
from sources.simulator.faults import FaultConfig, parse_faults
from sources.simulator.market import BookLevels, Fill, SimulatorError, SymbolSpec
from sources.simulator.server import Simulator

__all__ = [
    "BookLevels",
    "FaultConfig",
    "Fill",
    "Simulator",
    "SimulatorConfig",
    "SimulatorError",
    "SymbolSpec",
    "parse_faults",
]
