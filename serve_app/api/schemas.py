"""Request and response bodies, with the original design's field names and real constraints.

Text length limits live in `ApiSettings` (checked in code, answered with 413), so they are described
here but not enforced by the schema; everything else (ranges, list sizes, enums) is.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from serve_app.audio.formats import AudioFormat, OutputFormat, SampleRate
from serve_app.audio.tempo import MAX_SPEED, MIN_SPEED
from serve_app.engine.types import FRAME_MS

__all__ = [
    "AudioOutputOptions",
    "BatchSpeakRequest",
    "CloneVoiceRequest",
    "ContextSegment",
    "ContextualSpeakRequest",
    "ConversationRequest",
    "ConversationTurn",
    "GenerationOptions",
    "OpenAISpeechRequest",
    "SpeakRequest",
    "SynthesisOptions",
    "VoiceCreateRequest",
    "VoiceFields",
    "VoiceInfo",
    "VoiceList",
    "VoicePreviewRequest",
]


def _not_blank(value: str) -> str:
    """Speakable text: something printable in it (NULs and other control characters alone count as
    blank)."""
    if not any(ch.isprintable() and not ch.isspace() for ch in value):
        raise ValueError("must not be blank")
    return value


def _none_as_empty(value: object) -> object:
    """`null` for a list the original design's client defaults to empty."""
    return [] if value is None else value


Text = Annotated[
    str,
    Field(min_length=1, description="Text to speak (limit: ApiSettings.max_text_chars)."),
    AfterValidator(_not_blank),
]
Speaker = Annotated[int, Field(ge=0, le=1, description="CSM speaker id.")]
Speed = Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED, description="Playback speed, pitch kept.")]
"""The range `TempoStretcher` takes: the HTTP endpoints and the WebSocket share it."""
Base64Audio = Annotated[
    str, Field(min_length=1, description="Base64 WAV/FLAC/OGG/MP3/M4A (data: URI allowed).")
]
VoiceId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="A saved voice's id (POST /v1/voices), or its name where no other saved voice has it.",
    ),
]
SESSION_ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
SessionId = Annotated[str, Field(min_length=1, max_length=128, pattern=SESSION_ID_PATTERN)]
LongText = Annotated[
    str,
    Field(min_length=1, description="Text to speak, any length up to ApiSettings.max_long_text_chars (100 000)."),
    AfterValidator(_not_blank),
]
LexiconEntries = Annotated[
    dict[str, str],
    Field(
        max_length=1000,
        description="Word -> how to say it, whole words, case-sensitive, applied after normalization "
        "(over the server's lexicon).",
        examples=[{"SQL": "sequel", "Nguyen": "Win"}],
    ),
]
MAX_SPEECH_MS = 4 * 3600 * 1000
"""The longest audio one request may ask for (a long-form text: four hours)."""


STRICT = ConfigDict(extra="forbid")
"""The native endpoints' bodies refuse fields they do not know (a 422 naming them): a misspelt or
misplaced option (`pause` for `pause_ms`, `stream` on `/contextual_speak`) would otherwise pass
unnoticed. OpenAI's body stays lenient, as OpenAI's SDKs may send fields newer than this API."""


class AudioOutputOptions(BaseModel):
    """How the audio comes back: format, sample rate (or both as one `output_format` name), speed.

    `output` is the resolved `OutputFormat`; contradicting fields are a 422."""

    model_config = STRICT

    response_format: AudioFormat = "wav"
    sample_rate: SampleRate | None = Field(
        None, description="Output sample rate in Hz; default 24000 (8000 for ulaw and alaw)."
    )
    output_format: str | None = Field(
        None,
        max_length=32,
        description="ElevenLabs-style codec_rate[_kbps] name instead of response_format + sample_rate: "
        "mp3_44100_128, opus_48000_64, pcm_16000, ulaw_8000, ...",
        examples=["mp3_44100_128", "pcm_16000", "ulaw_8000"],
    )
    speed: Speed = 1.0
    _output: OutputFormat = PrivateAttr()

    @model_validator(mode="after")
    def _resolve_output(self) -> AudioOutputOptions:
        self._output = OutputFormat.resolve(
            self.response_format,
            self.sample_rate,
            self.output_format,
            response_format_given="response_format" in self.model_fields_set,
        )
        return self

    @property
    def output(self) -> OutputFormat:
        return self._output


class GenerationOptions(AudioOutputOptions):
    """Options shared by the generating endpoints."""

    normalize: bool = Field(True, description="Spell out numbers, money, abbreviations before generation.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Fixes the sampling's random draws (batched arithmetic may still round differently); cached answers repeat exactly.")
    temperature: float | None = Field(None, gt=0, le=2.0, description="Sampling temperature (default 0.9).")
    top_k: int | None = Field(None, ge=1, le=2051, description="Top-k sampling (default 50; 1 = greedy).")


class SynthesisOptions(GenerationOptions):
    """Options of the endpoints whose responses can be cached (a seed given, or `cache: true`)."""

    cache: bool = Field(False, description="Cache this response even without a seed.")


class ContextSegment(BaseModel):
    model_config = STRICT

    text: Text
    speaker: Speaker = 0
    audio_b64: Base64Audio


class SpeakRequest(SynthesisOptions):
    text: LongText
    speaker: Speaker = 1
    context: Annotated[list[ContextSegment], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list, description="Earlier turns, oldest first (null: none, as the original design's client sends)."
    )
    max_duration_ms: int | None = Field(
        None,
        ge=FRAME_MS,
        le=MAX_SPEECH_MS,
        description="Longest audio for the whole text. Default: 10 s for a text of one segment, else "
        "enough for every segment.",
    )
    quality_check: bool = Field(False, description="Retry silent/clipped/too short audio with new seeds.")
    voice: VoiceId | None = Field(
        None,
        description="A built-in voice name (GET /v1/audio/voices) or a saved voice id: its reference "
        "becomes the last context turn and its speaker is used.",
    )
    stream: bool = Field(False, description="Chunked response; first bytes leave with the first audio chunk.")
    stream_format: Literal["audio", "sse"] = Field(
        "audio", description="With stream: raw audio, or server-sent events ending in one with the finish reason."
    )
    lexicon: LexiconEntries | None = None

    @model_validator(mode="after")
    def _stream_options_agree(self) -> SpeakRequest:
        if self.stream and self.quality_check:
            raise ValueError("quality_check needs the whole utterance and cannot be combined with stream")
        if self.stream_format == "sse" and not self.stream:
            raise ValueError('stream_format "sse" is a streamed response: add "stream": true')
        return self


class ConversationTurn(BaseModel):
    model_config = STRICT

    speaker: Speaker
    text: LongText
    pause_ms: int = Field(500, ge=0, le=2000, description="Silence after this turn (not after the last).")


class ConversationRequest(SynthesisOptions):
    turns: list[ConversationTurn] = Field(
        min_length=1, description="Limit: ApiSettings.max_conversation_turns."
    )
    max_total_duration_ms: int | None = Field(
        None,
        ge=5_000,
        le=MAX_SPEECH_MS,
        description="Speech plus pauses. Default: enough for every turn's text and the pauses, at least 30 s.",
    )
    lexicon: LexiconEntries | None = None


class CloneVoiceRequest(SynthesisOptions):
    text: Text
    reference_audio_b64: Base64Audio | None = None
    reference_text: Text | None = None
    voice: VoiceId | None = Field(None, description="A saved voice instead of reference audio and text.")
    max_duration_ms: int = Field(15_000, ge=1_000, le=30_000)

    @model_validator(mode="after")
    def _one_reference(self) -> CloneVoiceRequest:
        inline = self.reference_audio_b64 is not None or self.reference_text is not None
        if self.voice is not None and inline:
            raise ValueError("give either voice or reference_audio_b64 + reference_text, not both")
        if self.voice is None and (self.reference_audio_b64 is None or self.reference_text is None):
            raise ValueError("reference_audio_b64 and reference_text are required (or a saved voice)")
        return self


class BatchSpeakRequest(GenerationOptions):
    """Every text with the same options; `seed` is used for every text."""

    texts: list[Text] = Field(min_length=1, max_length=10)
    speaker: Speaker = 0
    max_duration_per_text_ms: int = Field(10_000, ge=1_000, le=20_000)


class ContextualSpeakRequest(GenerationOptions):
    text: Text
    speaker: Speaker = 1
    session_id: SessionId | None = Field(
        None,
        description="The session this turn continues. Default: the caller's own session (one per API "
        "key, or per client address without keys), as the original design kept one context.",
    )
    max_duration_ms: int = Field(10_000, ge=FRAME_MS, le=60_000)
    voice: VoiceId | None = Field(
        None,
        description="A built-in or saved voice: its reference joins the session's turns as the last "
        "context turn, and its speaker is used (the session's turns stay as spoken).",
    )
    context: Annotated[list[ContextSegment], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list,
        description="Accepted empty (the original design's body has it): a session's own turns are its context.",
    )

    @model_validator(mode="after")
    def _session_is_the_context(self) -> ContextualSpeakRequest:
        if self.context:
            raise ValueError("a session's own turns are its context: send earlier turns to /speak instead")
        return self


class VoiceFields(BaseModel):
    """A saved voice's fields besides its audio (the form fields of a multipart upload: a misspelt
    one is refused there too)."""

    model_config = STRICT

    name: Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_not_blank)]
    transcript: Text = Field(validation_alias=AliasChoices("transcript", "reference_text"))
    speaker: Speaker = 0


class VoiceCreateRequest(VoiceFields):
    audio_b64: Base64Audio = Field(validation_alias=AliasChoices("audio_b64", "reference_audio_b64"))


PREVIEW_TEXT = "Hello! This is a preview of my voice. How do I sound to you?"


class VoicePreviewRequest(SynthesisOptions):
    """A sample sentence in a saved voice."""

    text: Text = PREVIEW_TEXT
    max_duration_ms: int = Field(10_000, ge=FRAME_MS, le=30_000)


class VoiceInfo(BaseModel):
    id: str
    name: str
    transcript: str
    speaker: int
    frames: int
    duration_ms: int
    created_at: float = Field(description="Unix time.")


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceInfo]


class VoiceRef(BaseModel):
    id: VoiceId


class OpenAISpeechRequest(AudioOutputOptions):
    """OpenAI's `POST /v1/audio/speech` body, plus our extras (`seed`, `temperature`, `top_k`, `cache`,
    `max_duration_ms`, `sample_rate`, `output_format`, and the `ulaw`/`alaw` formats), which OpenAI
    SDKs send through `extra_body`."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="Any id from GET /v1/models; tts-1 etc. are accepted.")
    input: LongText
    voice: str | VoiceRef = Field(
        description="A built-in voice (0, 1, an OpenAI voice name, ...; GET /v1/audio/voices) or a saved voice id."
    )
    response_format: AudioFormat = "mp3"
    instructions: str | None = Field(None, max_length=4096, description="Accepted; CSM has no style prompt.")
    stream_format: Literal["audio", "sse"] = "audio"
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    temperature: float | None = Field(None, gt=0, le=2.0)
    top_k: int | None = Field(None, ge=1, le=2051)
    cache: bool = False
    max_duration_ms: int | None = Field(
        None,
        ge=FRAME_MS,
        le=MAX_SPEECH_MS,
        description="Longest audio to generate (OpenAI has no such knob). Default: 60 s, or enough for "
        "every segment of a longer input.",
    )
    lexicon: LexiconEntries | None = None
