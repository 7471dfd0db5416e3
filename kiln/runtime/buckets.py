"""Shape buckets and a bounded cache of compiled graphs, so varied inputs compile a handful of graphs.

kiln graphs have static shapes: every new (batch, length) would be a compile of its own
(seconds each). A model therefore rounds lengths and batch sizes up to a few buckets, pads
its input to the bucket (masked positions, copied rows) and drops the padding from the
output. `GraphCache` keeps the compiled graphs, least recently used evicted past a limit,
so memory stays bounded however many shapes a long-lived process sees.

Graphs that share state buffers (a prefill and a decode graph writing one KV cache) draw
them from one `StatePool`. A pool lives while any of its graphs is cached or anything else
holds it (a generation's cache does): a graph compiled again after an eviction binds the
buffers still in use, and a pool nobody holds is released with its buffers.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Iterator

from kiln.errors import InputError

LENGTHS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
BATCHES = (1, 2, 4, 8)   # then multiples of 8: at most 7 filler rows, cheap next to a second compile


def round_up(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= n; past the last bucket, the next multiple of it."""
    for b in buckets:
        if b >= n:
            return b
    last = buckets[-1]
    return -(-n // last) * last


@dataclass(frozen=True)
class ShapeBuckets:
    """Sequence lengths and batch sizes a model rounds its inputs up to."""

    lengths: tuple[int, ...] = LENGTHS
    batches: tuple[int, ...] = BATCHES

    def __post_init__(self):
        for name in ("lengths", "batches"):
            v = getattr(self, name)
            if not v or any(not isinstance(x, int) or x < 1 for x in v) or list(v) != sorted(set(v)):
                raise InputError(f"ShapeBuckets.{name} must be increasing positive integers, got {v!r}")

    def length(self, n: int, limit: int | None = None) -> int:
        """n rounded up to a length bucket, but never past `limit` (a position table's size) unless n is."""
        b = round_up(n, self.lengths)
        return b if limit is None else max(n, min(b, limit))

    def batch(self, n: int) -> int:
        return round_up(n, self.batches)


class StatePool(dict):
    """State name -> buffer, shared by every compiled graph of one cache shape (weakly referable)."""


class GraphCache:
    """Compiled graphs by key, at most `limit` of them (LRU); `compiles` / `evictions` count the traffic."""

    def __init__(self, limit: int = 24):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InputError(f"the compile cache limit must be a positive integer, got {limit!r}")
        self.limit = limit
        self.compiles = self.evictions = 0
        self._graphs: OrderedDict[Hashable, Any] = OrderedDict()
        self._pool_of: dict[Hashable, StatePool] = {}       # graph key -> its pool (keeps it alive)
        self._pools: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def get(self, key: Hashable):
        """The graph cached under `key` (now the most recently used), or None."""
        cg = self._graphs.get(key)
        if cg is not None:
            self._graphs.move_to_end(key)
        return cg

    def pool(self, pool_key: Hashable) -> StatePool:
        """The live pool of `pool_key`, or a new empty one."""
        pool = self._pools.get(pool_key)
        if pool is None:
            pool = self._pools[pool_key] = StatePool()
        return pool

    def put(self, key: Hashable, cg, pool: StatePool | None = None) -> None:
        """Cache `cg` (which shares the states of `pool`, if given); evict the least recently used past the limit."""
        self._graphs[key] = cg
        self._graphs.move_to_end(key)
        if pool is not None:
            self._pool_of[key] = pool
        self.compiles += 1
        while len(self._graphs) > self.limit:
            old, _ = self._graphs.popitem(last=False)
            self._pool_of.pop(old, None)
            self.evictions += 1

    def clear(self) -> None:
        self._graphs.clear()
        self._pool_of.clear()

    def __contains__(self, key) -> bool:
        return key in self._graphs

    def __len__(self) -> int:
        return len(self._graphs)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._graphs)

    def keys(self):
        return self._graphs.keys()

    def values(self):
        return self._graphs.values()

    def items(self):
        return self._graphs.items()
