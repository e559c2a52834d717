"""Built-in voices: names that give the same voice on every request and every replica.

Without context CSM invents a new voice for every utterance. A built-in voice pins a name to a
reference prompt (codes and transcript), stored like a saved voice and heard as the first context
turn of every request that names it. The prompt comes from a reference clip listed in a voice
catalogue (encoded once), or, for a voice without one, from an anchor utterance generated once with the
voice's fixed seed. The engine's seeded sampling does not depend on what else is in the batch, so
every replica that generates an anchor gets the same codes; the first one stores it under
`voices_dir/builtin/` (its id names the model, the seed and the text), where replicas sharing the
directory find it. Each ingress replica keeps prepared voices in memory: a voice is encoded or
generated at most once per replica, never per request.

The names: CSM's speakers `"0"` and `"1"`, OpenAI's voice names (`alloy`, `nova`, ...), and any voice
of the catalogue file (`ApiSettings.voices_catalog`):

    voices:
      narrator: {speaker: 0, clip: narrator.wav, transcript: "What the clip says."}  # clip: path
      host: {speaker: 1, seed: 42}                                                  # a seeded anchor
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from starlette.concurrency import run_in_threadpool

from serve_app.api.errors import ApiError
from serve_app.api.voices import SavedVoice, VoiceStore
from serve_app.audio.decode import decode_audio
from serve_app.engine.types import GenerationRequest, SamplingParams

if TYPE_CHECKING:
    from serve_app.api.synthesis import Synthesizer

__all__ = ["ANCHOR_TRANSCRIPT", "OPENAI_VOICES", "BuiltinVoices", "VoiceSpec", "default_voices", "load_catalog"]

ANCHOR_TRANSCRIPT = (
    "Hi there! It's really nice to talk with you. Tell me what you need, and I'll do my best to help."
)
ANCHOR_VERSION = 1  # part of every anchor's id: bump when the way anchors are made changes

OPENAI_VOICES: dict[str, int] = {
    "alloy": 0,
    "ash": 1,
    "ballad": 0,
    "coral": 1,
    "echo": 0,
    "fable": 1,
    "onyx": 0,
    "nova": 1,
    "sage": 0,
    "shimmer": 1,
    "verse": 0,
    "marin": 1,
    "cedar": 0,
}
"""OpenAI's voice names, each on one of CSM's two speakers (an arbitrary but fixed split)."""

_BUILTIN_ID = re.compile(r"^builtin_[a-z0-9-]{1,40}_[0-9a-f]{16}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
MAX_CLIP_SECONDS = 30.0


@dataclass(frozen=True)
class VoiceSpec:
    """How a built-in voice's reference prompt is made: from `clip` (with its `transcript`), else by
    generating `transcript` with `seed`."""

    name: str
    speaker: int
    seed: int = 0
    transcript: str = ANCHOR_TRANSCRIPT
    clip: Path | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"voice name {self.name!r}: letters, digits, '-' and '_' only, at most 40")
        if self.speaker not in (0, 1):
            raise ValueError(f"voice {self.name!r}: speaker must be 0 or 1")
        if not self.transcript.strip():
            raise ValueError(f"voice {self.name!r}: transcript must not be blank")

    @property
    def source(self) -> str:
        return "clip" if self.clip is not None else "seeded"


def default_voices() -> list[VoiceSpec]:
    """CSM's two speakers and OpenAI's names; each with a seed of its own, so each is its own voice."""
    specs = [VoiceSpec(str(speaker), speaker, seed=speaker, description=f"CSM speaker {speaker}") for speaker in (0, 1)]
    specs += [
        VoiceSpec(name, speaker, seed=1000 + i, description=f"OpenAI's '{name}', on CSM speaker {speaker}")
        for i, (name, speaker) in enumerate(OPENAI_VOICES.items())
    ]
    return specs


def load_catalog(path: Path) -> list[VoiceSpec]:
    """Voices of a catalogue file; clip paths are relative to it."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read voices catalogue {path}: {exc}") from exc
    voices = data.get("voices") if isinstance(data, dict) else None
    if not isinstance(voices, dict):
        raise ValueError(  # noqa: TRY004 - a configuration error, reported like the others
            f"voices catalogue {path}: expected a mapping 'voices: {{name: {{speaker, ...}}}}'"
        )
    specs = []
    for name, entry in voices.items():
        if not isinstance(entry, dict) or "speaker" not in entry:
            raise ValueError(f"voices catalogue {path}: voice {name!r} needs at least a speaker")
        unknown = set(entry) - {"speaker", "seed", "transcript", "clip", "description"}
        if unknown:
            raise ValueError(f"voices catalogue {path}: voice {name!r} has unknown fields {sorted(unknown)}")
        clip = entry.get("clip")
        if clip is not None and "transcript" not in entry:
            raise ValueError(f"voices catalogue {path}: voice {name!r} has a clip but no transcript")
        specs.append(
            VoiceSpec(
                name=str(name),
                speaker=int(entry["speaker"]),
                seed=int(entry.get("seed", 0)),
                transcript=str(entry.get("transcript", ANCHOR_TRANSCRIPT)),
                clip=(Path(path).parent / clip) if clip is not None else None,
                description=str(entry.get("description", "")),
            )
        )
    return specs


def fingerprint(voice: SavedVoice) -> str:
    """What a voice's prompt is, in 16 hex digits: equal fingerprints, equal prompts."""
    digest = hashlib.sha256()
    digest.update(json.dumps([voice.info.transcript, voice.info.speaker]).encode())
    digest.update(np.ascontiguousarray(voice.codes, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


class BuiltinVoices:
    """The catalogue and each replica's prepared voices."""

    def __init__(self, specs: Iterable[VoiceSpec], directory: Path, anchor_ms: int) -> None:
        self.specs = {spec.name.lower(): spec for spec in specs}
        self.directory = Path(directory)
        self._store: VoiceStore | None = None
        self.anchor_ms = anchor_ms
        self._ready: dict[str, SavedVoice] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def store(self) -> VoiceStore:
        """The shared store (its directory is made on first use)."""
        if self._store is None:
            self._store = VoiceStore(self.directory, _BUILTIN_ID)
        return self._store

    def spec(self, name: str) -> VoiceSpec | None:
        return self.specs.get(name.strip().lower())

    async def get(self, name: str, synth: Synthesizer) -> SavedVoice:
        """The voice's reference prompt: from memory, the shared store, or made now (once)."""
        spec = self.spec(name)
        if spec is None:
            raise ApiError(404, f"voice {name!r} not found")
        ready = self._ready.get(spec.name)
        if ready is not None:
            return ready
        lock = self._locks.setdefault(spec.name, asyncio.Lock())
        async with lock:  # concurrent first requests: one prepares, the others wait for it
            ready = self._ready.get(spec.name)
            if ready is None:
                voice_id = await self.voice_id(spec, synth)
                ready = await run_in_threadpool(self.store.get, voice_id)
                if ready is None:
                    codes = await self._make(spec, synth)
                    info = await run_in_threadpool(
                        self.store.put, voice_id, spec.name, spec.transcript, spec.speaker, codes
                    )
                    ready = SavedVoice(info, codes)
                self._ready[spec.name] = ready
        return ready

    def prepared(self) -> dict[str, str]:
        """Fingerprints of the voices this replica holds in memory."""
        return {name: fingerprint(voice) for name, voice in sorted(self._ready.items())}

    async def stored(self, spec: VoiceSpec, synth: Synthesizer) -> SavedVoice | None:
        """The prepared voice if this replica or the shared store has it (nothing is made)."""
        ready = self._ready.get(spec.name)
        if ready is not None:
            return ready
        return await run_in_threadpool(self.store.get, await self.voice_id(spec, synth))

    async def voice_id(self, spec: VoiceSpec, synth: Synthesizer) -> str:
        """An id naming everything the prompt depends on: model, revision, and how it is made."""
        parts: dict[str, Any] = {
            "model": await synth.model(),
            "speaker": spec.speaker,
            "transcript": spec.transcript,
            "version": ANCHOR_VERSION,
        }
        if spec.clip is not None:
            parts["clip"] = hashlib.sha256(await run_in_threadpool(spec.clip.read_bytes)).hexdigest()
        else:
            parts.update(seed=spec.seed, max_ms=self.anchor_ms, sampling=str(SamplingParams()))
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        slug = re.sub(r"[^a-z0-9-]", "-", spec.name.lower())
        return f"builtin_{slug}_{digest}"

    async def _make(self, spec: VoiceSpec, synth: Synthesizer) -> np.ndarray:
        if spec.clip is not None:
            raw = await run_in_threadpool(spec.clip.read_bytes)
            pcm = await run_in_threadpool(decode_audio, raw, MAX_CLIP_SECONDS)
            codes = await synth.encode_pcm(pcm)
        else:
            audio = await synth.generate(
                GenerationRequest(
                    text=spec.transcript,
                    speaker=spec.speaker,
                    max_audio_length_ms=self.anchor_ms,
                    sampling=SamplingParams(seed=spec.seed),
                    request_id=f"voice-{spec.name}",
                )
            )
            codes = audio.codes
        if len(codes) == 0:
            raise ApiError(503, f"voice {spec.name!r}: its reference came out empty; retry later")
        return np.asarray(codes, dtype=np.int64)
