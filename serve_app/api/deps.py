"""What routes share, built once per app and reached through `Depends(services)`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request

from serve_app.api.auth import calling_key
from serve_app.api.cache import ResponseCache, cache_key
from serve_app.api.settings import ApiSettings
from serve_app.api.state import SessionStore
from serve_app.api.synthesis import Synthesizer, run_sized
from serve_app.audio.formats import OutputFormat

__all__ = ["Services", "ServicesDep", "services"]


class CacheableOptions(Protocol):
    """The request fields that decide cacheability and enter every cache key."""

    seed: int | None
    temperature: float | None
    top_k: int | None
    cache: bool
    output: OutputFormat
    speed: float


@dataclass
class Services:
    settings: ApiSettings
    synth: Synthesizer
    cache: ResponseCache
    sessions: SessionStore

    async def cache_key(self, endpoint: str, opts: CacheableOptions, **parts: object) -> str | None:
        """A key only for cacheable requests (a seed makes them deterministic, `cache` opts in); it
        covers the model and its revision, the sampling options, the output format and speed, the
        given `parts` (the request's own data, hashed only when the request is cacheable) and, where
        the server takes API keys, the caller's key: a hit must not tell one key what another asked."""
        if not self.cache.enabled or (opts.seed is None and not opts.cache):
            return None
        key = functools.partial(
            cache_key,
            endpoint,
            model=await self.synth.model(),
            seed=opts.seed,
            temperature=opts.temperature,
            top_k=opts.top_k,
            format=opts.output.name,
            speed=opts.speed,
            owner=calling_key(),
            **parts,
        )
        # Parts with uploaded audio (a reference, context turns) hash megabytes: in the thread pool.
        return await run_sized(key, heavy=_chars(parts) > INLINE_KEY_CHARS)


INLINE_KEY_CHARS = 100_000
"""Key parts up to this much text (a long-form script) are hashed on the event loop; more (base64
audio: 10 MB takes some 35 ms) in the thread pool."""


def _chars(value: object) -> int:
    """Characters of text in a key part (its strings, through lists, tuples and dicts)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple):
        return sum(map(_chars, value))
    if isinstance(value, dict):
        return sum(map(_chars, value.values()))
    return 0


async def services(request: Request) -> Services:
    """The app's services. `async` so FastAPI calls it on the event loop: a plain `def` dependency
    costs every request a hop to the thread pool and back before its engine call."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]
