"""Response cache: finished response bodies keyed by everything that changes the audio.

Only deterministic requests (a seed given) or requests that opt in (`cache: true`) are cached, so a
cache hit never hides the variety users expect from sampling. A hit returns the very bytes of the miss.
Bounded by total bytes (LRU eviction).
"""

from __future__ import annotations

import hashlib
import json
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


class ResponseCache:
    def __init__(self, max_bytes: int) -> None:
        self._entries: LRUCache[str, CachedResponse] | None = (
            LRUCache(maxsize=max_bytes, getsizeof=lambda entry: len(entry.body)) if max_bytes > 0 else None
        )

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
