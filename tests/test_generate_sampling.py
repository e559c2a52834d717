"""Sampling: per-row seeded streams, top-k/temperature semantics, reproducible generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.engine.generator import Generator
from serve_app.engine.types import GenerationRequest, SamplingParams
from serve_app.model.loading import LoadedModel, load_model
from serve_app.model.sampling import (
    NOISE_BITS,
    bits_to_uniform,
    noise_bits,
    noise_columns,
    sample_top_k,
    splitmix64,
    uniform_noise,
)
from tests.support_sampling import (
    MASK64,
    chi_square_p,
    seed_with_noise_at,
    splitmix64_reference,
    top_k_distribution,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny-random", device="cpu")


def test_int64_hash_matches_the_arbitrary_precision_reference() -> None:
    xs = [0, 1, 42, 2**62 + 7, -5, -(2**63)]
    got = splitmix64(torch.tensor(xs)).tolist()
    assert [g & MASK64 for g in got] == [splitmix64_reference(x & MASK64) for x in xs]


def test_noise_is_uniform_and_keyed_by_seed_and_counter() -> None:
    columns = noise_columns(50_000)
    u = uniform_noise(torch.tensor([7, 7, 8]), torch.tensor([0, 1, 0]), columns)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - 12**-0.5) < 0.01
    assert not torch.equal(u[0], u[1]) and not torch.equal(u[0], u[2])
    assert torch.equal(u[0], uniform_noise(torch.tensor([7]), torch.tensor([0]), columns)[0])


def test_the_extreme_noise_values_stay_strictly_inside_zero_and_one() -> None:
    extremes = bits_to_uniform(torch.tensor([0, 2**NOISE_BITS - 1]))
    assert extremes.tolist() == [2.0**-24, 1 - 2.0**-24]  # exact in float32
    race = -torch.log(extremes)
    assert bool((race > 0).all()) and bool(torch.isfinite(race).all())


def test_crafted_seeds_give_the_largest_noise_where_asked() -> None:
    seeds = torch.tensor([seed_with_noise_at(column=c, counter=k) for c, k in [(3, 0), (40, 7), (2047, 93)]])
    bits = noise_bits(seeds, torch.tensor([0, 7, 93]), noise_columns(2048))
    assert [int(bits[i, c]) for i, c in enumerate([3, 40, 2047])] == [2**NOISE_BITS - 1] * 3


def draw(logits: torch.Tensor, n: int, temperature: float, top_k: int, vocab_limit: int | None = None,
         max_top_k: int | None = None, seed: int = 11) -> torch.Tensor:
    rows = logits.expand(n, -1)
    return sample_top_k(
        rows,
        torch.full((n,), temperature),
        torch.full((n,), top_k, dtype=torch.long),
        torch.full((n,), seed),
        torch.arange(n),
        noise_columns(vocab_limit or logits.shape[-1]),
        max_top_k,
    )


def test_the_largest_noise_on_a_masked_id_never_draws_it() -> None:
    """Each row's seed puts the largest possible noise on an id outside its top k: were the uniform
    1.0 there, its race would be 0, its 0 / 0 a NaN, and the argmax would pick it."""
    logits = torch.randn(64, generator=torch.Generator().manual_seed(4)) * 2
    top = set(torch.topk(logits, 5).indices.tolist())
    masked = [c for c in range(64) if c not in top]
    seeds = torch.tensor([seed_with_noise_at(column=c, counter=i) for i, c in enumerate(masked)])
    ids = sample_top_k(
        logits.expand(len(masked), -1),
        torch.full((len(masked),), 0.9),
        torch.full((len(masked),), 5),
        seeds,
        torch.arange(len(masked)),
        noise_columns(64),
    )
    assert set(ids.tolist()) <= top


def test_draws_follow_the_exact_tempered_top_k_distribution() -> None:
    """Pearson's chi-square against the exact distribution; the same test rejects a near miss (the
    temperature a fifth off), so it has the power to catch a biased sampler."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.2, 0.0, -1.0, -3.0])
    draws = draw(logits[None], 20_000, temperature=0.8, top_k=5)
    assert chi_square_p(draws, top_k_distribution(logits, 0.8, 5)) > 1e-3
    assert set(draws.tolist()) == {0, 1, 2, 3, 4}  # the top 5, every one of them
    assert chi_square_p(draws, top_k_distribution(logits, 1.0, 5)) < 1e-6
    assert chi_square_p(draws, top_k_distribution(logits, 0.8, 6)) < 1e-6


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
