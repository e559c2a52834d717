"""Arguments of the Serve application builder (`args:` in a Serve config, `key=value` on `serve run`).

Validated here, at build time on the controller, so a typo in a config fails the deployment with a
clear message instead of surfacing later inside a replica.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.engine.config import validate_engine_options


class BuildArgs(BaseModel):
    """What the application is built from; deployment sizing lives in the config's `deployments:`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("tiny-random", min_length=1, description="Engine preset, e.g. csm-1b or tiny-random.")
    device: str | None = Field(None, description="cuda, cpu, ...; None lets the engine choose.")
    max_batch_size: int | None = Field(
        None, ge=1, le=1024, description="Engine slots: streams decoded together in one batch."
    )
    engine: dict[str, Any] = Field(
        default_factory=dict, description="Extra Engine.from_preset options (EngineConfig, LoadOptions)."
    )
    api: dict[str, Any] = Field(default_factory=dict, description="ApiSettings fields for the ingress.")
    engine_process: bool = Field(
        True,
        description="Run each model replica's engine in a child process of its own (its own GIL, away "
        "from the replica's event loop); false runs it in the replica's process.",
    )

    @field_validator("engine")
    @classmethod
    def _known_engine_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        for name in ("max_batch_size", "device"):
            if name in options:
                # Both are the application's own fields, which win over `engine:`: one set there
                # was silently replaced (and the slots also size Ray's `max_ongoing_requests`).
                raise ValueError(f"set {name!r} at the top of the application's args, not under 'engine'")
        return validate_engine_options(options)

    @field_validator("api")
    @classmethod
    def _known_api_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """A misspelt key would be ignored, silently (`auth_requird: true` left the API open)."""
        from serve_app.api.settings import ApiSettings

        names = list(ApiSettings.model_fields)
        for name in settings:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown api setting {name!r}{hint}")
        return settings

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `Engine.from_preset` besides the preset name."""
        kwargs = dict(self.engine)
        if self.max_batch_size is not None:
            kwargs["max_batch_size"] = self.max_batch_size
        if self.device is not None:
            kwargs["device"] = self.device
        return kwargs

    def model_max_ongoing_requests(self) -> int | None:
        """Requests Ray may route to one model replica at once: every slot busy plus a quarter more
        waiting in the engine, so a freed slot is refilled at the next frame without a Ray round
        trip. The rest wait in Ray's queue, where any replica (or a new one) can take them."""
        if self.max_batch_size is None:
            return None
        return self.max_batch_size + math.ceil(self.max_batch_size / 4)
