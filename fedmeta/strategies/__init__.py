"""Server strategies as data: each is a Flower strategy class, its options and what it keeps.

One file per family registers its entries in :data:`STRATEGIES` (discovered, no import list).
The core only declares them; the Flower ServerApp (``server.strategies``) builds them.
"""

from fedmeta.strategies.base import STRATEGIES, StrategySpec

__all__ = ["STRATEGIES", "StrategySpec"]
