# The C module's interface (market_data/_speedups.c); see market_data/speedups.py.
DECIMALS: int

def levels(raw: object, /) -> tuple[tuple[int, int], ...] | None: ...
def book_json(
    symbol: object, bids: object, asks: object, last_update_id: object, timestamp: object, /
) -> bytes | None: ...
