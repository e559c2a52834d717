"""From validated request fields to engine calls: text checks, context, voices, sampling, retries.

Everything between the HTTP schemas and the `SpeechEngine` protocol that more than one route needs
lives here, so routes stay a few lines each. CPU-heavy work (decoding audio, file I/O) runs in the
thread pool so the event loop keeps streaming other responses.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from serve_app.api.auth import CALLER
from serve_app.api.builtin_voices import BuiltinVoices, default_voices, load_catalog
from serve_app.api.errors import ApiError, engine_errors
from serve_app.api.longform import Line, Narration, Script, SpeechPiece, SpokenLine
from serve_app.api.schemas import ContextSegment
from serve_app.api.settings import ApiSettings
from serve_app.api.voices import SavedVoice, VoiceStore
from serve_app.audio.decode import AudioLimits, load_audio_b64, load_audio_bytes
from serve_app.audio.quality import check_quality, shortest_plausible_seconds
from serve_app.audio.reference import ReferenceLimits, check_reference
from serve_app.engine.interface import SpeechEngine
from serve_app.engine.types import (
    NUM_CODEBOOKS,
    SAMPLE_RATE,
    Audio,
    AudioChunk,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    Segment,
    trace_hops,
)
from serve_app.text.breaks import BreakTagError, find_break
from serve_app.text.lexicon import Lexicon, LexiconError
from serve_app.text.normalize import normalize_text
from serve_app.text.segment import Pause, SegmentPolicy, Utterance, split_script

__all__ = ["AudioStream", "SpeechStream", "Synthesizer", "join_pcm", "run_sized"]

_DEFAULT_SAMPLING = SamplingParams()

INLINE_PLAN_CHARS = 200
"""Texts up to this long are normalized and segmented on the event loop; longer ones in the thread
pool, so a long text never holds the loop."""

INLINE_JOIN_SAMPLES = 60 * SAMPLE_RATE
"""Whole-file audio up to a minute long is joined into one array on the event loop; longer in the
thread pool: copying an hour of long-form speech (hundreds of MB) holds the loop for most of a second."""


_T = TypeVar("_T")


async def run_sized(work: Callable[[], _T], *, heavy: bool) -> _T:
    """`work` in the thread pool when `heavy` (it would hold the event loop, and every stream on it),
    else on the loop: the thread pool's hop there and back delays small work behind the loop's other
    work (bench_app)."""
    return await run_in_threadpool(work) if heavy else work()


async def join_pcm(pieces: Sequence[np.ndarray]) -> np.ndarray:
    """`pieces` as one array (a long whole copied in the thread pool)."""
    if not pieces:
        return np.zeros(0, np.float32)
    heavy = sum(len(piece) for piece in pieces) > INLINE_JOIN_SAMPLES
    return await run_sized(lambda: np.concatenate(pieces), heavy=heavy)


def from_caller(request: GenerationRequest) -> GenerationRequest:
    """`request` filed under the caller being served (`CALLER`), unless it names one already."""
    caller = CALLER.get()
    return request if caller is None or request.caller is not None else dataclasses.replace(request, caller=caller)


class AudioStream:
    """An engine stream whose first chunk has already arrived (so start-up errors got their status).
    `finish_reason` is known once the last chunk has passed."""

    def __init__(
        self, first: AudioChunk | None, rest: AsyncIterator[AudioChunk], first_audio_ms: float | None = None
    ) -> None:
        """`first_audio_ms`: how long the first chunk took to reach the API, from its request."""
        self._first = first
        self._rest = rest
        self._finish_reason: FinishReason | None = None
        self.first_audio_ms = first_audio_ms

    def server_timing(self) -> dict[str, str]:
        """A `Server-Timing` header: ms to first audio at the API and at the engine (what the hop
        between them, e.g. a Ray handle, costs is the difference), the engine's share of it before
        the request's first step (`admit`), and of that, the part before its sequence was queued
        for the loop (`queue`: its prompt built; the rest is the wait for the loop's iteration); then
        the hops of the first chunk's `trace` (`in_relay` / `out_relay`: the API to a model replica's
        relay and back, through Ray; `in_engine` / `out_engine`: to the engine and back)."""
        engine = self._engine_first_chunk()
        timings = (
            ("api", self.first_audio_ms),
            ("engine", getattr(engine, "first_audio_ms", None)),
            ("admit", getattr(engine, "admitted_ms", None)),
            ("queue", getattr(engine, "queued_ms", None)),
        )
        hops = tuple(trace_hops(getattr(engine, "trace", ())).items())
        parts = [f"{name};dur={ms:.1f}" for name, ms in timings + hops if ms is not None]
        return {"Server-Timing": ", ".join(parts)} if parts else {}

    @property
    def finish_reason(self) -> FinishReason | None:
        return self._finish_reason

    def _engine_first_chunk(self) -> AudioChunk | None:
        """The engine's first chunk of this stream (its timings)."""
        return self._first

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        """Yield every chunk; leaving early (client gone) closes the engine stream, freeing its slot."""
        try:
            if self._first is None:
                return
            yield self._first
            self._finish_reason = getattr(self._first, "finish_reason", None)
            async for chunk in self._rest:
                yield chunk
                self._finish_reason = getattr(chunk, "finish_reason", None) or self._finish_reason
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await _aclose(self._rest)


class SpeechStream(AudioStream):
    """A long-form stream of `SpeechPiece`s, first piece already there; its finish reason is the whole's."""

    def __init__(
        self,
        narration: Narration,
        first: SpeechPiece | None,
        rest: AsyncIterator[SpeechPiece],
        first_audio_ms: float | None = None,
    ) -> None:
        super().__init__(first, rest, first_audio_ms)  # type: ignore[arg-type]
        self.narration = narration

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.narration.finish_reason

    def _engine_first_chunk(self) -> AudioChunk | None:
        return self.narration.engine_first_chunk


async def _aclose(chunks: AsyncIterator[AudioChunk]) -> None:
    """Close an engine stream early (async generators and adapters that support it)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


class Synthesizer:
    def __init__(self, engine: SpeechEngine, settings: ApiSettings, voices: VoiceStore) -> None:
        self.engine = engine
        self.settings = settings
        self.voices = voices
        self._audio_limits = AudioLimits(settings.max_audio_bytes, settings.max_audio_seconds)
        self._reference_limits = ReferenceLimits(settings.reference_min_seconds, settings.reference_max_seconds)
        self._model: dict[str, str] | None = None
        self.lexicon = Lexicon(settings.load_lexicon())
        self.segments = SegmentPolicy(settings.segment_max_chars, settings.segment_min_clause_chars)
        catalog = load_catalog(settings.voices_catalog) if settings.voices_catalog else []
        self.builtin = BuiltinVoices(
            [*default_voices(), *catalog], settings.voices_dir / "builtin", settings.builtin_voice_ms
        )

    # -- inputs ---------------------------------------------------------------------------------
    def text(self, text: str, normalize: bool, field: str = "text") -> str:
        """Length-checked (413) and, unless opted out, normalized text."""
        limit = self.settings.max_text_chars
        if len(text) > limit:
            raise ApiError(413, f"{field} has {len(text)} characters, over the {limit}-character limit")
        return normalize_text(text) if normalize else text.strip()

    def target_text(self, text: str, normalize: bool, field: str = "text") -> str:
        """Text to generate as one utterance: `text()`, with something left to speak (422 where
        normalization leaves nothing, e.g. only emoji: the engine refuses an empty text) and no break
        tag (422: one utterance has no pause to render it as, and it must not be read aloud)."""
        checked = self.text(text, normalize, field)
        try:
            tag = find_break(text, complete=True)  # in the text as sent: normalization rewrites a tag
        except BreakTagError as exc:
            raise ApiError(422, f"{field}: {exc}") from exc
        if tag is not None:
            raise ApiError(
                422,
                f"{field}: break tags are rendered by /speak, /conversation, /v1/audio/speech and the "
                "WebSocket, not by this endpoint (for a saved voice with pauses: /speak with its voice)",
            )
        if not checked:
            raise ApiError(422, f"{field} has nothing to speak")
        return checked

    async def decode_audio(self, audio: str | bytes, field: str, reference: bool = False) -> np.ndarray:
        """Base64 text or a file's bytes → 24 kHz mono; a voice `reference` must also be long enough,
        not silent and not too long."""

        def work() -> np.ndarray:
            if isinstance(audio, str):
                pcm = load_audio_b64(audio, self._audio_limits, field)
            else:
                pcm = load_audio_bytes(audio, self._audio_limits, field)
            if reference:
                check_reference(pcm, self._reference_limits, field)
            return pcm

        return await run_in_threadpool(work)

    async def segment(
        self,
        text: str,
        speaker: int,
        audio_b64: str,
        normalize: bool,
        text_field: str,
        audio_field: str,
        reference: bool = False,
    ) -> Segment:
        """One user-supplied turn: checked text and decoded audio (the engine encodes it once); a
        voice's `reference` is a turn the utterance requires (never dropped to fit the prompt)."""
        checked = self.text(text, normalize, text_field)
        pcm = await self.decode_audio(audio_b64, audio_field, reference)
        return Segment(text=checked, speaker=speaker, audio=pcm, required=reference)

    async def context(self, segments: Sequence[ContextSegment], normalize: bool) -> list[Segment]:
        limit = self.settings.max_context_turns
        if len(segments) > limit:
            raise ApiError(413, f"context has {len(segments)} turns, over the {limit}-turn limit")
        return [
            await self.segment(
                seg.text,
                seg.speaker,
                seg.audio_b64,
                normalize,
                f"context[{i}].text",
                f"context[{i}].audio_b64",
            )
            for i, seg in enumerate(segments)
        ]

    async def voice(self, voice_id: str, owner: str | None, *, by_name: bool = False) -> SavedVoice:
        """A saved voice of `owner` (an API key's id, None without keys: `VoiceStore.owned_by`) by
        id; `by_name`: else the one such voice with that name (any case; 409 where several have it:
        names need not be unique)."""
        voice = await run_in_threadpool(self._saved_voice, voice_id, self.voices.owned_by(owner), by_name)
        if voice is None:
            raise ApiError(404, f"voice {voice_id!r} not found")
        return voice

    @staticmethod
    def _saved_voice(name: str, voices: VoiceStore, by_name: bool) -> SavedVoice | None:
        voice = voices.get(name.strip())
        if voice is not None or not by_name:
            return voice
        wanted = name.strip().casefold()  # as built-in names are matched: case and edge spaces aside
        if not wanted:
            return None
        named = [info for info in voices.list() if info.name.strip().casefold() == wanted]
        if len(named) > 1:
            ids = ", ".join(info.id for info in named)
            raise ApiError(409, f"{len(named)} saved voices are named {name!r}: give one's id ({ids})")
        return voices.get(named[0].id) if named else None

    async def named_voice(self, name: str, owner: str | None) -> SavedVoice:
        """A built-in voice by name (prepared once per replica), a saved voice of `owner` by id, or
        the one such voice with that name (any case; 409 where several have it: names need not be
        unique)."""
        if self.builtin.spec(name) is not None:
            return await self.builtin.get(name, self)
        return await self.voice(name, owner, by_name=True)

    def lexicon_for(self, entries: Mapping[str, str] | None, field: str = "lexicon") -> Lexicon:
        """The server's lexicon with a request's own entries over it (422 for unusable entries)."""
        try:
            return self.lexicon.merged(entries)
        except LexiconError as exc:
            raise ApiError(422, f"{field}: {exc}") from exc

    def spoken(self, raw: str, normalize: bool, lexicon: Lexicon) -> str:
        """What the model is given for a piece of text: normalized unless opted out, then the lexicon."""
        return lexicon.apply(normalize_text(raw) if normalize else raw.strip()).strip()

    def recut(self, spoken: str) -> list[str]:
        """A segment that normalization or the lexicon made much longer than a segment (an entry may
        stand for a paragraph) cut again, so each part fits the model's prompt as any segment does;
        otherwise a later segment would fail after the response had started."""
        if len(spoken) <= 2 * self.segments.max_chars:
            return [spoken]
        return [item.text for item in split_script(spoken, self.segments) if isinstance(item, Utterance)]

    async def script(
        self,
        text: str,
        *,
        normalize: bool,
        lexicon: Mapping[str, str] | None = None,
        field: str = "text",
    ) -> Script:
        """A long text (413 over `max_long_text_chars`) planned as segments and pauses (422 for a bad
        break tag or lexicon, or when nothing is left to speak)."""
        limit = self.settings.max_long_text_chars
        if len(text) > limit:
            raise ApiError(413, f"{field} has {len(text)} characters, over the {limit}-character limit")
        words = self.lexicon_for(lexicon)

        def plan() -> Script:
            lines: list[Line] = []
            spoken_chars = 0  # the limit holds for what is spoken: a lexicon entry may stand for a paragraph
            for item in split_script(text, self.segments):
                if isinstance(item, Pause):
                    lines.append(item)
                elif spoken := self.spoken(item.text, normalize, words):
                    spoken_chars += len(spoken)
                    if spoken_chars > limit:
                        raise ApiError(
                            413, f"{field} with the lexicon applied is over the {limit}-character limit"
                        )
                    lines.extend(SpokenLine(item, part) for part in self.recut(spoken))
            return Script(tuple(lines))

        try:
            script = await run_sized(plan, heavy=len(text) > INLINE_PLAN_CHARS)
        except BreakTagError as exc:
            raise ApiError(422, f"{field}: {exc}") from exc
        if not script.utterances:
            raise ApiError(422, f"{field} has nothing to speak")
        return script

    def narration(self, **options: Any) -> Narration:
        """A `Narration` with this deployment's context and join settings (options override them)."""
        options.setdefault("context_segments", self.settings.context_segments)
        options.setdefault("join_silence_ms", self.settings.join_silence_ms)
        return Narration(self, **options)

    def voice_reference(self, voice: SavedVoice, normalize: bool) -> Segment:
        """A saved voice as a context turn (its transcript treated like any user text), one the
        utterance requires: a request that cannot hold it fails (413) rather than speak in another voice."""
        return voice.segment(self.text(voice.info.transcript, normalize, "voice transcript"))

    @staticmethod
    def sampling(temperature: float | None, top_k: int | None, seed: int | None) -> SamplingParams:
        return SamplingParams(
            temperature=_DEFAULT_SAMPLING.temperature if temperature is None else temperature,
            top_k=_DEFAULT_SAMPLING.top_k if top_k is None else top_k,
            seed=seed,
        )

    # -- engine calls ---------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest, quality_check: bool = False) -> Audio:
        """One utterance; with `quality_check`, bad audio is regenerated with new seeds (seed+1, ...)."""
        request = from_caller(request)
        attempts = self.settings.quality_attempts if quality_check else 1
        min_seconds = shortest_plausible_seconds(request.text, request.max_audio_length_ms)
        failures = []
        for attempt in range(attempts):
            seed = request.sampling.seed
            attempt_request = (
                request
                if attempt == 0
                else dataclasses.replace(
                    request,
                    sampling=dataclasses.replace(
                        request.sampling, seed=None if seed is None else seed + attempt
                    ),
                )
            )
            async with engine_errors(self.settings.retry_after_s):
                audio = await self.engine.generate(attempt_request)
            if not quality_check:
                return audio
            report = check_quality(audio.pcm, audio.sample_rate, min_seconds)
            if report.ok:
                return audio
            failures.append(f"attempt {attempt + 1}: {report.describe()}")
        raise ApiError(  # the model's failure, not the input's: 500, as in the original design
            500,
            f"the generated audio failed quality checks in {attempts} attempts ({'; '.join(failures)}); "
            "try a different text, speaker or seed",
        )

    async def stream(self, request: GenerationRequest) -> AudioStream:
        """Start streaming; waits for the first chunk so failures to start are proper HTTP errors."""
        began, called = time.perf_counter(), time.time()
        chunks = aiter(self.engine.stream(from_caller(request)))
        async with engine_errors(self.settings.retry_after_s):
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                first = None
            except BaseException:
                await _aclose(chunks)
                raise
        if first is not None:
            first.trace = (*first.trace, ("api", called, time.time()))
        return AudioStream(first, chunks, (time.perf_counter() - began) * 1000)

    async def speech_stream(self, narration: Narration, lines: Sequence[Line], speaker: int) -> SpeechStream:
        """Start speaking `lines`; waits for the first piece so failures to start are HTTP errors."""
        began = time.perf_counter()
        pieces = aiter(narration.run(lines, speaker))
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await _aclose(pieces)
            raise
        return SpeechStream(narration, first, pieces, (time.perf_counter() - began) * 1000)

    async def speech_audio(self, narration: Narration, lines: Sequence[Line], speaker: int) -> Audio:
        """All of `lines` as one utterance (the codes: what each segment kept)."""
        pieces = [piece.pcm async for piece in narration.run(lines, speaker)]
        codes = [s.codes for s in narration.history if s.codes is not None]
        return Audio(
            pcm=await join_pcm(pieces),
            codes=np.concatenate(codes) if codes else np.zeros((0, NUM_CODEBOOKS), np.int64),
            finish_reason=narration.finish_reason or FinishReason.END_OF_AUDIO,
            dropped_context_turns=narration.dropped_context_turns,
        )

    async def encode_pcm(self, pcm: np.ndarray) -> np.ndarray:
        """Mono 24 kHz audio → Mimi codes (frames, 32)."""
        async with engine_errors(self.settings.retry_after_s):
            return await self.engine.encode_audio(pcm)

    async def encode_reference(self, audio: str | bytes, field: str) -> np.ndarray:
        """A checked voice reference (base64 text or file bytes) → Mimi codes (frames, 32)."""
        return await self.encode_pcm(await self.decode_audio(audio, field, reference=True))

    async def model(self) -> dict[str, str]:
        """Model name and revision from the engine (asked once; part of every cache key)."""
        if self._model is None:
            async with engine_errors(self.settings.retry_after_s):
                info: dict[str, Any] = await self.engine.info()
            self._model = {
                "name": str(info.get("model") or info.get("name") or "csm-1b"),
                "revision": str(info.get("revision") or info.get("model_revision") or ""),
            }
        return self._model
