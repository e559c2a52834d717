"""The first Engine (tiny-random preset) through the SpeechEngine interface."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.engine.engine import Engine
from serve_app.engine.interface import SpeechEngine
from serve_app.engine.types import (
    FRAME_SAMPLES,
    FinishReason,
    GenerationRequest,
    PromptTooLongError,
    SamplingParams,
    Segment,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_preset("tiny-random", device="cpu")


def run(coro):  # each test its own event loop: the engine must not bind to one
    return asyncio.run(coro)


def req(seed: int = 0, frames: int = 4, **kw) -> GenerationRequest:
    return GenerationRequest(
        text=kw.pop("text", "hello"),
        max_audio_length_ms=frames * 80,
        sampling=SamplingParams(seed=seed),
        **kw,
    )


def test_engine_satisfies_the_interface_and_reports_itself(engine: Engine) -> None:
    assert isinstance(engine, SpeechEngine)
    info = run(engine.info())
    assert info["model"] == "tiny-random" and info["device"] == "cpu"
    assert (info["sample_rate"], info["num_codebooks"], info["max_positions"]) == (24_000, 32, 2048)
    run(engine.check_health())


def test_generate_returns_pcm_for_every_frame_and_is_reproducible(engine: Engine) -> None:
    audio = run(engine.generate(req(seed=3)))
    assert audio.codes.shape == (4, 32) and audio.finish_reason is FinishReason.LENGTH
    assert audio.pcm.dtype == np.float32 and audio.pcm.shape == (4 * FRAME_SAMPLES,)
    assert np.array_equal(run(engine.generate(req(seed=3))).codes, audio.codes)
    # Streaming delivers the same utterance, in however many chunks; only the last one ends it.
    chunks = run(_collect(engine.stream(req(seed=3))))
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert sum(c.frames for c in chunks) == 4
    assert np.array_equal(np.concatenate([c.codes for c in chunks]), audio.codes)
    streamed = np.concatenate([c.pcm for c in chunks])
    assert streamed.shape == audio.pcm.shape and np.allclose(streamed, audio.pcm, atol=1e-4)


async def _collect(agen):
    return [c async for c in agen]


def test_context_audio_is_encoded_and_codes_are_used_directly(engine: Engine) -> None:
    pcm = (np.random.RandomState(0).randn(FRAME_SAMPLES * 2 + 10) * 0.1).astype(np.float32)
    codes = run(engine.encode_audio(pcm))
    assert codes.shape == (3, 32) and codes.dtype == np.int64
    by_audio = run(engine.generate(req(seed=1, context=[Segment(text="before", speaker=1, audio=pcm)])))
    by_codes = run(engine.generate(req(seed=1, context=[Segment(text="before", speaker=1, codes=codes)])))
    no_context = run(engine.generate(req(seed=1)))
    assert np.array_equal(by_audio.codes, by_codes.codes)
    assert not np.array_equal(by_audio.codes, no_context.codes)


def test_bad_requests_raise_value_errors(engine: Engine) -> None:
    with pytest.raises(ValueError, match="empty"):
        run(engine.generate(req(text="  ")))
    with pytest.raises(PromptTooLongError):
        run(engine.generate(req(text="x" * 100, frames=2000)))
    with pytest.raises(ValueError, match="codes"):
        run(engine.generate(req(context=[Segment(text="c", speaker=0, codes=np.full((2, 32), 4096))])))


def test_generation_runs_off_the_event_loop(engine: Engine) -> None:
    async def main() -> int:
        ticks = 0
        task = asyncio.create_task(engine.generate(req(frames=6)))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.005)
        await task
        return ticks

    assert run(main()) > 3
