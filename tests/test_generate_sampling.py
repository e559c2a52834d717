"""Sampling: per-row seeded streams, top-k/temperature semantics, reproducible generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.engine.generator import Generator
from serve_app.engine.sampling import sample_top_k, splitmix64, uniform_noise
from serve_app.engine.types import GenerationRequest, SamplingParams
from serve_app.model.loading import LoadedModel, load_model

MASK64 = (1 << 64) - 1


def splitmix64_reference(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny-random", device="cpu")


def test_int64_hash_matches_the_arbitrary_precision_reference() -> None:
    xs = [0, 1, 42, 2**62 + 7, -5, -(2**63)]
    got = splitmix64(torch.tensor(xs)).tolist()
    assert [g & MASK64 for g in got] == [splitmix64_reference(x & MASK64) for x in xs]


def test_noise_is_uniform_and_keyed_by_seed_and_counter() -> None:
    u = uniform_noise(torch.tensor([7, 7, 8]), torch.tensor([0, 1, 0]), 50_000)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - 12**-0.5) < 0.01
    assert not torch.equal(u[0], u[1]) and not torch.equal(u[0], u[2])
    assert torch.equal(u[0], uniform_noise(torch.tensor([7]), torch.tensor([0]), 50_000)[0])


def draw(logits: torch.Tensor, n: int, temperature: float, top_k: int, **kw: int) -> torch.Tensor:
    rows = logits.expand(n, -1)
    return sample_top_k(
        rows,
        torch.full((n,), temperature),
        torch.full((n,), top_k, dtype=torch.long),
        torch.full((n,), 11),
        torch.arange(n),
        **kw,
    )


def test_draws_follow_the_tempered_top_k_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 20_000
    counts = torch.bincount(draw(logits, n, temperature=0.7, top_k=4), minlength=6).float() / n
    expected = torch.softmax(logits[0, :4] / 0.7, dim=0)
    assert counts[4:].sum() == 0  # outside the top 4: never
    torch.testing.assert_close(counts[:4], expected, atol=0.015, rtol=0)


def test_top_k_one_is_greedy_and_vocab_limit_cuts_the_tail() -> None:
    logits = torch.tensor([[0.0, 0.1, 3.0, 5.0]])
    assert draw(logits, 50, temperature=5.0, top_k=1).unique().tolist() == [3]
    assert draw(logits, 50, temperature=1.0, top_k=1, vocab_limit=3).unique().tolist() == [2]
    assert set(draw(logits, 200, temperature=1.0, top_k=4, vocab_limit=2).tolist()) == {0, 1}
    # A static bound on top_k (no full sort) gives the same draws.
    assert torch.equal(
        draw(logits, 64, temperature=1.0, top_k=2), draw(logits, 64, temperature=1.0, top_k=2, max_top_k=3)
    )


def request(seed: int, text: str = "seeded", frames: int = 6) -> GenerationRequest:
    return GenerationRequest(text=text, max_audio_length_ms=frames * 80, sampling=SamplingParams(seed=seed))


def test_same_seed_same_codes_other_seed_other_codes(tiny: LoadedModel) -> None:
    gen = Generator(tiny.model, tiny.tokenizer, tiny.codec, max_batch_size=3)
    first, second = gen.generate_codes([request(1)]), gen.generate_codes([request(1)])
    other = gen.generate_codes([request(2)])
    assert torch.equal(first[0].codes, second[0].codes)
    assert not torch.equal(first[0].codes, other[0].codes)
    # A request's codes do not depend on the requests batched with it.
    batched = gen.generate_codes([request(5, "another text", 3), request(1), request(2, "x", 9)])
    assert torch.equal(batched[1].codes, first[0].codes)
    assert np.all(batched[1].codes.numpy() < 2048)  # only decodable codes
