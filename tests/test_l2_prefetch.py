"""The L2 warm-up plans: which launch warms which weight, how many bytes, and where it is off.

The warm-up itself (a bulk prefetch instruction) runs only on a Hopper GPU; the `gpu`-marked test
in test_engine_kernels.py checks that every plan replays the fused step bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from serve_app.model.kernels import l2_prefetch
from serve_app.model.llama import EAGER, Backend, Block, TorchProjections, Transformer
from tests import support_engine as se

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def hopper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan decisions as on a compiled Hopper GPU (no interpreter, bulk prefetch supported)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(l2_prefetch, "device_supports", lambda index: True)


@pytest.mark.usefixtures("hopper")
def test_each_plan_warms_from_its_launches_at_most_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    weight = torch.empty(64, 1000, dtype=torch.bfloat16)  # 128000 bytes
    monkeypatch.setattr(l2_prefetch, "MAX_BYTES", 1 << 20)
    expected = {
        "off": set(),
        "gate_up": {"qkv"},
        "gate_up_down": {"qkv", "attention_output"},
        "gate_up_then_down": {"qkv", "gate_up"},
    }
    assert set(expected) == set(l2_prefetch.PLANS)
    for plan, warming in expected.items():
        monkeypatch.setattr(l2_prefetch, "PLAN", plan)
        got = {
            launch
            for launch in ("qkv", "attention_output", "gate_up")
            if l2_prefetch.warm_bytes(launch, weight, CUDA0)
        }
        assert got == warming, plan
    monkeypatch.setattr(l2_prefetch, "PLAN", "gate_up")
    assert l2_prefetch.warm_bytes("qkv", weight, CUDA0) == 128000
    monkeypatch.setattr(l2_prefetch, "MAX_BYTES", 100_001)  # capped, then whole 16-byte units
    assert l2_prefetch.warm_bytes("qkv", weight, CUDA0) == 100_000
    assert l2_prefetch.warm_bytes("qkv", weight.t(), CUDA0) == 0, "a strided view is not one span"
    assert l2_prefetch.warm_bytes("qkv", None, CUDA0) == 0


def test_warm_up_is_off_on_the_cpu_and_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    weight = torch.empty(64, 64, dtype=torch.bfloat16)
    monkeypatch.setattr(l2_prefetch, "PLAN", "gate_up")
    monkeypatch.setattr(l2_prefetch, "device_supports", lambda index: True)
    assert l2_prefetch.warm_bytes("qkv", weight, torch.device("cpu")) == 0
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert l2_prefetch.warm_bytes("qkv", weight, CUDA0) == 0


def test_a_bad_plan_or_cap_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(l2_prefetch, "PLAN", "sometimes")
    with pytest.raises(ValueError, match="CSM_L2_PREFETCH='sometimes'"):
        l2_prefetch.warm_bytes("qkv", torch.empty(4), torch.device("cpu"))
    monkeypatch.setattr(l2_prefetch, "PLAN", "off")
    monkeypatch.setattr(l2_prefetch, "MAX_BYTES", -1)
    with pytest.raises(ValueError, match="CSM_L2_PREFETCH_MAX_MB"):
        l2_prefetch.launches()


class RecordingProjections(TorchProjections):
    """The eager projections, noting which upcoming weight each launch was offered."""

    def __init__(self) -> None:
        self.offers: list[tuple[str, nn.Linear, nn.Linear | None]] = []

    def norm_linear(self, x, norm, linear, upcoming=None):  # type: ignore[no-untyped-def]
        self.offers.append(("norm_linear", linear, upcoming))
        return super().norm_linear(x, norm, linear, upcoming)

    def linear_add(self, x, linear, residual, upcoming=None):  # type: ignore[no-untyped-def]
        self.offers.append(("linear_add", linear, upcoming))
        return super().linear_add(x, linear, residual, upcoming)

    def norm_gate_up(self, x, norm, linear, upcoming=None):  # type: ignore[no-untyped-def]
        self.offers.append(("norm_gate_up", linear, upcoming))
        return super().norm_gate_up(x, norm, linear, upcoming)


@torch.inference_mode()
def test_a_block_offers_each_launch_the_mlp_weight_that_follows_it() -> None:
    stack: Transformer = se.wide_head_model().decoder
    stack.setup_caches(2, torch.float32)
    projections = RecordingProjections()
    block: Block = stack.layers[0]
    x = torch.randn(2, 1, stack.cfg.dim)
    inputs = EAGER.attention.inputs(stack, torch.tensor([[0], [3]]), None, 8, x.dtype)
    block(x, inputs, Backend(EAGER.attention, projections))
    attn, ff = block.attention, block.feed_forward
    assert projections.offers == [
        ("norm_linear", attn.wqkv, ff.w13),
        ("linear_add", attn.wo, ff.w2),
        ("norm_gate_up", ff.w13, ff.w2),
        ("linear_add", ff.w2, None),
    ]
