"""What routes share, built once per app and reached through `Depends(services)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request

from serve_app.api.cache import ResponseCache, cache_key
from serve_app.api.settings import ApiSettings
from serve_app.api.state import SessionStore
from serve_app.api.synthesis import Synthesizer
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
        covers the model and its revision, the sampling options, the output format and speed, and the
        given `parts`."""
        if not self.cache.enabled or (opts.seed is None and not opts.cache):
            return None
        return cache_key(
            endpoint,
            model=await self.synth.model(),
            seed=opts.seed,
            temperature=opts.temperature,
            top_k=opts.top_k,
            format=opts.output.name,
            speed=opts.speed,
            **parts,
        )


async def services(request: Request) -> Services:
    """The app's services. `async` so FastAPI calls it on the event loop: a plain `def` dependency
    costs every request a hop to the thread pool and back before its engine call."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]
