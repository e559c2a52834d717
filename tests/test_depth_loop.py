"""The one-row frame's persistent depth loop (`kernels.depth_loop`): its logits are the depth
decoder's over the codes it drew, each code is the reference sampler's draw from them, it leaves its
counters zero for the next launch, and it runs only where it should.

Compiled on a CUDA device (where these tests carry the `gpu` mark, and the full-size decoder's
check runs too), else under Triton's CPU interpreter, one program taking every item in order."""

from __future__ import annotations

import copy

import pytest
import torch

from serve_app.model import fast_step
from serve_app.model.fast_step import FastStep
from serve_app.model.kernels import depth_loop
from serve_app.model.sampling import draw_counter, sample_top_k
from tests import support_engine as se

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [pytest.mark.usefixtures("one_thread"), *([pytest.mark.gpu] if DEVICE.type == "cuda" else [])]


def reference_logits(model, h: torch.Tensor, codes: torch.Tensor, fast: FastStep) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Codebooks 2..31's logits (30, V) of the eager depth decoder fed the frame's codes, every
    position in one pass over a fresh cache (on a copy of the model: it writes its caches)."""
    model = copy.deepcopy(model)
    vocab, n = fast.vocab, fast.num_codebooks
    rows = [model.projection(h)] + [fast.depth_inputs[codes[:, i] + i * vocab] for i in range(n - 1)]
    x = torch.stack(rows, dim=1).float()
    model.float()
    positions = torch.arange(n, device=h.device)[None]
    out = model.decoder(x, positions, None, n)[0]
    limit = fast.noise_columns.shape[0]
    return torch.stack([out[c] @ model.audio_head[c - 1][:, :limit] for c in range(2, n)])


def run_frames(model, vocab_limit: int, frames: int, temperature: float, top_k: int):  # type: ignore[no-untyped-def]
    fast = FastStep(model, vocab_limit, True, linear_max_batch=1 << 16)
    assert fast._depth_loop is not None
    gen = torch.Generator().manual_seed(3)
    results = []
    for f in range(frames):
        h = (torch.randn(1, model.cfg.backbone.dim, generator=gen) * 0.5).to(DEVICE, model.audio_head.dtype)
        sampling = tuple(
            torch.tensor(v, device=DEVICE) for v in ([temperature], [top_k], [11], [f])
        )
        codes = fast.depth_frame(h, *sampling)
        results.append((h, sampling, codes.clone(), fast._depth_loop.logits.clone()))
        assert not fast._depth_loop.done.any(), "the launch leaves its counters zero"
    return fast, results


def check_frames(model, fast: FastStep, results, atol: float, rtol: float) -> None:  # type: ignore[no-untyped-def]
    for h, (temperature, top_k, seeds, frame), codes, logits in results:
        assert codes.shape == (1, fast.num_codebooks)
        expected = reference_logits(model, h, codes, fast)
        torch.testing.assert_close(logits.float(), expected, atol=atol, rtol=rtol)
        for i, c in enumerate(range(2, fast.num_codebooks)):
            drawn = sample_top_k(
                logits[i : i + 1].float(), temperature, top_k, seeds, draw_counter(frame, c), fast.noise_columns
            )
            assert int(drawn) == int(codes[0, c]), f"codebook {c}: the draw from the loop's logits"


@pytest.mark.parametrize("vocab_limit, top_k", [(64, 8), (70, 80)], ids=["k-8", "k-80-and-a-partial-head-tile"])
@torch.inference_mode()
def test_the_loops_logits_are_the_decoders_over_its_codes_and_its_codes_their_draws(
    vocab_limit: int, top_k: int
) -> None:
    model = se.wide_head_model().to(DEVICE)
    model.setup_caches(2)
    fast, results = run_frames(model, vocab_limit, 2, 0.9, top_k)
    check_frames(model, fast, results, atol=1e-4, rtol=1e-4)
    # Greedy rows draw the largest logit.
    fast, results = run_frames(model, 64, 1, 1.0, 1)
    _, _, codes, logits = results[0]
    assert torch.equal(codes[0, 2:], logits.float().argmax(dim=1))


@torch.inference_mode()
def test_the_loop_leaves_the_models_weights_and_caches_where_other_steps_read_them() -> None:
    """Packing moves the decoder's weights into one buffer, its modules' parameters views of it:
    the same values, packed once however many step functions share the model."""
    model = se.wide_head_model().to(DEVICE)
    model.setup_caches(2)
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    first = FastStep(model, 64, True, linear_max_batch=1 << 16)
    second = FastStep(model, 64, True, linear_max_batch=1 << 16)
    assert first._depth_loop.weights is second._depth_loop.weights
    for key, value in model.decoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    wqkv = model.decoder.layers[1].attention.wqkv.weight
    layout = first._depth_loop.layout
    start = (layout.layer + layout.qkv) * wqkv.element_size()
    assert wqkv.data_ptr() == first._depth_loop.weights.data_ptr() + start
    k_all = model.decoder.caches[0]
    assert model.decoder.layers[1].attention.cache().k.data_ptr() == k_all[1].data_ptr()


def test_the_loop_runs_only_one_row_frames_of_the_fused_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    model = se.wide_head_model().to(DEVICE)
    model.setup_caches(2)
    assert FastStep(model, 64, fused_attention=False)._depth_loop is None
    assert FastStep(model, 64, True, linear_max_batch=0)._depth_loop is None  # cuBLAS's projections
    monkeypatch.setattr(fast_step, "DEPTH_LOOP", False)
    assert FastStep(model, 64, True, linear_max_batch=1 << 16)._depth_loop is None
    narrow = se.model()  # heads of 16 dims: the attention kernel's are 32 and up
    geo = depth_loop.geometry(narrow.decoder, narrow.cfg.audio_vocab_size, 64)
    assert not depth_loop.supports(geo)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the full-size decoder: on the GPU")
@torch.inference_mode()
def test_the_full_size_decoders_loop_in_bf16() -> None:
    """CSM-1B's depth decoder (random weights, bf16), every program resident and waiting on the
    others: the logits within bf16's tolerance of the eager decoder's over the same codes."""
    from serve_app.model.tiny import CSM_1B_CONFIG, random_model

    model = random_model(CSM_1B_CONFIG, device="cuda").eval().to(torch.bfloat16)
    model.setup_caches(1)
    fast, results = run_frames(model, 2048, 2, 0.9, 50)
    assert fast._depth_loop.grid > 1
    check_frames(model, fast, results, atol=0.08, rtol=0.05)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="residency: on the GPU (the interpreter runs one program)")
@torch.inference_mode()
def test_more_programs_an_sm_than_fit_are_refused_not_launched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program not resident would leave the others waiting on its items for ever: the launch is
    refused instead, and a setting that fits runs after it."""
    model = se.wide_head_model().to(DEVICE)
    model.setup_caches(2)
    monkeypatch.setattr(depth_loop, "RESIDENT", 64)  # 64 x 128 threads: more than an SM holds
    with pytest.raises(RuntimeError, match="do not fit"):
        run_frames(model, 64, 1, 0.9, 8)
    monkeypatch.setattr(depth_loop, "RESIDENT", 2)
    fast, results = run_frames(model, 64, 1, 0.9, 8)
    check_frames(model, fast, results, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_attention_with_its_older_keys_loaded_before_the_wait_gives_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`KEYS_BEFORE_WAIT`: the older keys loaded ahead and the new key from registers
    (`attend_new_row`) give `attend_row`'s logits and codes bit for bit (on the GPU at full size,
    where every program has a gate/up item in every layer, as the switch needs)."""
    if DEVICE.type == "cuda":
        from serve_app.model.tiny import CSM_1B_CONFIG, random_model

        model, vocab_limit = random_model(CSM_1B_CONFIG, device="cuda").eval().to(torch.bfloat16), 2048
    else:
        model, vocab_limit = se.wide_head_model(), 64
    model.setup_caches(1)
    runs = {}
    for ahead in (False, True):
        monkeypatch.setattr(depth_loop, "KEYS_BEFORE_WAIT", ahead)
        fast, results = run_frames(model, vocab_limit, 2, 0.9, 8)
        assert fast._depth_loop.keys_ahead is ahead  # the switch ran where asked
        runs[ahead] = [(codes, logits) for _, _, codes, logits in results]
    for (codes, logits), (codes_ahead, logits_ahead) in zip(runs[False], runs[True], strict=True):
        assert torch.equal(logits_ahead, logits)
        assert torch.equal(codes_ahead, codes)


@pytest.mark.parametrize("keys_ahead", [False, True], ids=["keys-after-the-wait", "keys-before-the-wait"])
@torch.inference_mode()
def test_with_the_next_projection_tile_ahead_the_loops_logits_are_the_decoders(
    monkeypatch: pytest.MonkeyPatch, keys_ahead: bool
) -> None:
    """`NEXT_TILE_AHEAD`: each projection's tile carried in from the item before as 32-bit words:
    the logits are still the eager decoder's over the codes the loop drew, each code the reference
    sampler's draw (on the CPU in fp32, a weight a word; on the GPU at full size in bf16, two a
    word, every program resident)."""
    monkeypatch.setattr(depth_loop, "NEXT_TILE_AHEAD", True)
    monkeypatch.setattr(depth_loop, "KEYS_BEFORE_WAIT", keys_ahead)
    if DEVICE.type == "cuda":
        from serve_app.model.tiny import CSM_1B_CONFIG, random_model

        model = random_model(CSM_1B_CONFIG, device="cuda").eval().to(torch.bfloat16)
        model.setup_caches(1)
        fast, results = run_frames(model, 2048, 2, 0.9, 50)
        check_frames(model, fast, results, atol=0.08, rtol=0.05)
    else:
        model = se.wide_head_model()
        model.setup_caches(1)
        fast, results = run_frames(model, 64, 2, 0.9, 8)
        check_frames(model, fast, results, atol=1e-4, rtol=1e-4)
    assert not fast._depth_loop.done.any()


@torch.inference_mode()
def test_bf16_weights_two_to_a_word_give_the_loops_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """`NEXT_TILE_AHEAD` over bf16 weights, two to a 32-bit word (the even column in the low half,
    the even and odd columns summed apart): the logits of the loop without it, to fp32 rounding,
    and so its codes."""
    model = se.wide_head_model().to(DEVICE).to(torch.bfloat16)
    model.setup_caches(1)
    runs = {}
    for ahead in (False, True):
        monkeypatch.setattr(depth_loop, "NEXT_TILE_AHEAD", ahead)
        _, results = run_frames(model, 64, 2, 0.9, 8)
        runs[ahead] = [(codes, logits) for _, _, codes, logits in results]
    for (codes, logits), (codes_ahead, logits_ahead) in zip(runs[False], runs[True], strict=True):
        torch.testing.assert_close(logits_ahead.float(), logits.float(), atol=1e-2, rtol=1e-2)
        assert torch.equal(codes_ahead, codes)


@torch.inference_mode()
def test_items_handed_out_by_ticket_give_the_same_bits_however_few_programs_are_resident(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`TICKETS`: the same logits and codes as items by program number; on the GPU with far more
    programs than can be resident at once, which by program number would never finish."""
    model = se.wide_head_model().to(DEVICE)
    model.setup_caches(1)
    runs = {}
    for tickets in (False, True):
        monkeypatch.setattr(depth_loop, "TICKETS", tickets)
        if tickets and DEVICE.type == "cuda":
            monkeypatch.setattr(depth_loop, "RESIDENT", 64)  # 64 x 128 threads an SM: most wait their turn
        fast, results = run_frames(model, 64, 2, 0.9, 8)
        runs[tickets] = [(codes, logits) for _, _, codes, logits in results]
        assert not fast._depth_loop.done.any()
    for (codes, logits), (codes_t, logits_t) in zip(runs[False], runs[True], strict=True):
        assert torch.equal(logits_t, logits)
        assert torch.equal(codes_t, codes)


@pytest.mark.parametrize("size", ["tiny", "csm-1b"])
@torch.inference_mode()
def test_each_programs_same_items_every_step_give_the_same_bits(monkeypatch: pytest.MonkeyPatch, size: str) -> None:
    """`SAME_ITEMS_EACH_STEP`: the same logits and codes as items by launch numbering. On the GPU at
    full size a step's items are no multiple of the programs (each program's share of a step
    differs), and the tiny decoder's step has fewer items than there are programs (the rest have
    none); the interpreter runs one program."""
    if size == "csm-1b":
        if DEVICE.type != "cuda":
            pytest.skip("the full-size decoder on the GPU only")
        from serve_app.model.tiny import CSM_1B_CONFIG, random_model

        model = random_model(CSM_1B_CONFIG, device="cuda").eval().to(torch.bfloat16)
        vocab_limit, top_k = 2048, 50
    else:
        model, vocab_limit, top_k = se.wide_head_model().to(DEVICE), 64, 8
    model.setup_caches(1)
    runs = {}
    for same in (False, True):
        monkeypatch.setattr(depth_loop, "SAME_ITEMS_EACH_STEP", same)
        _, results = run_frames(model, vocab_limit, 3, 0.9, top_k)
        runs[same] = [(codes, logits) for _, _, codes, logits in results]
    for (codes, logits), (codes_same, logits_same) in zip(runs[False], runs[True], strict=True):
        assert torch.equal(logits_same, logits)
        assert torch.equal(codes_same, codes)


@pytest.mark.parametrize("vocab_limit, top_k", [(64, 8), (70, 80), (64, 1)], ids=["k-8", "k-80", "greedy"])
@torch.inference_mode()
def test_the_draws_other_kth_score_path_draws_the_reference_ids(
    monkeypatch: pytest.MonkeyPatch, vocab_limit: int, top_k: int
) -> None:
    """The draw's k-th score by the path `DRAW_KTH_BY_BITS` does not ship (bit by bit, or the bitonic
    top-64 / sort; the shipped one is the other tests'): the loop's logits are still the decoder's
    and each code the reference sampler's draw from them, for k within the top-64 path's reach, past
    it, and greedy."""
    monkeypatch.setattr(depth_loop, "DRAW_KTH_BY_BITS", not depth_loop.DRAW_KTH_BY_BITS)
    model = se.wide_head_model().to(DEVICE)
    model.setup_caches(1)
    fast, results = run_frames(model, vocab_limit, 2, 0.9, top_k)
    check_frames(model, fast, results, atol=1e-4, rtol=1e-4)
