"""The fused decode-attention Triton kernel computes the unfused step's attention (RoPE, cache write,
GQA over each row's prefix, idle rows untouched), the fused projections compute norm/SwiGLU/residual
around their matmul, and the fused sampler draws the reference ids.

Compiled on a CUDA device (where these tests also carry the `gpu` mark), else under Triton's CPU
interpreter (`TRITON_INTERPRET`, set by conftest before anything imports Triton)."""

from __future__ import annotations

import math

import pytest
import torch

from serve_app.model.fast_step import FastStep
from serve_app.model.kernels import counters
from serve_app.model.kernels.decode_attention import launch
from tests import support_engine as se

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = 1e-5 if DEVICE.type == "cpu" else 1e-4  # compiled: another reduction order
pytestmark = [pytest.mark.usefixtures("one_thread"), *([pytest.mark.gpu] if DEVICE.type == "cuda" else [])]


def reference(qkv, positions, cos, sin, k_cache, v_cache, n_heads, n_kv_heads):  # type: ignore[no-untyped-def]
    b, d = qkv.shape[0], k_cache.shape[-1]
    q, k, v = qkv.split([n_heads * d, n_kv_heads * d, n_kv_heads * d], -1)
    q, k, v = q.view(b, n_heads, d), k.view(b, n_kv_heads, d), v.view(b, n_kv_heads, d)
    pos = positions.clamp(min=0)
    c, s = cos[pos][:, None], sin[pos][:, None]

    def rot(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)

    q, k = q * c + rot(q) * s, k * c + rot(k) * s
    out = torch.zeros(b, n_heads * d)
    for row in range(b):
        p = int(positions[row])
        if p < 0:
            continue
        k_cache[row, :, p], v_cache[row, :, p] = k[row], v[row]
        keys, values = k_cache[row, :, : p + 1], v_cache[row, :, : p + 1]
        scores = q[row].view(n_kv_heads, -1, d) @ keys.transpose(-1, -2) / math.sqrt(d)
        out[row] = (torch.softmax(scores, -1) @ values).reshape(-1)
    return out


@pytest.mark.parametrize(
    "heads, kv_heads, dim, positions",
    [(32, 8, 64, [5, -1, 70, 0]), (8, 2, 128, [31, 0, -1]), (4, 2, 32, [1, 40])],
    ids=["backbone", "depth", "smallest"],
)
def test_kernel_equals_reference_attention(heads: int, kv_heads: int, dim: int, positions: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    b, n_pos = len(positions), 80
    qkv = torch.randn(b, (heads + 2 * kv_heads) * dim, generator=gen)
    freqs = torch.outer(torch.arange(n_pos).float(), 1 / 500_000 ** (torch.arange(0, dim, 2).float() / dim))
    emb = torch.cat([freqs, freqs], -1)
    k_cache = torch.randn(b, kv_heads, n_pos + 1, dim, generator=gen)
    v_cache = torch.randn(b, kv_heads, n_pos + 1, dim, generator=gen)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    pos = torch.tensor(positions)
    k_dev, v_dev = k_cache.to(DEVICE), v_cache.to(DEVICE)
    got = launch(*(t.to(DEVICE) for t in (qkv, pos, emb.cos(), emb.sin())), k_dev, v_dev, heads, kv_heads)
    want = reference(qkv, pos, emb.cos(), emb.sin(), k_ref, v_ref, heads, kv_heads)
    torch.testing.assert_close(got.cpu(), want, rtol=TOL, atol=TOL)
    torch.testing.assert_close(
        k_dev.cpu(), k_ref, rtol=TOL, atol=TOL
    )  # new keys written, idle rows untouched
    torch.testing.assert_close(v_dev.cpu(), v_ref, rtol=0, atol=0)


def test_prompt_rows_attend_as_their_tokens_would_one_decode_step_at_a_time() -> None:
    """Two right-padded prompts in slots 2 and 0, flattened into rows (later tokens first, so no
    order of the programs hides a missing write): every row's key is written before any row attends,
    so each token sees the tokens before it in its prompt, as it would have as a decode step of its
    own; padding writes nothing and outputs zeros; slot 1 stays untouched."""
    import serve_app.model.kernels.decode_attention  # noqa: F401 - registers csm_serve::prompt_attention

    heads, kv_heads, dim, n_pos = 8, 2, 64, 40
    gen = torch.Generator().manual_seed(5)
    positions = torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, -1, -1]])
    slots = torch.tensor([2, 0])
    qkv = torch.randn(2, 5, (heads + 2 * kv_heads) * dim, generator=gen)
    freqs = torch.outer(torch.arange(n_pos).float(), 1 / 500_000 ** (torch.arange(0, dim, 2).float() / dim))
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    k_cache = torch.randn(3, kv_heads, n_pos + 1, dim, generator=gen)  # stale keys past each prompt
    v_cache = torch.randn(3, kv_heads, n_pos + 1, dim, generator=gen)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    want = torch.zeros(2, 5, heads * dim)
    for t in range(5):  # token by token, as decode steps would write and attend
        for i, slot in enumerate(slots.tolist()):
            if positions[i, t] >= 0:
                view = slice(slot, slot + 1)
                want[i, t] = reference(
                    qkv[i, t][None], positions[i, t][None], cos, sin, k_ref[view], v_ref[view], heads, kv_heads
                )[0]
    k_dev, v_dev = k_cache.to(DEVICE), v_cache.to(DEVICE)
    order = torch.arange(10).flip(0)  # row r holds token (r // 5, r % 5) of the flattened prompts
    got = torch.ops.csm_serve.prompt_attention(
        qkv.reshape(10, -1)[order].to(DEVICE),
        positions.reshape(-1)[order].to(DEVICE),
        slots.repeat_interleave(5)[order].to(DEVICE),
        cos.to(DEVICE),
        sin.to(DEVICE),
        k_dev,
        v_dev,
        heads,
        kv_heads,
    )
    torch.testing.assert_close(got.cpu()[order.argsort()].view(2, 5, -1), want, rtol=TOL, atol=TOL)
    torch.testing.assert_close(k_dev.cpu(), k_ref, rtol=TOL, atol=TOL)
    torch.testing.assert_close(v_dev.cpu(), v_ref, rtol=0, atol=0)
    torch.testing.assert_close(k_dev[1].cpu(), k_cache[1], rtol=0, atol=0)


def test_narrow_heads_take_the_unfused_path() -> None:
    model = se.model().to(DEVICE)  # heads of 16 and 8 dims
    assert not FastStep(model, 2048).fused
    with pytest.raises(ValueError, match="head sizes"):
        FastStep(model, 2048, fused_attention=True)
    assert FastStep(se.wide_head_model().to(DEVICE), 2048).fused == (DEVICE.type == "cuda")


@pytest.mark.parametrize(
    "split_k, in_kernel",
    [(1, False), (3, True), (4, True), (3, False)],
    ids=["one-pass", "split-3-summed-in-kernel", "split-4-summed-in-kernel", "split-3-reduce-kernel"],
)
@pytest.mark.parametrize("rows", [1, 3, 20])
@pytest.mark.parametrize("tma", [False, True], ids=["pointer-loads", "tma-loads"])
def test_fused_linear_equals_norm_swiglu_residual_around_a_matmul(
    rows: int, tma: bool, split_k: int, in_kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.nn.functional as F

    from serve_app.model.kernels import fused_linear as module
    from serve_app.model.kernels.fused_linear import fused_linear
    from serve_app.model.llama import RMSNorm

    gen = torch.Generator().manual_seed(rows)
    k, n = 96, 72  # n not a multiple of the tiles: masked edges; rows of 16-byte multiples (TMA)
    tiles = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "SPLIT_K": split_k, "num_warps": 4, "num_stages": 2}
    monkeypatch.setattr(module, "tile_config", lambda *_: tiles)  # of 4 splits the last has no K left
    monkeypatch.setattr(module, "IN_KERNEL_REDUCE_MAX_ROWS", 1 << 20 if in_kernel else 0)
    monkeypatch.setattr(module, "TMA_MIN_ROWS", 1 if tma else None)
    ready, launches = module._tma_ready, []
    monkeypatch.setattr(module, "_tma_ready", lambda *a: launches.append(ready(*a)) or launches[-1])
    counters._COUNTERS.clear()

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    x, w, res, w13, w_kn = rand(rows, k), rand(n, k), rand(rows, n), rand(2 * n, k), rand(k, n)
    norm = RMSNorm(k, eps=1e-5)
    norm.weight.data = torch.rand(k, generator=gen) + 0.5
    gate, up = (norm(x) @ w13.T).chunk(2, dim=-1)
    cases = {
        "norm": (
            fused_linear(*(t.to(DEVICE) for t in (x, w, norm.weight)), None, 1e-5, False),
            norm(x) @ w.T,
        ),
        "residual": (
            fused_linear(x.to(DEVICE), w.to(DEVICE), None, res.to(DEVICE), 0.0, False),
            res + x @ w.T,
        ),
        "norm-gate-up-swiglu": (
            fused_linear(x.to(DEVICE), w13.to(DEVICE), norm.weight.to(DEVICE), None, 1e-5, True),
            F.silu(gate) * up,
        ),
        # the depth heads: a (K, N) tensor read through its transposed view, sliced to a vocabulary limit
        "transposed": (
            fused_linear(x.to(DEVICE), w_kn.to(DEVICE).t()[:64], norm.weight.to(DEVICE), None, 1e-5, False),
            norm(x) @ w_kn[:, :64],
        ),
    }
    for name, (got, want) in cases.items():
        torch.testing.assert_close(got.cpu(), want, rtol=TOL, atol=10 * TOL, msg=name)
    assert launches[:4] == [tma] * 4, "every operand, the transposed head's too, can be described to TMA"
    if in_kernel:  # the tiles' last programs summed the slices and left their counters zero
        assert not module.tile_locks(DEVICE).any()
        again = fused_linear(x.to(DEVICE), w.to(DEVICE), None, res.to(DEVICE), 0.0, False)
        assert torch.equal(again, cases["residual"][0]), "split-K sums in a fixed order"


@pytest.mark.parametrize("split_k", [1, 4])
@pytest.mark.parametrize("positions", [[7], [3, -1, 12]], ids=["one-row", "three-rows-one-idle"])
def test_attention_folded_into_the_qkv_launch_equals_the_two_launches(
    positions: list[int], split_k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kv heads' last tiles attend inside the QKV projection: the same output and caches, bit
    for bit, as the projection followed by the attention kernel, and the head counters left zero."""
    from serve_app.model.kernels import fused_linear as module

    heads, kv_heads, dim, k, n_pos = 4, 2, 32, 64, 16
    gen = torch.Generator().manual_seed(len(positions) + split_k)
    n = (heads + 2 * kv_heads) * dim
    tiles = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "SPLIT_K": split_k, "num_warps": 4, "num_stages": 2}
    monkeypatch.setattr(module, "CONFIG_OVERRIDES", {(len(positions), n, k): tiles})
    counters._COUNTERS.clear()
    x, w = torch.randn(len(positions), k, generator=gen), torch.randn(n, k, generator=gen) / 8
    g = torch.rand(k, generator=gen) + 0.5
    freqs = torch.outer(torch.arange(n_pos).float(), 1 / 10_000 ** (torch.arange(0, dim, 2).float() / dim))
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    caches = torch.randn(2, len(positions), kv_heads, n_pos + 1, dim, generator=gen)
    args = [t.to(DEVICE) for t in (x, w, g)]
    rope = [t.to(DEVICE) for t in (torch.tensor(positions), cos, sin)]
    results, launched = [], []
    monkeypatch.setattr(module, "decode_attention_launch", lambda *a: launched.append(1) or launch(*a))
    for fold_rows in (0, 4):
        monkeypatch.setattr(module, "FOLD_ATTENTION_MAX_ROWS", fold_rows)
        launched.clear()
        k_cache, v_cache = caches[0].clone().to(DEVICE), caches[1].clone().to(DEVICE)
        out = module.fused_qkv_attention(*args, 1e-5, *rope, k_cache, v_cache, heads, kv_heads)
        assert len(launched) == (0 if fold_rows else 1), "one launch when folded, two otherwise"
        results.append((out.cpu(), k_cache.cpu(), v_cache.cpu()))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert results[0][0].abs().sum() > 0 and not results[0][0][[p < 0 for p in positions]].any()
    assert not module.head_locks(DEVICE).any() and not module.tile_locks(DEVICE).any()


def test_tma_loads_stage_every_buffer_in_shared_memory() -> None:
    """TMA loads are counted with a buffer per pipeline stage, pointer loads with one fewer: a tile
    that fits the pointer count may be shrunk for TMA, and every swept tile fits as it is."""
    from serve_app.model.kernels import fused_linear as module

    wide = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}
    assert module.fit_shared_memory(wide, 2, gate_up=True, tma=False) == wide  # 2 x 80 KiB staged
    assert module.fit_shared_memory(wide, 2, gate_up=True, tma=True)["BLOCK_K"] == 64  # 3 x 80 KiB do not fit
    for cls, n, k in module.TUNED:
        gate_up = n == 8192  # the CSM-1B gate/up projections
        tiles = module.tiles_for(cls, n, k, gate_up)
        tma = module.TMA_MIN_ROWS is not None and cls >= module.TMA_MIN_ROWS
        assert module.fit_shared_memory(tiles, 2, gate_up, tma) == tiles, (cls, n, k)


def test_each_batch_takes_the_tiles_of_the_smallest_class_that_holds_it() -> None:
    from serve_app.model.kernels import fused_linear as module

    classes = sorted({cls for cls, _, _ in module.TUNED})
    assert [module.batch_class(m) for m in (1, classes[0], classes[0] + 1)] == classes[:1] * 2 + classes[1:2]
    assert module.batch_class(10 * classes[-1]) == classes[-1]  # the largest serves every larger batch
    shapes = {(n, k) for _, n, k in module.TUNED}
    assert {(cls, n, k) for cls in classes for n, k in shapes} == set(module.TUNED)  # no shape left to the rule
    for m in (1, 200):
        tiles = module.tiles_for(m, 8192, 1024, gate_up=True)
        assert tiles["BLOCK_M"] >= min(m, 16) and tiles["SPLIT_K"] == 1  # gate/up needs whole sums
    assert module.tiles_for(3, 96, 40) == module.tile_config(3, 96, 40)  # an unswept shape


def test_a_step_with_fused_projections_makes_its_split_k_counters_before_any_capture() -> None:
    """The split-K tile counters and the folded attention's head counters, one set each."""
    from serve_app.model.kernels import fused_linear as module

    counters._COUNTERS.clear()
    FastStep(se.wide_head_model().to(DEVICE), 2048, fused_attention=True, linear_max_batch=4)
    tiles, heads = counters._COUNTERS.values()
    assert tiles is module.tile_locks(DEVICE) and not tiles.any()  # "cuda" and "cuda:0" share them
    assert heads is module.head_locks(DEVICE) and not heads.any()


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs")
def test_split_k_summed_in_kernel_replays_from_cuda_graphs_in_any_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Graphs replayed in another order than captured share the counters, which stay zero."""
    from serve_app.model.kernels import fused_linear as module

    tiles = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 4, "num_warps": 4, "num_stages": 2}
    monkeypatch.setattr(module, "CONFIG_OVERRIDES", {(1, 96, 512): tiles, (2, 96, 512): tiles})
    monkeypatch.setattr(module, "IN_KERNEL_REDUCE_MAX_ROWS", 2)
    gen = torch.Generator().manual_seed(9)
    w = torch.randn(96, 512, generator=gen).to(DEVICE, torch.bfloat16)
    g = (torch.rand(512, generator=gen) + 0.5).to(DEVICE, torch.bfloat16)
    xs = [torch.randn(m, 512, generator=gen).to(DEVICE, torch.bfloat16) for m in (1, 2)]
    want = [module.fused_linear(x, w, g, None, 1e-5, False) for x in xs]
    with pytest.raises(RuntimeError, match="before a CUDA-graph capture"):
        counters._COUNTERS.clear()
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            module.fused_linear(xs[0], w, g, None, 1e-5, False)
    module.reserve_tile_locks(DEVICE)
    graphs, outs = [], []
    for x in xs:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs.append(module.fused_linear(x, w, g, None, 1e-5, False))
        graphs.append(graph)
    for _ in range(3):
        for graph in reversed(graphs):
            graph.replay()
    torch.cuda.synchronize()
    for got, expected in zip(outs, want, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not module.tile_locks(DEVICE).any()


def test_dependent_launch_is_off_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.model.kernels import pdl

    for mode in pdl.MODES:
        monkeypatch.setattr(pdl, "MODE", mode)
        assert pdl.launch_options(torch.device("cpu")) == {"PDL_WAIT": False, "PDL_EARLY": False}
    monkeypatch.setattr(pdl, "MODE", "sometimes")
    with pytest.raises(ValueError, match="not one of"):
        pdl.launch_options(DEVICE)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="programmatic dependent launch")
@pytest.mark.parametrize("mode", ["wait", "early"])
@torch.inference_mode()
def test_dependent_launches_replay_the_fused_frame_bit_for_bit(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kernel waits for its predecessor before touching memory, so a graph of the whole fused
    step (projections, split-K sums, attention, sampler) gives the same bits in every mode."""
    from serve_app.model.kernels import pdl

    if not pdl.device_supports(DEVICE.index or 0):
        pytest.skip("this GPU or Triton has no programmatic dependent launch")
    model = se.wide_head_model().to(DEVICE, torch.bfloat16)
    model.setup_caches(3)
    gen = torch.Generator().manual_seed(3)
    embeds = torch.randn(3, model.cfg.backbone.dim, generator=gen).to(DEVICE, torch.bfloat16)
    positions = torch.tensor([4, 9, -1], device=DEVICE)
    sampling = tuple(
        torch.tensor(values, device=DEVICE) for values in ([0.9, 0.9, 1.0], [1, 50, 5], [3, 4, 5], [0, 2, 7])
    )
    outs = {}
    for current in ("off", mode):
        monkeypatch.setattr(pdl, "MODE", current)
        assert pdl.launch_options(DEVICE)["PDL_WAIT"] == (current != "off")
        fast = FastStep(model, 2048, fused_attention=True, linear_max_batch=4)

        def frame(fast: FastStep = fast) -> tuple[torch.Tensor, torch.Tensor]:
            h = fast.backbone_step(embeds, positions, 128)
            return h, fast.depth_frame(h, *sampling)

        frame()  # compiles the kernels outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = frame()
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        outs[current] = tuple(t.clone() for t in out)
    for got, want in zip(outs[mode], outs["off"], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_fused_projections_come_only_with_the_fused_attention() -> None:
    assert FastStep(se.wide_head_model(), 2048, fused_attention=False, linear_max_batch=4).linear_max_batch == 0
    fused = FastStep(se.wide_head_model(), 2048, fused_attention=True, linear_max_batch=4)
    assert fused.fused_linear_for(4) and not fused.fused_linear_for(5)


@torch.inference_mode()
@pytest.mark.parametrize(
    "linear_max_batch, frame_start, fold_rows",
    [(0, False, 0), (3, False, 0), (6, True, 3)],
    ids=["attention-only", "fused-projections", "fused-projections-frame-start-folded-attention"],
)
def test_fused_decode_step_equals_the_unfused_step(
    linear_max_batch: int, frame_start: bool, fold_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused step and frame give the unfused one's states and codes; with the fused frame start
    (6 rows: both positions of 3 slots) its first depth pass runs as prompt rows too, and with the
    attention folded into the QKV launch every one-token layer attends there."""
    from serve_app.model import fast_step
    from serve_app.model.kernels import fused_linear

    monkeypatch.setattr(fast_step, "FUSED_FRAME_START", frame_start)
    monkeypatch.setattr(fused_linear, "FOLD_ATTENTION_MAX_ROWS", fold_rows)
    can_fold, folds = fused_linear._can_fold, []
    monkeypatch.setattr(fused_linear, "_can_fold", lambda *a: folds.append(can_fold(*a)) or folds[-1])
    models = [se.wide_head_model().to(DEVICE), se.wide_head_model().to(DEVICE)]
    for m in models:
        m.setup_caches(3)
    plain = FastStep(models[0], 2048, fused_attention=False)
    fused = FastStep(models[1], 2048, True, linear_max_batch=linear_max_batch)
    assert fused.fused_linear_for(3) == bool(linear_max_batch)
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(3, models[0].cfg.backbone.dim, generator=gen).to(DEVICE)
    for pos in ([0, 4, -1], [1, 5, -1], [2, 6, 0]):  # a few steps, one row joining late
        positions = torch.tensor(pos, device=DEVICE)
        h_plain = plain.backbone_step(embeds, positions, 128)
        h_fused = fused.backbone_step(embeds, positions, 128)
        live = positions >= 0
        torch.testing.assert_close(h_fused[live], h_plain[live], rtol=TOL, atol=TOL)
        embeds = h_plain.clone()
    fused._sample = plain._sample  # type: ignore[method-assign]  # the sampler kernel: own tests

    def sample_for_next(logits: torch.Tensor, codebook: int, *sampling: torch.Tensor) -> tuple:
        ids = plain._sample(logits, codebook, *sampling)  # the copied rows as the kernel copies them
        last = codebook + 1 == fused.num_codebooks
        return ids, None if last else fused.depth_inputs[ids + codebook * fused.vocab]

    fused._sample_for_next = sample_for_next  # type: ignore[method-assign]
    args = tuple(
        torch.tensor(values, device=DEVICE)
        for values in ([0.9, 0.9, 1.0], [1, 50, 5], [3, 4, 5], [0, 2, 7])
    )
    passes: list[tuple[int, str]] = []  # (positions per row, attention) of each depth pass

    def record(module: torch.nn.Module, a: tuple) -> None:
        passes.append((a[1].shape[1], type(a[4].attention if len(a) > 4 else None).__name__))

    fused.model.decoder.register_forward_pre_hook(record)
    torch.testing.assert_close(fused.depth_frame(h_plain, *args), plain.depth_frame(h_plain, *args))
    first = "TritonPromptAttention" if frame_start else "TorchAttention"  # the fused or the eager pass
    assert passes[0] == (2, first) and len(passes) == fused.num_codebooks - 1
    assert any(folds) == bool(fold_rows) and (all(folds) or not fold_rows), "every layer folded, or none"


@pytest.mark.parametrize("attention", ["sdpa", "kernel"])
@torch.inference_mode()
def test_a_short_prompts_prefill_with_fused_projections_writes_the_eager_prefills_caches(
    attention: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts within `prefill_fused_rows` go through the fused projections (3-D rows flattened),
    attending through SDPA or the decode-attention kernel, longer ones through cuBLAS: either way
    the caches and hidden states are the eager prefill's."""
    models = [se.wide_head_model().to(DEVICE), se.wide_head_model().to(DEVICE)]
    for m in models:
        m.setup_caches(3)
    plain = FastStep(models[0], 2048, fused_attention=False)
    fused = FastStep(
        models[1], 2048, True, linear_max_batch=3, prefill_fused_rows=2 * 8, prefill_attention=attention
    )
    assert fused.prefill_fused_for(2, 8) and not fused.prefill_fused_for(2, 9)
    assert not plain.prefill_fused_for(1, 1)  # no fused step, no fused prefill
    assert FastStep(models[1], 2048, True, linear_max_batch=0).prefill_fused_rows == 0
    with pytest.raises(ValueError, match="prefill_attention"):
        FastStep(models[1], 2048, True, prefill_attention="flash")
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 200, (2, 8, 33), generator=gen)
    mask = torch.rand(2, 8, 33, generator=gen) > 0.3
    positions = torch.stack([torch.arange(8), torch.tensor([0, 1, 2, 3, 4, -1, -1, -1])])  # padding
    slots = torch.tensor([2, 0])
    from serve_app.model.kernels.backends import TritonProjections, TritonPromptAttention

    shapes: list[tuple[int, ...]] = []
    norm_linear = TritonProjections.norm_linear
    kernel_attends = []
    prompt_attend = TritonPromptAttention.attend

    def counted(self, x, norm, weight):  # type: ignore[no-untyped-def]
        shapes.append(tuple(x.shape))
        return norm_linear(self, x, norm, weight)

    def counted_attend(self, attention, qkv, inputs):  # type: ignore[no-untyped-def]
        kernel_attends.append(tuple(qkv.shape))
        return prompt_attend(self, attention, qkv, inputs)

    monkeypatch.setattr(TritonProjections, "norm_linear", counted)
    monkeypatch.setattr(TritonPromptAttention, "attend", counted_attend)
    hidden = []
    for fast in (plain, fused):
        args = (tokens.to(DEVICE), mask.to(DEVICE), positions.to(DEVICE), slots.to(DEVICE))
        hidden.append(fast.prefill(*args, kv_len=8))
    layers = len(models[0].backbone.layers)
    assert shapes == [(2, 8, models[0].cfg.backbone.dim)] * layers  # the fused prefill's QKV, a layer each
    assert len(kernel_attends) == (layers if attention == "kernel" else 0)
    valid = positions.to(DEVICE) >= 0
    torch.testing.assert_close(hidden[1][valid], hidden[0][valid], rtol=TOL, atol=TOL)
    for layer in (0, -1):
        caches = [m.backbone.layers[layer].attention.kv_cache for m in models]
        for slot, written in ((2, 8), (0, 5)):
            torch.testing.assert_close(
                caches[1].k[slot, :, :written], caches[0].k[slot, :, :written], rtol=TOL, atol=TOL
            )
            torch.testing.assert_close(
                caches[1].v[slot, :, :written], caches[0].v[slot, :, :written], rtol=TOL, atol=TOL
            )


@torch.inference_mode()
def test_prompts_in_the_step_write_and_attend_as_a_prefill_then_a_step() -> None:
    """Slots 0 and 2 are mid-utterance, slot 1 idle, slot 3 joins with a prompt of 6 rows: its first
    5 rows as prompt rows of the step's pass (padded with 3 rows of position -1), its last as its
    step row. The step's hidden states and every cache written equal a prefill and then a step."""
    models = [se.wide_head_model().to(DEVICE), se.wide_head_model().to(DEVICE)]
    for m in models:
        m.setup_caches(4)
    steps = [FastStep(m, 2048, True, linear_max_batch=1 << 16, prefill_attention="kernel") for m in models]
    assert all(f.prompts_in_step for f in steps)
    assert not FastStep(models[0], 2048, True, linear_max_batch=0).prompts_in_step
    gen = torch.Generator().manual_seed(11)

    def rows(b: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randint(0, 200, (b, t, 33), generator=gen).to(DEVICE)
        return tokens, (torch.rand(b, t, 33, generator=gen) > 0.3).to(DEVICE)

    history, history_mask = rows(2, 7)  # slots 0 and 2: 7 and 4 positions already written
    history_positions = torch.stack([torch.arange(7), torch.tensor([0, 1, 2, 3, -1, -1, -1])]).to(DEVICE)
    for fast in steps:
        fast.prefill(history, history_mask, history_positions, torch.tensor([0, 2], device=DEVICE), 8)
    prompt, prompt_mask = rows(1, 5)
    embeds = torch.randn(4, models[0].cfg.backbone.dim, generator=gen).to(DEVICE)
    positions = torch.tensor([7, -1, 4, 5], device=DEVICE)

    steps[0].prefill(prompt, prompt_mask, torch.arange(5, device=DEVICE)[None], torch.tensor([3], device=DEVICE), 8)
    want = steps[0].backbone_step(embeds, positions, 16)
    pad = torch.zeros(3, 33, dtype=torch.long, device=DEVICE)
    got = steps[1].backbone_step_with_prompts(
        embeds,
        positions,
        torch.cat([prompt[0], pad]),
        torch.cat([prompt_mask[0], pad.bool()]),
        torch.tensor([0, 1, 2, 3, 4, -1, -1, -1], device=DEVICE),
        torch.tensor([3, 3, 3, 3, 3, 0, 0, 0], device=DEVICE),
    )
    live = positions >= 0
    torch.testing.assert_close(got[live], want[live], rtol=TOL, atol=TOL)
    for layer in range(len(models[0].backbone.layers)):
        caches = [m.backbone.layers[layer].attention.kv_cache for m in models]
        for slot, written in ((0, 8), (2, 5), (3, 6)):
            for name in ("k", "v"):
                torch.testing.assert_close(
                    getattr(caches[1], name)[slot, :, :written],
                    getattr(caches[0], name)[slot, :, :written],
                    rtol=TOL,
                    atol=TOL,
                )


@pytest.mark.parametrize(
    "top_k_fast, by_bits, dtype",
    [(0, False, torch.float32), (64, False, torch.float32), (64, True, torch.float32), (64, True, torch.bfloat16)],
    ids=["sorted-rows", "bitonic-top-64", "bit-by-bit", "bit-by-bit-bf16-logits"],
)
def test_fused_sampler_draws_the_reference_ids(
    top_k_fast: int, by_bits: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of k 1, 50 and 200: with the top-64 path on, two find their k-th score by it and one by
    the sort; bit by bit (`KTH_BY_BITS`), all three, over the scores' keys, or over bf16 logits' 16
    bits (the depth loop's draw: its logits are bf16)."""
    from serve_app.model.kernels import sampling as kernel
    from serve_app.model.kernels.sampling import sample_top_k
    from serve_app.model.sampling import draw_counter, noise_columns
    from serve_app.model.sampling import sample_top_k as reference

    monkeypatch.setattr(kernel, "TOP_K_FAST", top_k_fast)
    monkeypatch.setattr(kernel, "KTH_BY_BITS", by_bits)
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(3, 300, generator=gen) * 3).to(dtype).to(DEVICE)  # a short vocabulary: the interpreter is slow
    temperature = torch.tensor([0.9, 0.5, 1.3], device=DEVICE)
    top_k = torch.tensor([1, 50, 200], device=DEVICE)
    seeds = torch.tensor([7, -(2**61), 2**62 + 5], device=DEVICE)
    frame = torch.tensor([0, 3, 40], device=DEVICE)
    columns = noise_columns(256, DEVICE)
    for codebook in (0, 31):
        got = sample_top_k(logits, temperature, top_k, seeds, frame, codebook, columns)
        want = reference(logits, temperature, top_k, seeds, draw_counter(frame, codebook), columns)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype, key_bits", [(torch.float32, 32), (torch.bfloat16, 16)], ids=["fp32", "bf16"])
def test_the_kth_largest_found_bit_by_bit_is_the_kth_largest_for_every_k(dtype: torch.dtype, key_bits: int) -> None:
    """`sampling._kth_by_bits` (the depth loop's draw with `DRAW_KTH_BY_BITS`): negative and positive
    scores, both zeros, ties, the smallest and largest magnitudes, and the row's -inf padding; every k
    from 1 to the row's length; fp32 values over their whole keys, bf16 logits over their 16 bits
    (a wrong low half of a negative key gives a different float)."""
    from tests.support_sampling import kth_by_bits_kernel

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, generator=gen) * 4
    x[:8] = torch.tensor([0.0, -0.0, 0.0, 3.5, 3.5, -1e-30, 1e-30, -3e38])
    x[8:11] = x[12]  # a three-way tie
    x[-5:] = float("-inf")  # padding past the vocabulary
    x = x[torch.randperm(64, generator=gen)].to(dtype).to(DEVICE)
    out = torch.empty(64, device=DEVICE)
    kth_by_bits_kernel[(64,)](x, out, N=64, KEY_BITS=key_bits)
    want = torch.sort(x.float(), descending=True).values
    assert torch.equal(out, want)  # -0.0 and 0.0 compare equal, as they do against the scores


def test_the_sampler_copies_each_drawn_ids_row_of_the_next_inputs_table() -> None:
    """The depth loop's next inputs come from the kernel that drew the ids: each row's own id's row
    of the codebook's block of the table (rows drawing different ids, two blocks)."""
    from serve_app.model.kernels.sampling import sample_top_k, sample_top_k_embed
    from serve_app.model.sampling import noise_columns

    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(4, 300, generator=gen) * 3).to(DEVICE)
    temperature = torch.tensor([0.9, 0.5, 1.3, 1.0], device=DEVICE)
    top_k = torch.tensor([1, 50, 200, 5], device=DEVICE)
    seeds = torch.tensor([7, 8, 9, 10], device=DEVICE)
    frame = torch.tensor([0, 3, 40, 2], device=DEVICE)
    columns = noise_columns(256, DEVICE)
    table = torch.randn(3 * 256, 32, generator=gen).to(DEVICE, torch.bfloat16)
    for codebook in (1, 2):
        block = table[codebook * 256 : (codebook + 1) * 256]
        ids, rows = sample_top_k_embed(logits, temperature, top_k, seeds, frame, codebook, columns, block)
        assert torch.equal(ids, sample_top_k(logits, temperature, top_k, seeds, frame, codebook, columns))
        assert len(set(ids.tolist())) > 1
        assert torch.equal(rows, table[ids + codebook * 256])
    with pytest.raises(ValueError, match="power of two"):
        sample_top_k_embed(logits, temperature, top_k, seeds, frame, 1, columns, table[:, :24].contiguous())


def test_the_fused_depth_loops_sampler_hands_each_step_the_next_codebooks_inputs() -> None:
    fast = FastStep(se.wide_head_model().to(DEVICE), 2048, fused_attention=True)
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(2, fast.vocab, generator=gen) * 3).to(DEVICE)
    sampling = tuple(torch.tensor(v, device=DEVICE) for v in ([0.9, 1.0], [50, 5], [3, 4], [0, 2]))
    ids, inputs = fast._sample_for_next(logits, 5, *sampling)
    assert torch.equal(inputs, fast.depth_inputs[ids + 5 * fast.vocab])  # codebook 5's ids feed step 6
    assert torch.equal(fast._next_inputs(ids, None, 6), inputs.unsqueeze(1))  # as the step would gather
    last, none = fast._sample_for_next(logits, fast.num_codebooks - 1, *sampling)
    assert none is None and last.shape == ids.shape  # the frame's last codebook feeds no step


@pytest.mark.parametrize(
    "top_k_fast, by_bits, dtype",
    [(0, False, torch.float32), (8, False, torch.float32), (8, True, torch.float32), (8, True, torch.bfloat16)],
    ids=["sorted-rows", "bitonic-top-8-of-16", "bit-by-bit", "bit-by-bit-bf16-logits"],
)
def test_fused_sampler_never_draws_a_masked_id_under_the_largest_noise(
    top_k_fast: int, by_bits: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each row's seed puts the largest possible noise on an id outside its top k (see the PyTorch
    sampler's test): with a uniform of 1.0 that id would win. A threshold one place too low lets it."""
    from serve_app.model.kernels import sampling as kernel
    from serve_app.model.kernels.sampling import sample_top_k
    from serve_app.model.sampling import noise_columns
    from tests.support_sampling import seed_with_noise_at

    monkeypatch.setattr(kernel, "TOP_K_FAST", top_k_fast)
    monkeypatch.setattr(kernel, "KTH_BY_BITS", by_bits)

    logits = (torch.randn(16, generator=torch.Generator().manual_seed(4)) * 2).to(dtype)
    top = set(torch.topk(logits.float(), 3).indices.tolist())
    masked = [c for c in range(16) if c not in top]
    frame, codebook = 5, 7  # the draw counter 5 * 32 + 7
    seeds = torch.tensor([seed_with_noise_at(column=c, counter=frame * 32 + codebook) for c in masked])
    n = len(masked)
    ids = sample_top_k(
        logits.expand(n, -1).contiguous().to(DEVICE),
        torch.full((n,), 0.9, device=DEVICE),
        torch.full((n,), 3, device=DEVICE),
        seeds.to(DEVICE),
        torch.full((n,), frame, device=DEVICE),
        codebook,
        noise_columns(16, DEVICE),
    )
    assert set(ids.tolist()) <= top


def test_fused_sampler_draws_follow_the_exact_tempered_top_k_distribution() -> None:
    """Pearson's chi-square against the exact distribution, with a near miss (another temperature)
    rejected by the same draws. Few draws: one program per draw is slow in the interpreter."""
    from serve_app.model.kernels.sampling import sample_top_k
    from serve_app.model.sampling import noise_columns
    from tests.support_sampling import chi_square_p, top_k_distribution

    logits = torch.tensor([2.0, 1.0, 0.5, 0.2, 0.0, -1.0, -2.0, -3.0])
    n = 400
    draws = sample_top_k(
        logits.expand(n, -1).contiguous().to(DEVICE),
        torch.full((n,), 0.6, device=DEVICE),
        torch.full((n,), 4, device=DEVICE),
        torch.full((n,), 21, device=DEVICE),
        torch.arange(n, device=DEVICE),  # each draw its own frame
        0,
        noise_columns(8, DEVICE),
    )
    assert chi_square_p(draws, top_k_distribution(logits, 0.6, 4)) > 1e-3
    assert chi_square_p(draws, top_k_distribution(logits, 1.0, 4)) < 1e-6


def fused_runner(slots: int, prompts_in_step: bool, prefill_attention: str = "sdpa"):  # type: ignore[no-untyped-def]
    """A runner of the wide-head model on the fused kernels (under the interpreter on a CPU), its
    depth frames on the unfused path (the interpreter is slow; the fused one has its own tests)."""
    import copy

    from serve_app.engine.runner import ModelRunner

    runner = ModelRunner(
        se.wide_head_model().to(DEVICE),
        copy.deepcopy(se.codec().model).to(DEVICE),
        slots,
        vocab_limit=2048,
        audio_chunk_sizes=se.SMALL_CHUNKS.sizes,
        prompts_in_step=prompts_in_step,
    )
    runner.fast = FastStep(runner.model, 2048, True, linear_max_batch=1 << 16, prefill_attention=prefill_attention)
    runner.fast.depth_frame = FastStep(runner.model, 2048, fused_attention=False).depth_frame  # type: ignore[method-assign]
    return runner


@torch.inference_mode()
def test_a_loop_whose_steps_carry_the_prompts_streams_the_codes_of_one_that_prefills() -> None:
    """Three requests, one joining while the others speak, through the engine loop: with their
    prompts in the steps' backbone pass (and no prefill launched), every stream gets the codes it
    gets with a prefill of its own."""
    from serve_app.engine.loop import EngineLoop
    from serve_app.engine.scheduler import Scheduler

    codes, prefills, carried = [], [], []
    for in_step in (False, True):
        runner = fused_runner(4, in_step, prefill_attention="kernel")
        assert runner.prompts_in_step is in_step
        calls = {"prefill": 0, "carried": 0}
        prefill, carry = runner.fast.prefill, runner._backbone_with_prompts

        def counted_prefill(*args, _p=prefill, _c=calls):  # type: ignore[no-untyped-def]
            _c["prefill"] += 1
            return _p(*args)

        def counted_carry(*args, _f=carry, _c=calls):  # type: ignore[no-untyped-def]
            _c["carried"] += 1
            return _f(*args)

        runner.fast.prefill, runner._backbone_with_prompts = counted_prefill, counted_carry  # type: ignore[method-assign]
        loop = EngineLoop(runner, Scheduler(4, 8), se.SMALL_CHUNKS, se.NO_SILENCE_GUARD)
        got = [se.sequence(se.request(t, frames=2, seed=i)) for i, t in enumerate(("one", "two words", "three"))]
        loop.submit(got[0].seq)
        loop.submit(got[1].seq)
        loop.run_once()
        loop.submit(got[2].seq)
        se.run_until_idle(loop)
        assert all(g.chunks and g.chunks[-1].is_last for g in got)
        codes.append([g.codes for g in got])
        prefills.append(calls["prefill"])
        carried.append(calls["carried"])
    assert prefills == [2, 0] and carried == [0, 2]  # two admissions: the first two together, then one
    for with_prefill, in_step in zip(*codes):
        torch.testing.assert_close(torch.as_tensor(in_step), torch.as_tensor(with_prefill), rtol=0, atol=0)


@torch.inference_mode()
def test_prompts_staged_for_the_step_are_dropped_when_their_admission_is_abandoned() -> None:
    """A failed admission releases its slots before any step: the prompt rows staged for the next
    step go with them, so that step writes nothing into a slot that is free again (a later request
    there would otherwise find another's prompt)."""
    runner = fused_runner(2, True)
    carried = []
    carry = runner._backbone_with_prompts
    runner._backbone_with_prompts = lambda *a: (carried.append(a), carry(*a))[1]  # type: ignore[method-assign]
    seq = se.sequence(se.request("an abandoned admission", frames=2)).seq
    seq.slot = 1
    runner.start([seq])
    keys = runner.model.backbone.layers[0].attention.kv_cache.k
    before = keys[1].clone()
    runner.release(1)
    runner.fetch(runner.step(1, 1), [])  # slot 0 idle, slot 1 released: nothing to write
    assert carried == []
    torch.testing.assert_close(keys[1], before, rtol=0, atol=0)
