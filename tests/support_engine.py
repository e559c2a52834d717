"""Tiny engine parts for the engine, scheduler and stream tests: a seeded random CSM, a tiny Mimi,
the byte-level tokenizer, and a hand-driven `EngineLoop` over them (no thread, one frame per call)."""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from serve_app.engine.loop import EngineLoop, SilenceGuard
from serve_app.engine.prompt import build_prompt
from serve_app.engine.runner import ModelRunner
from serve_app.engine.scheduler import Scheduler
from serve_app.engine.sequence import ChunkPolicy, Sequence
from serve_app.engine.types import AudioChunk, GenerationRequest, SamplingParams
from serve_app.model.csm import CsmModel
from serve_app.model.mimi import MimiCodec
from serve_app.model.tiny import TINY_CONFIG, random_model, tiny_mimi_config
from serve_app.model.tokenizer import TextTokenizer

NO_SILENCE_GUARD = SilenceGuard(seconds=0)
SMALL_CHUNKS = ChunkPolicy(1, 4)


@functools.cache
def codec() -> MimiCodec:
    return MimiCodec.random(tiny_mimi_config(), seed=0)


@functools.cache
def tokenizer() -> TextTokenizer:
    return TextTokenizer.tiny()


@functools.cache
def _base_model(seed: int) -> CsmModel:
    return random_model(TINY_CONFIG, seed).eval().requires_grad_(False)


def model(seed: int = 0) -> CsmModel:
    """A fresh copy of the tiny model (each runner sets up its own caches on it)."""
    return copy.deepcopy(_base_model(seed))


def wide_head_model(seed: int = 0) -> CsmModel:
    """The tiny model with heads of 32 dims, the fused attention kernel's smallest."""
    cfg = replace(
        TINY_CONFIG,
        backbone=replace(TINY_CONFIG.backbone, n_heads=2, n_kv_heads=1, head_dim=None),
        decoder=replace(TINY_CONFIG.decoder, n_heads=1, n_kv_heads=1, head_dim=None),
    )
    return random_model(cfg, seed=seed).eval().requires_grad_(False)


def make_loop(
    n_slots: int = 4,
    chunks: ChunkPolicy = SMALL_CHUNKS,
    silence: SilenceGuard = NO_SILENCE_GUARD,
    max_waiting: int = 8,
    csm: CsmModel | None = None,
    history: int = 32,
) -> EngineLoop:
    runner = ModelRunner(
        csm or model(),
        codec().model,
        n_slots,
        vocab_limit=2048,
        history=history,
        audio_chunk_sizes=chunks.sizes,
    )
    return EngineLoop(runner, Scheduler(n_slots, max_waiting), chunks, silence)


def force_end_of_audio(loop: EngineLoop, at_frame: int, seed: int | None = None) -> None:
    """Make frame `at_frame` the all-zero end-of-audio frame (as the model would), for every stream or
    only for those sampled with `seed`. Later frames stay ordinary codes, so any frame the loop took
    past the end would show."""
    fast = loop.runner.fast
    model_frame = fast.depth_frame

    def depth_frame(h, temperature, top_k, seeds, frame):  # type: ignore[no-untyped-def]
        codes = model_frame(h, temperature, top_k, seeds, frame)
        hit = frame == at_frame
        if seed is not None:
            hit = hit & (seeds == seed)
        return torch.where(hit[:, None], torch.zeros_like(codes), codes)

    fast.depth_frame = depth_frame  # type: ignore[method-assign]


def request(text: str, frames: int, seed: int = 0, top_k: int = 50) -> GenerationRequest:
    return GenerationRequest(
        text=text, max_audio_length_ms=frames * 80, sampling=SamplingParams(seed=seed, top_k=top_k)
    )


@dataclass
class Collected:
    """A sequence plus everything its sink received."""

    seq: Sequence
    items: list[AudioChunk | BaseException] = field(default_factory=list)

    @property
    def chunks(self) -> list[AudioChunk]:
        return [c for c in self.items if isinstance(c, AudioChunk)]

    @property
    def codes(self) -> np.ndarray:
        return np.concatenate([c.codes for c in self.chunks]) if self.chunks else np.zeros((0, 32), np.int64)

    @property
    def pcm(self) -> np.ndarray:
        return np.concatenate([c.pcm for c in self.chunks]) if self.chunks else np.zeros(0, np.float32)


def sequence(req: GenerationRequest) -> Collected:
    prompt = build_prompt(tokenizer(), req.text, req.speaker, [], req.max_frames)
    items: list[AudioChunk | BaseException] = []
    seq = Sequence(req, prompt.tokens, prompt.mask, req.sampling.seed or 0, items.append, req.max_frames)
    return Collected(seq, items)


def run_until_idle(loop: EngineLoop, limit: int = 200) -> int:
    steps = 0
    while loop.run_once():
        steps += 1
        assert steps < limit, "engine loop did not go idle"
    return steps


def run_alone(req: GenerationRequest, **loop_kwargs: object) -> Collected:
    loop = make_loop(**loop_kwargs)  # type: ignore[arg-type]
    got = sequence(req)
    loop.submit(got.seq)
    run_until_idle(loop)
    return got


def torch_calls(fn: Callable[[], object]) -> list[str]:
    """The calls into torch's C functions and methods that `fn` makes from Python (each may give up
    the GIL and wait to take it back)."""
    seen: list[str] = []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            module = getattr(arg, "__module__", None) or type(owner).__module__ or ""
            if module.startswith("torch") or isinstance(owner, torch.Tensor):
                seen.append(getattr(arg, "__qualname__", repr(arg)))

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen
