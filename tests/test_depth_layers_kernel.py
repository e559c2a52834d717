"""The persistent depth-layers kernel computes a whole stack's one-token step as the eager layers do:
outputs, cache writes, idle rows untouched, split-K sums in every split; the fast step with it draws
the same frame as without; its stacked weights and caches stay the model's own.

Under Triton's CPU interpreter the kernel runs one phase per launch (a grid barrier cannot open
there); on a CUDA device (where the tests carry the `gpu` mark) the persistent launch must give the
same bits as the phases, inside CUDA graphs too."""

from __future__ import annotations

import pytest
import torch

from serve_app.model.config import TransformerConfig
from serve_app.model.fast_step import FastStep
from serve_app.model.kernels import counters, depth_layers
from serve_app.model.kernels.backends import FUSED
from serve_app.model.llama import EAGER, Transformer
from tests import support_engine as se

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"
pytestmark = [pytest.mark.usefixtures("one_thread"), *([pytest.mark.gpu] if CUDA else [])]

GROUPED = TransformerConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128)
"""Two kv heads of two query heads each (heads of 32 dims, the fused attention's smallest)."""

SPLITS = {"BLOCK_K": 16, "BN_QKV": 32, "BN_O": 16, "BN_GU": 32, "BN_DOWN": 32, "SPLIT_QKV": 4, "SPLIT_O": 2, "SPLIT_DOWN": 4}
"""Small tiles, so every projection sums several K slices and every phase has more items than programs."""

STEPS = ([0, 0, -1], [1, 1, 0], [2, -1, 1], [3, 2, 2])
"""Positions of three rows over four steps: one row joining late, one idle for a step."""


def stacks(
    cfg: TransformerConfig, dtype: torch.dtype, n: int = 2, seed: int = 0, slots: int = 3
) -> list[Transformer]:
    """`n` stacks with the same random weights and fresh caches for `slots` slots (row b of a step
    is slot b, so a step has at most `slots` rows)."""
    gen = torch.Generator().manual_seed(seed)
    first = Transformer(cfg, 8).eval().requires_grad_(False)
    for p in first.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    out = []
    for _ in range(n):
        stack = Transformer(cfg, 8).eval().requires_grad_(False)
        stack.load_state_dict(first.state_dict())
        stack = stack.to(DEVICE, dtype)
        stack.setup_caches(slots, dtype, DEVICE)
        out.append(stack)
    return out


def assert_near(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """Within `rel` of `want` in norm: bf16 sums added in another order differ by a share of the
    values' scale, not of each element (an element near zero may differ by more than itself)."""
    error = (got.float() - want.float()).norm() / want.float().norm()
    assert error <= rel, f"relative error {float(error):.3g} > {rel}"


def run_kernel(stack: Transformer, x: torch.Tensor, positions: torch.Tensor, **options: object) -> torch.Tensor:
    w = stack.stacked_weights()
    cfg = stack.cfg
    return depth_layers.launch(
        x, positions, w.attention_norm, w.wqkv, w.wo, w.ffn_norm, w.w13, w.w2, stack.rope_cos,
        stack.rope_sin, stack.k_stack, stack.v_stack, cfg.n_heads, cfg.n_kv_heads, cfg.norm_eps,
        **options,  # type: ignore[arg-type]
    )


@torch.inference_mode()
@pytest.mark.parametrize("plan", [None, SPLITS], ids=["default-tiles", "split-sums"])
def test_kernel_equals_the_eager_layers_step_after_step(plan: dict[str, int] | None) -> None:
    ours, eager = stacks(GROUPED, torch.float32)
    gen = torch.Generator().manual_seed(1)
    tol = 1e-5 if not CUDA else 2e-3  # compiled: other summation orders
    for pos in STEPS:
        positions = torch.tensor(pos, device=DEVICE)
        x = torch.randn(3, GROUPED.dim, generator=gen).to(DEVICE)
        got = run_kernel(ours, x, positions, programs=3, plan=plan)
        want = eager(x[:, None], positions[:, None], None, 8, EAGER, final_norm=False)[:, 0]
        live = positions >= 0
        torch.testing.assert_close(got[live], want[live], rtol=tol, atol=tol)
        assert torch.isfinite(got).all()  # idle rows: unspecified but finite
        # every key and value the eager layers wrote (not the scratch column, where idle rows write)
        torch.testing.assert_close(ours.k_stack[..., :8, :], eager.k_stack[..., :8, :], rtol=tol, atol=tol)
        torch.testing.assert_close(ours.v_stack[..., :8, :], eager.v_stack[..., :8, :], rtol=tol, atol=tol)
    assert not ours.k_stack[..., 8, :].any()  # the kernel writes nothing for an idle row
    assert not depth_layers.barrier_counters(DEVICE).any()  # split-K tile locks zero again


@torch.inference_mode()
@pytest.mark.parametrize("plan", [None, SPLITS], ids=["default-tiles", "split-sums"])
def test_rows_over_several_row_tiles_equal_the_eager_layers(monkeypatch: pytest.MonkeyPatch, plan: dict[str, int] | None) -> None:
    """40 rows in tiles of 16: three row tiles, the last part-filled, rows idle here and there."""
    monkeypatch.setattr(depth_layers, "M_TILE", 16)
    rows = 40
    ours, eager = stacks(GROUPED, torch.float32, slots=rows)
    gen = torch.Generator().manual_seed(7)
    start = torch.arange(rows) % 3
    for step in range(3):
        positions = torch.where((torch.arange(rows) + step) % 7 == 0, -1, start + step).to(DEVICE)
        x = torch.randn(rows, GROUPED.dim, generator=gen).to(DEVICE)
        got = run_kernel(ours, x, positions, programs=5, plan=plan)
        want = eager(x[:, None], positions[:, None], None, 8, EAGER, final_norm=False)[:, 0]
        live = positions >= 0
        tol = 1e-5 if not CUDA else 2e-3
        torch.testing.assert_close(got[live], want[live], rtol=tol, atol=tol)
        torch.testing.assert_close(ours.k_stack[..., :8, :], eager.k_stack[..., :8, :], rtol=tol, atol=tol)
        torch.testing.assert_close(ours.v_stack[..., :8, :], eager.v_stack[..., :8, :], rtol=tol, atol=tol)
    assert not ours.k_stack[..., 8, :].any()


@torch.inference_mode()
def test_bf16_kernel_rounds_where_the_fused_layer_kernels_round() -> None:
    ours, fused = stacks(GROUPED, torch.bfloat16)
    gen = torch.Generator().manual_seed(2)
    for pos in STEPS:
        positions = torch.tensor(pos, device=DEVICE)
        x = torch.randn(3, GROUPED.dim, generator=gen).to(DEVICE, torch.bfloat16)
        got = run_kernel(ours, x, positions, plan=SPLITS)
        want = fused(x[:, None], positions[:, None], None, 8, FUSED, final_norm=False)[:, 0]
        live = positions >= 0
        if CUDA:  # the same sums in other orders (the layer kernels' own splits and tiles)
            assert_near(got[live], want[live], 2e-2)
            assert_near(ours.k_stack[..., :8, :], fused.k_stack[..., :8, :], 2e-2)
        else:  # the interpreter adds in the order written: the same bits
            torch.testing.assert_close(got[live], want[live], rtol=0, atol=0)
            torch.testing.assert_close(ours.k_stack[..., :8, :], fused.k_stack[..., :8, :], rtol=0, atol=0)


def test_widths_the_kernel_cannot_tile_are_refused() -> None:
    assert depth_layers.supports(1024, 8, 2, 128, 8192)  # CSM-1B's depth decoder
    assert depth_layers.tiles(1024, 1024, 1536, 8192) == {
        "BLOCK_K": 64, "BN_QKV": 32, "BN_O": 32, "BN_GU": 32, "BN_DOWN": 64,
        "SPLIT_QKV": 8, "SPLIT_O": 4, "SPLIT_DOWN": 8,
    }
    assert depth_layers.tiles(1024, 1024, 1536, 8192, rows=128) == {  # two row tiles of 64: half the splits
        "BLOCK_K": 32, "BN_QKV": 32, "BN_O": 32, "BN_GU": 32, "BN_DOWN": 64,
        "SPLIT_QKV": 4, "SPLIT_O": 2, "SPLIT_DOWN": 4,
    }
    assert [depth_layers.row_tile(rows) for rows in (1, 16, 17, 64, 128)] == [16, 16, 32, 64, 64]
    assert not depth_layers.supports(64, 4, 2, 16, 128)  # heads below the attention's 32 dims
    assert not depth_layers.supports(120, 4, 2, 30, 128)  # no power-of-two K tile divides 120
    ours, _ = stacks(GROUPED, torch.float32, slots=depth_layers.MAX_ROWS + 1)
    x, positions = torch.zeros(1, GROUPED.dim, device=DEVICE), torch.zeros(1, dtype=torch.long, device=DEVICE)
    for bad in ({**SPLITS, "SPLIT_QKV": 16}, {**SPLITS, "BN_GU": 48}):  # a split past K; not a power of two
        with pytest.raises(ValueError, match="do not fit"):
            run_kernel(ours, x, positions, plan=bad)
    if not CUDA:  # the timer reads the GPU's clock inside a persistent launch
        with pytest.raises(ValueError, match="persistent launch"):
            run_kernel(ours, x, positions, times=torch.zeros(12, dtype=torch.long))
    few = stacks(GROUPED, torch.float32, n=1, slots=2)[0]
    with pytest.raises(ValueError, match="caches of 2 slots"):
        run_kernel(few, torch.zeros(3, GROUPED.dim, device=DEVICE), torch.zeros(3, dtype=torch.long, device=DEVICE))
    rows = depth_layers.MAX_ROWS + 1
    with pytest.raises(ValueError, match=f"up to {depth_layers.MAX_ROWS} rows"):
        run_kernel(ours, torch.zeros(rows, GROUPED.dim, device=DEVICE), torch.zeros(rows, dtype=torch.long, device=DEVICE))


def test_stacked_weights_are_the_parameters_and_caches_are_views_of_the_stacks() -> None:
    (stack,) = stacks(GROUPED, torch.float32, n=1)
    w = stack.stacked_weights()
    assert stack.stacked_weights() is w  # made once
    first = stack.layers[1].feed_forward.w13.weight
    assert first.data_ptr() == w.w13[1].data_ptr()  # the parameter is a view, no second copy
    w.w13[1, 0, 0] = 7.0
    assert first[0, 0] == 7.0
    cache = stack.layers[1].attention.cache()
    stack.k_stack[1, 2, 1, 3, 0] = 5.0
    assert cache.k[2, 1, 3, 0] == 5.0
    moved = stack.to(torch.float64)
    assert moved.layers[1].attention.cache().k.dtype == torch.float64  # caches follow the module
    again = moved.stacked_weights()
    assert again is not w and again.w13.dtype == torch.float64  # restacked after a cast
    assert moved.layers[0].attention.wqkv.weight.data_ptr() == again.wqkv[0].data_ptr()


@torch.inference_mode()
def test_fast_step_with_the_depth_kernel_draws_the_frame_it_draws_without() -> None:
    models = [se.wide_head_model().to(DEVICE), se.wide_head_model().to(DEVICE)]
    for m in models:
        m.setup_caches(3)
    plain = FastStep(models[0], 2048, fused_attention=True, linear_max_batch=4)
    ours = FastStep(models[1], 2048, fused_attention=True, linear_max_batch=4, depth_kernel_max_batch=2)
    assert plain.depth_kernel_max_batch == 0 and ours.depth_kernel_max_batch == 2
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(2, models[0].cfg.backbone.dim, generator=gen).to(DEVICE)
    args = tuple(torch.tensor(v, device=DEVICE) for v in ([0.9, 1.0], [50, 5], [3, 4], [0, 2]))
    eager_sampler = FastStep(models[0], 2048, fused_attention=False)._sample  # the kernel: own test
    plain._sample = ours._sample = eager_sampler  # type: ignore[method-assign]
    torch.testing.assert_close(ours.depth_frame(h, *args), plain.depth_frame(h, *args))
    torch.testing.assert_close(models[1].decoder.k_stack, models[0].decoder.k_stack)


def test_the_depth_kernel_comes_only_with_the_fused_attention_and_fitting_widths() -> None:
    assert FastStep(se.wide_head_model(), 2048, fused_attention=False, depth_kernel_max_batch=4).depth_kernel_max_batch == 0
    assert FastStep(se.model(), 2048, depth_kernel_max_batch=4).depth_kernel_max_batch == 0  # heads of 8 dims
    wide = FastStep(se.wide_head_model(), 2048, fused_attention=True, depth_kernel_max_batch=1000)
    assert wide.depth_kernel_max_batch == depth_layers.MAX_ROWS


@pytest.mark.skipif(not CUDA, reason="grid barriers need every program resident on a GPU")
@torch.inference_mode()
def test_persistent_launch_gives_the_phases_bits_and_replays_from_cuda_graphs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CSM-1B's depth widths in bf16: the one-launch kernel with its grid barriers equals the
    kernel run phase by phase, eagerly and replayed from a CUDA graph, and leaves its counters zero."""
    cfg = TransformerConfig(dim=1024, n_layers=4, n_heads=8, n_kv_heads=2, intermediate_size=8192)
    persistent, phased = stacks(cfg, torch.bfloat16, slots=depth_layers.MAX_ROWS)
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(b, cfg.dim, generator=gen).to(DEVICE, torch.bfloat16) for b in (1, 16, 100)]  # 100: two row tiles
    depth_layers.barrier_counters(DEVICE)
    for x in xs:
        positions = torch.arange(x.shape[0], device=DEVICE) % 7
        monkeypatch.setattr(depth_layers, "MODE", "phases")
        want = run_kernel(phased, x, positions)
        monkeypatch.setattr(depth_layers, "MODE", "persistent")
        got = run_kernel(persistent, x, positions)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(persistent.k_stack, phased.k_stack, rtol=0, atol=0)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run_kernel(persistent, x, positions + 1)
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        monkeypatch.setattr(depth_layers, "MODE", "phases")
        torch.testing.assert_close(out, run_kernel(phased, x, positions + 1), rtol=0, atol=0)
        monkeypatch.setattr(depth_layers, "MODE", "persistent")
        times = torch.zeros(len(depth_layers.phase_names(cfg.n_layers)) + 1, dtype=torch.long, device=DEVICE)
        timed = run_kernel(persistent, x, positions + 1, times=times)  # the timer changes no result
        torch.testing.assert_close(timed, out, rtol=0, atol=0)
        # a clock stamp as each phase's barrier opened, in order
        assert bool((times.diff() >= 0).all()) and times[-1] > times[0], times
    assert not counters._COUNTERS[("depth-layers barrier", torch.device("cuda", torch.cuda.current_device()))].any()


@pytest.mark.skipif(not CUDA, reason="CSM-1B widths compiled")
@torch.inference_mode()
@pytest.mark.parametrize("rows", [4, 128])
def test_full_size_kernel_stays_within_bf16_of_the_layer_kernels(rows: int) -> None:
    cfg = TransformerConfig(dim=1024, n_layers=4, n_heads=8, n_kv_heads=2, intermediate_size=8192)
    ours, fused = stacks(cfg, torch.bfloat16, slots=rows)
    gen = torch.Generator().manual_seed(6)
    for step in range(4):
        x = torch.randn(rows, cfg.dim, generator=gen).to(DEVICE, torch.bfloat16)
        positions = torch.tensor([step, step, -1, step + 2] * (rows // 4), device=DEVICE)
        got = run_kernel(ours, x, positions)
        want = fused(x[:, None], positions[:, None], None, 8, FUSED, final_norm=False)[:, 0]
        live = positions >= 0
        assert_near(got[live], want[live], 2e-2)
        assert_near(ours.k_stack, fused.k_stack, 2e-2)
