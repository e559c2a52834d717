"""Response cache: finished response bodies keyed by everything that changes the audio.

Only deterministic requests (a seed given) or requests that opt in (`cache: true`) are cached, so a
cache hit never hides the variety users expect from sampling. A hit returns the very bytes of the miss.
Bounded by total bytes (LRU eviction). Identical requests that arrive together wait for one
generation (`produce_once`): one engine slot, and the very same bytes for each of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

__all__ = ["CachedResponse", "ResponseCache", "cache_key", "digest"]


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def digest(*parts: Any) -> str:
    """A stable hash of JSON-able parts (strings, numbers, lists, dicts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(endpoint: str, **parts: Any) -> str:
    return digest(endpoint, parts)


@dataclass
class _Production:
    """A response being made for a key, and how many requests wait for it."""

    task: asyncio.Future[CachedResponse]
    waiters: int = 0


class ResponseCache:
    def __init__(self, max_bytes: int) -> None:
        self._entries: LRUCache[str, CachedResponse] | None = (
            LRUCache(maxsize=max_bytes, getsizeof=lambda entry: len(entry.body)) if max_bytes > 0 else None
        )
        self._producing: dict[str, _Production] = {}

    async def produce_once(
        self, key: str, produce: Callable[[], Awaitable[CachedResponse]]
    ) -> tuple[CachedResponse, bool]:
        """The response for `key`, stored; made once for all the requests that ask for it meanwhile
        (True: this request waited for another's). The work is cancelled only when every request
        waiting for it has gone; if it was cancelled under a request that still waits, that request
        makes it anew."""
        while True:
            production = self._producing.get(key)
            joined = production is not None
            if production is None:
                production = self._producing[key] = _Production(asyncio.ensure_future(produce()))
                production.task.add_done_callback(lambda _, p=production: self._produced(key, p))
            production.waiters += 1
            try:
                return await asyncio.shield(production.task), joined
            except asyncio.CancelledError:
                if not production.task.cancelled():
                    raise  # this request was cancelled (its client left)
                # the work was cancelled, not this request (Ray cancels a leaving request's calls)
            finally:
                production.waiters -= 1
                if production.waiters == 0 and not production.task.done():
                    production.task.cancel()  # nobody waits for it any more

    def _produced(self, key: str, production: _Production) -> None:
        if self._producing.get(key) is production:
            del self._producing[key]
        if not production.task.cancelled() and production.task.exception() is None:
            self.put(key, production.task.result())

    @property
    def enabled(self) -> bool:
        return self._entries is not None

    def get(self, key: str) -> CachedResponse | None:
        return self._entries.get(key) if self._entries is not None else None

    def put(self, key: str, entry: CachedResponse) -> None:
        if self._entries is not None and len(entry.body) <= self._entries.maxsize:
            self._entries[key] = entry

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0
