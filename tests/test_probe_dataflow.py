"""The dataflow probe's kernel (benchmarks/probe_dataflow_step.py) computes the chain it times: every
phase's output from the one before, whether the frame runs as one launch whose programs wait on
counters or as a launch per phase, and it leaves its counters zero for the next launch.

Compiled on a CUDA device, else under Triton's CPU interpreter (which runs a launch's programs in
ticket order, so its waits are already met; the GPU run checks the same outputs under real waits)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import probe_dataflow_step as probe

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [pytest.mark.usefixtures("one_thread"), *([pytest.mark.gpu] if DEVICE.type == "cuda" else [])]

SMALL = probe.Geometry(dim=32, q_dim=32, kv_dim=16, inter=64, vocab=40, layers=2, down_split=2)
VARIANT = probe.Variant(block_n=16, block_k=16, num_warps=4)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference against the largest value."""
    return float((got - want).abs().max() / want.abs().max())


def assert_every_phase(frame: probe.Frame) -> None:
    """Each phase against PyTorch on the row it read (bf16 roundings one place apart drift through a
    chain of phases, so the chain's end is compared loosely where at all)."""
    for index in range(len(frame.phases)):
        want = probe.phase_reference(frame, index, probe.phase_input(frame, index))
        assert relative_error(probe.phase_output(frame, index), want) < 5e-2, f"phase {index}"


@pytest.mark.parametrize("launcher", [probe.launch_dataflow, probe.launch_per_phase], ids=["dataflow", "per_phase"])
def test_every_phase_equals_the_reference_chain(launcher) -> None:  # type: ignore[no-untyped-def]
    """Each phase against PyTorch on the row it read, and the chain's end against PyTorch's chain."""
    frame = probe.build_frame(SMALL, steps=2, block_n=16, device=DEVICE)
    launcher(frame, VARIANT)
    assert_every_phase(frame)
    assert relative_error(probe.phase_output(frame, len(frame.phases) - 1), probe.reference(frame)[-1]) < 0.15
    assert int(frame.done.abs().sum()) == 0 and int(frame.ticket[0]) == 0


@pytest.mark.parametrize(
    "first", [probe.launch_dataflow, probe.launch_per_phase], ids=["after_one_launch", "after_launches_per_phase"]
)
def test_one_launch_repeats_what_ran_before_it_bit_for_bit(first) -> None:  # type: ignore[no-untyped-def]
    """The same arithmetic either way, and the counters the last program zeroes let the next
    launch wait again from zero."""
    frame = probe.build_frame(SMALL, steps=2, block_n=16, device=DEVICE)
    first(frame, VARIANT)
    before = frame.acts.clone()
    frame.acts[SMALL.dim :].zero_()
    probe.launch_dataflow(frame, VARIANT)
    assert torch.equal(frame.acts, before)


def test_the_layout_mirrors_the_kernels_program_map() -> None:
    """Each step is the layers' four projections and a head, each phase's tiles counted as the
    kernel counts them (gate/up: a column's two rows), weights where the kernel finds them."""
    frame = probe.build_frame(SMALL, steps=3, block_n=16, device=DEVICE)
    kinds = [probe.QKV, probe.OUT, probe.GATE_UP, probe.DOWN] * SMALL.layers + [probe.HEAD]
    assert [p["kind"] for p in frame.phases] == kinds * 3
    down = next(p for p in frame.phases if p["kind"] == probe.DOWN)
    assert down["tiles"] == SMALL.dim // 16 * SMALL.down_split
    assert next(p["tiles"] for p in frame.phases if p["kind"] == probe.GATE_UP) == 2 * SMALL.inter // 16
    heads = [p["w_off"] for p in frame.phases if p["kind"] == probe.HEAD]
    assert heads[1] - heads[0] == 64 * SMALL.dim  # each head padded to 64 rows
    assert frame.programs == sum(p["tiles"] for p in frame.phases)


@pytest.mark.parametrize("flags", ["pid", "r128-s4"])
def test_the_variants_compute_the_same_chain(flags: str) -> None:
    """Programs by program id instead of tickets, capped registers, another split of the down
    projection: the same outputs."""
    variant = probe.Variant.parse(f"16x16x4-{flags}")
    frame = probe.build_frame(replace(SMALL, down_split=variant.down_split), steps=1, block_n=16, device=DEVICE)
    probe.launch_dataflow(frame, variant)
    assert_every_phase(frame)


# Rows of 512 (two of 256 for the bulk tensor copies); every item one tile of K = dim (the down
# projection split).
WIDE = probe.Geometry(dim=512, q_dim=512, kv_dim=128, inter=1024, vocab=600, layers=1, down_split=2)


@pytest.mark.parametrize("flags", ["res1-st1", "res1-st3", "res1-st2-tma", "res1-st1-reuse", "res1-st2-tma-reuse"])
def test_the_persistent_kernel_computes_the_same_chain(flags: str) -> None:
    """Resident programs taking the items in turn, the loop pipelined (weights of later items
    loaded before the current item's wait), by pointers or bulk tensor copies: every phase as
    PyTorch computes it (one program on the interpreter, which runs programs one after another: a
    program waiting on another's item would wait forever)."""
    geo = WIDE
    frame = probe.build_frame(geo, steps=2, block_n=16, device=DEVICE)
    variant = probe.Variant.parse(f"16x{geo.dim}x4-{flags}")
    probe.launch_persistent(frame, variant)
    assert_every_phase(frame)
    assert int(frame.done.abs().sum()) == 0
    with pytest.raises(ValueError, match="every item's K"):
        probe.launch_persistent(frame, variant._replace(block_k=geo.dim // 2))


@pytest.mark.skipif(DEVICE.type != "cuda", reason="Gluon kernels have no CPU interpreter")
def test_the_gluon_kernel_computes_the_same_chain() -> None:
    """Several weight tiles in flight a program (a ring of three buffers), two programs an SM:
    every phase as PyTorch computes it, under real waits between programs."""
    from probe_dataflow_gluon import launch_gluon

    frame = probe.build_frame(WIDE, steps=2, block_n=16, device=DEVICE)
    launch_gluon(frame, probe.Variant.parse(f"16x{WIDE.dim}x{WIDE.dim // 256}-res2-st3-gluon"))
    assert_every_phase(frame)
    assert int(frame.done.abs().sum()) == 0


def test_a_variant_names_its_settings() -> None:
    assert probe.Variant.parse("8x1024x4-pid-r128-s8-z200") == probe.Variant(8, 1024, 4, False, 128, 8, 200)
    persistent = probe.Variant.parse("8x1024x4-s8-res2-st3-tma-reuse")
    assert (persistent.resident, persistent.stages, persistent.tma, persistent.reuse, persistent.gluon) == (2, 3, True, True, False)
    assert probe.Variant.parse("16x1024x4-s8-res2-st3-gluon").gluon
    with pytest.raises(ValueError, match="unknown variant flag"):
        probe.Variant.parse("8x1024x4-fast")


def test_the_stacks_take_csm_1bs_shapes() -> None:
    """The depth decoder's stack is the probe's own default geometry (what every earlier run
    measured); the backbone's is CSM-1B's Llama-1B, its head codebook 0's."""
    assert probe.stack_geometry("depth") == probe.Geometry()
    assert probe.stack_geometry("backbone", down_split=2) == probe.Geometry(
        dim=2048, q_dim=2048, kv_dim=512, inter=8192, vocab=2051, layers=16, down_split=2
    )
    with pytest.raises(ValueError, match="one of"):
        probe.stack_geometry("decoder")
