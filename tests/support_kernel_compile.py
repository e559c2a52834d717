"""Compile the service's Triton kernels for a Hopper GPU (sm_90) on a machine without one.

Triton's CPU interpreter runs the kernels' arithmetic, but it accepts code the GPU compiler refuses.
Here every launch the host code
makes is caught before it would run (`JITFunction.run`), and the kernel is compiled as that launch
would compile it, through Triton's own compiler down to a cubin (PTX, then `ptxas`), for sm_90, as
production launches it: every kernel waiting on its predecessor (programmatic dependent launch,
`pdl.MODE = "wait"`).

Run as a script with `TRITON_INTERPRET` unset (the kernels must be JIT functions, not interpreted
ones): prints one JSON list of launches, each with its kernel, whether it compiled (or the error),
its shared memory, registers and spilled bytes (`ptxas -v`). The host wrappers run on CPU tensors
(and "meta" tensors, which have no storage, for the full-size shapes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TARGET_ARCH = 90
MAX_SHARED_BYTES = 232_448
"""Shared memory one program may use on sm_90 (227 KiB with the opt-in)."""

_DTYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def type_of(value: Any) -> str:
    """Triton's signature string of a runtime argument."""
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def caught_launches(make_launches: Callable[[], None]) -> list[tuple[Any, dict[str, Any], dict[str, Any]]]:
    """(kernel, its arguments by name, compile options) of every launch `make_launches` makes."""
    from triton.runtime.jit import JITFunction

    caught: list[tuple[Any, dict[str, Any], dict[str, Any]]] = []

    def catch(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        bound = dict(zip(self.arg_names, args, strict=False))
        bound.update({k: v for k, v in kwargs.items() if k in self.arg_names})
        caught.append((self, bound, {k: v for k, v in kwargs.items() if k in _OPTIONS}))

    original = JITFunction.run
    JITFunction.run = catch  # type: ignore[method-assign]
    try:
        make_launches()
    finally:
        JITFunction.run = original  # type: ignore[method-assign]
    return caught


def ptxas_binaries() -> list[str]:
    """The `ptxas` binaries Triton may compile with: `TRITON_PTXAS_PATH`, else those in its wheel
    (one per range of PTX versions)."""
    import triton

    if os.environ.get("TRITON_PTXAS_PATH"):
        return [os.environ["TRITON_PTXAS_PATH"]]
    return sorted(str(p) for p in (Path(triton.__file__).parent / "backends/nvidia/bin").glob("ptxas*"))


def ptxas_report(ptx: str) -> dict[str, int]:
    """Registers and spilled bytes of the compiled kernel, from `ptxas -v` (the first binary that
    reads this PTX version)."""
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "k.ptx")
        source.write_text(ptx)
        for path in ptxas_binaries():
            run = subprocess.run(
                [path, f"-arch=sm_{TARGET_ARCH}a", "-v", str(source), "-o", str(Path(tmp, "k.cubin"))],
                capture_output=True,
                text=True,
                check=False,
            )
            if run.returncode == 0:
                registers = re.search(r"Used (\d+) registers", run.stderr)
                spills = re.search(r"(\d+) bytes spill stores", run.stderr)
                return {
                    "registers": int(registers.group(1)) if registers else -1,
                    "spill_bytes": int(spills.group(1)) if spills else 0,
                }
            errors.append(run.stderr[-500:])
    raise RuntimeError(f"no ptxas took the PTX: {errors}")


def compile_launch(
    kernel: Any, bound: dict[str, Any], options: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature: dict[str, str] = {}
    constexprs: dict[tuple[int, ...], Any] = {}
    for i, param in enumerate(kernel.params):
        value = overrides.get(param.name, bound.get(param.name, param.default))
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[(i,)] = value
        else:
            signature[param.name] = type_of(value)
    name = kernel.fn.__name__
    shown = {kernel.params[i[0]].name: v for i, v in constexprs.items()}
    report: dict[str, Any] = {"kernel": name, "constexprs": {k: str(v) for k, v in shown.items()}, **options}
    try:
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs=constexprs),
            target=GPUTarget("cuda", TARGET_ARCH, 32),
            options=options,
        )
    except Exception as exc:  # noqa: BLE001 - every failure is the report
        return {**report, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    return {**report, "ok": True, "shared": compiled.metadata.shared, **ptxas_report(compiled.asm["ptx"])}


def service_launches() -> None:
    """Every kernel's host wrapper, at the shapes and settings the service runs them with."""
    from transformers import MimiConfig, MimiModel

    from serve_app.model.kernels import decode_attention, fused_linear, window_attention
    from serve_app.model.kernels.sampling import sample_top_k, sample_top_k_embed
    from serve_app.model.mimi_layout import decoder_parts
    from serve_app.model.mimi_stream_seanet_kernel import KernelSeanet

    meta, bf16 = torch.device("meta"), torch.bfloat16

    def empty(*shape: int, dtype: torch.dtype = bf16) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device=meta)

    # A decode step's attention (one token a row, row = slot), then prompt rows through the same
    # kernel: the writes, then the attention (a short prompt's prefill in the backbone; a frame's
    # first depth pass, two positions of each slot, in the depth decoder).
    positions = empty(4, dtype=torch.long)
    prompt_rows, slots = empty(64, dtype=torch.long), empty(64, dtype=torch.long)
    for heads, kv_heads, dim in ((32, 8, 64), (8, 2, 128)):  # backbone, depth decoder
        cache = empty(4, kv_heads, 2049, dim)
        rope = empty(2048, dim, dtype=torch.float32)
        decode_attention.launch(
            empty(4, (heads + 2 * kv_heads) * dim), positions, rope, rope, cache, cache, heads, kv_heads
        )
        for write, attend in ((True, False), (False, True)):
            decode_attention.launch(
                empty(64, (heads + 2 * kv_heads) * dim),
                prompt_rows,
                rope,
                rope,
                cache,
                cache,
                heads,
                kv_heads,
                slots,
                write=write,
                attend=attend,
            )
    for rows in (1, 64):  # in-kernel split-K sums; the reduce kernel
        for n, k, gate_up in ((1536, 1024, False), (16384, 1024, True), (1024, 8192, False)):
            norm = None if k == 8192 else empty(k)
            residual = empty(rows, n) if k == 8192 else None
            fused_linear.launch(empty(rows, k), empty(n, k), norm, residual, 1e-5, gate_up)
    # a one-row decode step's depth QKV with its attention folded into the launch
    cache, rope = empty(4, 2, 2049, 128), empty(2048, 128, dtype=torch.float32)
    folded = fused_linear.DecodeAttention(empty(1, dtype=torch.long), rope, rope, cache, cache, 8, 2)
    fused_linear.launch(empty(1, 1024), empty(1536, 1024), empty(1024), None, 1e-5, False, folded)
    logits = torch.zeros(2, 2051)
    ones = torch.ones(2, dtype=torch.long)
    sample_top_k(logits, torch.ones(2), ones, ones, ones, 3, torch.arange(2048))
    sample_top_k_embed(logits, torch.ones(2), ones, ones, ones, 3, torch.arange(2048), torch.zeros(2051, 1024, dtype=bf16))
    depth_loop_launch(empty)
    window_attention.window_attention(
        empty(4, 8, 8, 64),
        empty(4, 8, 250, 64),
        empty(4, 8, 250, 64),
        empty(4, dtype=torch.long),
        empty(4, dtype=torch.long),
        250,
        0.125,
    )
    mimi = MimiModel(MimiConfig()).to(bf16)  # on the CPU: its layers read their padding as numbers
    seanet = KernelSeanet(decoder_parts(mimi).seanet_layers, 2, torch.device("cpu"), bf16)
    channels = seanet.steps[0].state.shape[-1]
    seanet(torch.zeros(2, 2, channels, dtype=bf16), torch.arange(2), torch.zeros(2, dtype=torch.bool))


def depth_loop_launch(empty: Callable[..., torch.Tensor]) -> None:
    """The one-row frame's persistent depth loop over CSM-1B's depth decoder (on the meta device)."""
    from serve_app.model.config import SESAME_FLAVORS
    from serve_app.model.kernels import depth_loop
    from serve_app.model.kernels.depth_loop import DepthLoop
    from serve_app.model.llama import Transformer

    with torch.device("meta"):
        decoder = Transformer(SESAME_FLAVORS["llama-100M"], 32).to(torch.bfloat16)
    decoder.setup_caches(1, torch.bfloat16, "meta")
    one = empty(1, dtype=torch.long)
    loop = DepthLoop(decoder, empty(31, 1024, 2051), empty(32 * 2051, 1024), empty(2048, dtype=torch.long))
    loop.run(empty(1, 1024), empty(1, dtype=torch.float32), one, one, one)
    loop.trace_phases()
    loop.run(empty(1, 1024), empty(1, dtype=torch.float32), one, one, one)
    loop.trace_phases(False)
    # its switches flipped one at a time from their defaults: the attention's older keys ahead, items
    # by ticket (off by default), each program's same items every step, the draw's k-th score bit by
    # bit, the next projection tile ahead
    for switch in ("KEYS_BEFORE_WAIT", "TICKETS", "SAME_ITEMS_EACH_STEP", "DRAW_KTH_BY_BITS", "NEXT_TILE_AHEAD"):
        shipped = getattr(depth_loop, switch)
        setattr(depth_loop, switch, not shipped)
        try:
            loop.run(empty(1, 1024), empty(1, dtype=torch.float32), one, one, one)
        finally:
            setattr(depth_loop, switch, shipped)


def main() -> None:
    """`[--num-warps N] [--out FILE]`: every launch at N warps instead of its own; the report also
    written to FILE with the command and the Triton version (a results file)."""
    import argparse

    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("run with TRITON_INTERPRET unset: the kernels must be compiled, not interpreted")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-warps", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    reports = []
    seen: set[str] = set()
    for kernel, bound, launch_options in caught_launches(service_launches):
        options = (
            launch_options if args.num_warps is None else {**launch_options, "num_warps": args.num_warps}
        )
        variants = [{"PDL_WAIT": True}] if "PDL_WAIT" in kernel.arg_names else [{}]
        if "FAST" in kernel.arg_names:  # the sampler: sorted rows, and the bitonic top-64 before them
            variants = [{**v, "FAST": fast} for v in variants for fast in (0, 64)]
        for overrides in variants:
            report = compile_launch(kernel, bound, options, overrides)
            key = json.dumps({k: report.get(k) for k in ("kernel", "constexprs", *_OPTIONS)}, sort_keys=True)
            if key not in seen:
                seen.add(key)
                reports.append(report)
    write_report(reports, "kernels-compiled-for-sm90", args.out)


def write_report(reports: list[dict[str, Any]], benchmark: str, out: str | None) -> None:
    """Print the reports as one JSON list; with `out`, also a results file with the command and the
    Triton version."""
    import triton

    print(json.dumps(reports))
    if out:
        Path(out).write_text(
            json.dumps(
                {
                    "benchmark": benchmark,
                    "command": "python tests/support_kernel_compile.py " + " ".join(sys.argv[1:]),
                    "triton": triton.__version__,
                    "target": f"cuda sm_{TARGET_ARCH}",
                    "launches": reports,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
