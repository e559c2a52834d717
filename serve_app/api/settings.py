"""API limits and stores, configurable from the environment with the `CSM_` prefix.

Example: `CSM_MAX_TEXT_CHARS=2000 CSM_VOICES_DIR=/data/voices`. Ray Serve passes the same fields
through the application builder's `api:` args.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ApiSettings"]


def _default_voices_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "csm-serve" / "voices"


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CSM_", extra="ignore", frozen=True)

    # Request limits (413 when exceeded).
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Whole request body.")
    max_text_chars: int = Field(4096, gt=0, description="Any one text field, before normalization.")
    max_context_turns: int = Field(16, ge=0, description="Context segments in one request.")
    max_audio_bytes: int = Field(10 * 1024 * 1024, gt=0, description="One decoded audio file.")
    max_audio_seconds: float = Field(60.0, gt=0, description="Duration of one input audio.")
    max_batch_texts: int = Field(10, ge=1, le=10, description="Texts in one /batch_speak (schema cap 10).")
    max_conversation_turns: int = Field(32, ge=1, description="Turns in one /conversation.")

    # Response cache (bounded LRU by bytes).
    cache_max_bytes: int = Field(256 * 1024 * 1024, ge=0, description="0 disables the cache.")

    # /contextual_speak sessions (LRU + idle TTL) and rate-limit buckets: held by one store that all
    # ingress replicas share (Ray: the SharedState deployment; one process: in memory), or by Redis.
    max_sessions: int = Field(1024, ge=1)
    session_ttl_s: float = Field(3600.0, gt=0)
    session_context_turns: int = Field(4, ge=1, description="Last N turns used as context.")
    session_lease_s: float = Field(
        30.0, gt=0, description="A turn's hold on its session, renewed while it runs; bounds the wait "
        "after a replica dies mid-turn."
    )
    redis_url: SecretStr | None = Field(
        None, description="redis://host:6379/0: keep sessions and rate limits in Redis (never logged)."
    )

    # Saved voices: npz (codes) + json (metadata) per voice.
    voices_dir: Path = Field(default_factory=_default_voices_dir)
    max_saved_voices: int = Field(
        10_000, ge=1, description="Saved voices kept at most; creating one more is a 409 until one is deleted."
    )
    # Voice references (saved voices, /clone_voice): shorter or silent is a 400, longer a 413.
    reference_min_seconds: float = Field(0.5, gt=0, description="Shortest voice reference.")
    reference_max_seconds: float = Field(30.0, gt=0, description="Longest voice reference.")

    # Access control, off by default. Keys: CSM_API_KEYS="key1,key2" and/or a file with one key per
    # line (a mounted secret); with any key configured, every API route needs `Bearer <key>`.
    api_keys: SecretStr | None = Field(None, description="Comma-separated API keys (never logged).")
    api_keys_file: Path | None = Field(None, description="File of API keys, one per line; # comments.")
    auth_required: bool = Field(False, description="Refuse to start without API keys (production).")
    rate_limit_per_minute: int = Field(0, ge=0, description="Requests per minute per key (or address); 0 = off.")
    rate_limit_burst: int | None = Field(None, ge=1, description="Bucket size; default: 10 s worth.")

    # Long-form speech: texts longer than a segment are spoken segment by segment, each segment
    # hearing the ones before it (their text and generated codes) as context.
    max_long_text_chars: int = Field(
        100_000, gt=0, description="/speak text, /v1/audio/speech input, a /conversation turn, a WebSocket context."
    )
    segment_max_chars: int = Field(280, ge=20, le=2000, description="Longest segment generated at once.")
    segment_min_clause_chars: int = Field(
        40, ge=1, description="Streamed text starts at a clause boundary once this much waits."
    )
    context_segments: int = Field(3, ge=0, le=16, description="Earlier segments each segment hears.")
    join_silence_ms: int = Field(400, ge=0, le=5000, description="Longest silence kept where a segment ends.")
    # Pronunciation lexicon applied after normalization: word -> spoken form (requests add their own).
    lexicon: dict[str, str] = Field(default_factory=dict, description='JSON, e.g. {"SQL": "sequel"}.')
    lexicon_file: Path | None = Field(None, description="YAML or JSON mapping of word -> spoken form.")

    # Built-in voices: names pinned to a stored reference prompt (see serve_app/api/builtin_voices.py).
    voices_catalog: Path | None = Field(None, description="YAML of extra built-in voices (clips or seeds).")
    builtin_voice_ms: int = Field(6000, ge=400, le=20_000, description="Longest generated anchor utterance.")

    # WebSocket input streaming (/v1/audio/speech/stream).
    ws_max_contexts: int = Field(8, ge=1, le=256, description="Contexts open at once on one socket.")
    ws_max_buffered_s: float = Field(
        30.0, gt=0, description="Audio waiting for a slow reader before its context is closed."
    )
    ws_max_message_chars: int = Field(65_536, ge=1024, description="One client message.")

    quality_attempts: int = Field(3, ge=1, le=10, description="Generations tried with quality_check.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After on 503 when the engine gives none.")
    health_timeout_s: float = Field(10.0, gt=0)

    def load_api_keys(self) -> list[str]:
        """The configured keys, from `api_keys` and `api_keys_file`; raises if auth is required and
        none are configured, or if the key file cannot be read."""
        keys = [k.strip() for k in (self.api_keys.get_secret_value() if self.api_keys else "").split(",")]
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read api_keys_file {self.api_keys_file}: {exc.strerror}") from exc
            keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
        keys = list(dict.fromkeys(k for k in keys if k))
        if self.auth_required and not keys:
            raise ValueError("auth_required is set but no API keys are configured (CSM_API_KEYS or api_keys_file)")
        return keys

    def load_lexicon(self) -> dict[str, str]:
        """The server's lexicon: `lexicon` entries over those of `lexicon_file` (YAML or JSON)."""
        entries: dict[str, str] = {}
        if self.lexicon_file is not None:
            import yaml

            try:
                data = yaml.safe_load(self.lexicon_file.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ValueError(f"cannot read lexicon_file {self.lexicon_file}: {exc}") from exc
            if not isinstance(data, dict):
                raise ValueError(f"lexicon_file {self.lexicon_file} must hold a mapping of word -> spoken form")
            entries.update({str(k): str(v) for k, v in data.items()})
        return {**entries, **self.lexicon}

    def burst(self) -> int:
        return self.rate_limit_burst or max(1, -(-self.rate_limit_per_minute // 6))

    def limits(self) -> dict[str, float | int]:
        """The limits a client may want to know (GET /info)."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_text_chars": self.max_text_chars,
            "max_context_turns": self.max_context_turns,
            "max_audio_bytes": self.max_audio_bytes,
            "max_audio_seconds": self.max_audio_seconds,
            "max_batch_texts": self.max_batch_texts,
            "max_conversation_turns": self.max_conversation_turns,
            "max_long_text_chars": self.max_long_text_chars,
            "segment_max_chars": self.segment_max_chars,
            "reference_min_seconds": self.reference_min_seconds,
            "reference_max_seconds": self.reference_max_seconds,
            "session_context_turns": self.session_context_turns,
            "rate_limit_per_minute": self.rate_limit_per_minute,
        }
