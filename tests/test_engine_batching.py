"""Continuous batching changes nothing for a request: it gets the codes it gets alone (and the codes of
the reference generator), whatever joins or leaves around it."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from serve_app.engine.generator import Generator
from tests import support_engine as se

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("top_k", [1, 50], ids=["greedy", "seeded"])
def test_joining_and_leaving_requests_get_their_solo_codes(top_k: int) -> None:
    reqs = [
        se.request("hello there", frames=7, seed=11, top_k=top_k),
        se.request("a longer sentence to say", frames=2, seed=22, top_k=top_k),
        se.request("third", frames=3, seed=33, top_k=top_k),
    ]
    solo = [se.run_alone(r, n_slots=2).codes for r in reqs]

    loop = se.make_loop(n_slots=2)
    a, b, c = (se.sequence(r) for r in reqs)
    loop.submit(a.seq)
    loop.run_once()
    loop.run_once()
    loop.submit(b.seq)  # joins at a's frame 2
    loop.submit(c.seq)  # no free slot: waits until b leaves, then joins mid-way through a
    loop.run_once()
    assert c.seq.slot is None
    se.run_until_idle(loop)
    assert c.seq.slot == b.seq.slot == 1 and a.seq.slot == 0

    for got, ref, r in zip((a, b, c), solo, reqs):
        assert got.codes.shape == (r.max_frames, 32)
        np.testing.assert_array_equal(got.codes, ref)
    assert not np.array_equal(a.codes[:2], b.codes)  # distinct requests really differ
    # a alone (2), b alongside a (2: no step past its length), a alone until b's last chunk is out and
    # its slot free (1: b's rest is decoded behind its last step), c alongside a's last two frames,
    # then c alone (1).
    assert loop.steps == 2 + 2 + 1 + 2 + 1


def test_engine_codes_equal_the_reference_generator() -> None:
    reqs = [se.request("hello there", frames=4, seed=7), se.request("reference", frames=3, seed=8, top_k=1)]
    ref = Generator(se.model(), se.tokenizer(), se.codec(), max_batch_size=2).generate_codes(reqs)
    loop = se.make_loop(n_slots=4)
    got = [se.sequence(r) for r in reqs]
    loop.submit(got[0].seq)
    loop.run_once()
    loop.submit(got[1].seq)
    se.run_until_idle(loop)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g.codes, r.codes.numpy())
        assert g.chunks[-1].finish_reason is r.finish_reason


def test_seed_changes_the_codes() -> None:
    one = se.run_alone(se.request("same text", frames=3, seed=1)).codes
    again = se.run_alone(se.request("same text", frames=3, seed=1)).codes
    other = se.run_alone(se.request("same text", frames=3, seed=2)).codes
    np.testing.assert_array_equal(one, again)
    assert not np.array_equal(one, other)


def test_step_observer_hears_batch_size_and_queue_depth_changes() -> None:
    """The loop reports each change of its batch size and waiting queue (the metrics gauges' source)."""
    heard: list[tuple[int, int]] = []
    loop = se.make_loop(n_slots=1)
    loop.on_step = lambda batch, queue: heard.append((batch, queue))
    a, b = (se.sequence(se.request(text, frames=2, seed=i)) for i, text in enumerate(("one", "two")))
    loop.submit(a.seq)
    loop.submit(b.seq)  # one slot: b waits behind a
    se.run_until_idle(loop)
    assert heard[0] == (1, 1)  # a stepping, b queued
    assert (1, 0) in heard  # b admitted once a left
    assert heard[-1] == (0, 0)  # idle again
    assert all(x != y for x, y in itertools.pairwise(heard))  # only changes are reported


def test_joining_slots_get_their_prompt_position_seed_and_sampling_settings_exactly() -> None:
    """The per-slot inputs reach the device together (`arming_rows`); each lands in its own slot
    bit for bit, a negative seed and a temperature's float32 bits included."""
    import dataclasses

    import torch

    from serve_app.engine.types import SamplingParams

    loop = se.make_loop(n_slots=4)
    settings = [(0.7, 50, -(2**61) + 3), (1.3, 1, 2**62 + 5)]
    joined = []
    for i, (temperature, top_k, seed) in enumerate(settings):
        req = dataclasses.replace(
            se.request(f"hello there number {i}", 4), sampling=SamplingParams(temperature, top_k, seed)
        )
        collected = se.sequence(req)
        collected.seq.slot = 2 - i
        joined.append(collected.seq)
    runner = loop.runner
    runner.start(joined)
    for seq, (temperature, top_k, seed) in zip(joined, settings, strict=True):
        slot = seq.slot
        assert runner.temperature[slot].item() == np.float32(temperature)
        assert runner.top_k[slot].item() == top_k
        assert runner.seeds[slot].item() == seed
        assert runner.positions[slot].item() == seq.prompt_len - 1
        want = runner.model.embed_rows(seq.tokens[-1:][None], seq.mask[-1:][None])[0, 0]
        torch.testing.assert_close(runner.embeds[slot], want.to(runner.embeds.dtype))


@pytest.mark.parametrize(
    "bad", [{"seed": 2**63}, {"seed": -(2**63) - 1}, {"top_k": 2**63}, {"temperature": float("nan")}]
)
def test_sampling_settings_the_engine_cannot_hold_are_refused_before_they_reach_an_admission(
    bad: dict[str, float],
) -> None:
    """A seed or top-k beyond 64 bits used to pass, then fail the whole admission it joined (its
    neighbours got its OverflowError); a NaN temperature passed `temperature > 0`'s check."""
    from serve_app.engine.types import SamplingParams

    with pytest.raises(ValueError):
        SamplingParams(**bad)
    edge = SamplingParams(seed=2**63 - 1, top_k=2**63 - 1)  # the largest that fit still do
    neighbour = se.request("a neighbour", frames=3, seed=4)
    loop = se.make_loop(n_slots=2)
    first, second = se.sequence(neighbour), se.sequence(dataclasses.replace(neighbour, sampling=edge))
    second.seq.seed = edge.seed  # type: ignore[assignment]
    loop.submit(first.seq)
    loop.submit(second.seq)  # admitted together with the neighbour
    se.run_until_idle(loop)
    assert all(not isinstance(item, BaseException) for item in first.items + second.items)
    np.testing.assert_array_equal(first.codes, se.run_alone(neighbour).codes)
    assert second.codes.shape == (3, 32)


def test_a_prefill_that_fails_for_one_prompt_of_an_admission_fails_that_request_only(caplog) -> None:
    """Prompts admitted together are prefilled together; where that fails (out of memory on one long
    prompt, say), each is started alone, so only the request whose own prefill fails gets the
    error, and the others stream the codes they would have had alone."""
    reqs = [se.request("hello there", frames=3, seed=1), se.request("poison", frames=3, seed=2),
            se.request("third one", frames=3, seed=3)]
    solo = [se.run_alone(r, n_slots=3).codes for r in reqs]
    loop = se.make_loop(n_slots=3)
    start, attempts = loop.runner.start, []

    def start_unless_poisoned(seqs):  # type: ignore[no-untyped-def]
        attempts.append([s.request.text for s in seqs])
        if any(s.request.text == "poison" for s in seqs):
            raise RuntimeError("CUDA out of memory (a stand-in)")
        return start(seqs)

    loop.runner.start = start_unless_poisoned  # type: ignore[method-assign]
    got = [se.sequence(r) for r in reqs]
    for g in got:
        loop.submit(g.seq)
    with caplog.at_level("WARNING", logger="serve_app.engine.loop"):
        se.run_until_idle(loop)
    assert attempts == [["hello there", "poison", "third one"], ["hello there"], ["poison"], ["third one"]]
    for g, ref in ((got[0], solo[0]), (got[2], solo[2])):
        np.testing.assert_array_equal(g.codes, ref)
    [error] = got[1].items
    assert isinstance(error, RuntimeError) and "out of memory" in str(error)
    failed = [r for r in caplog.records if r.getMessage().startswith("prefill failed")]
    assert [r.request_ids for r in failed] == [[reqs[1].request_id]]
    assert loop.scheduler.counts()["running"] == 0 and loop.scheduler.free_slots == 3
