"""What routes share, built once per app and reached through `Depends(services)`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from serve_app.api.cache import ResponseCache
from serve_app.api.sessions import SessionStore
from serve_app.api.settings import ApiSettings
from serve_app.api.synthesis import Synthesizer

__all__ = ["Services", "ServicesDep", "services"]


@dataclass
class Services:
    settings: ApiSettings
    synth: Synthesizer
    cache: ResponseCache
    sessions: SessionStore


def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]
