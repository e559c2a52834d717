"""Every Triton kernel the service launches compiles for a Hopper GPU (sm_90) on this machine without
one, through Triton's own compiler and `ptxas`, as production launches it
(`tests/support_kernel_compile.py`): the CPU interpreter that runs the kernels' arithmetic in the
other tests accepts code the GPU compiler refuses.
(The fused projections' TMA loads, which only a CUDA device takes, compile on the GPU alone.)"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support_kernel_compile import MAX_SHARED_BYTES, ptxas_binaries

ROOT = Path(__file__).resolve().parents[1]


def kernels_in_the_package() -> set[str]:
    """Names of the `@triton.jit` functions named `*_kernel` (launched from the host) in serve_app."""
    names = set()
    for path in (ROOT / "serve_app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            jitted = isinstance(node, ast.FunctionDef) and any(
                ast.unparse(d).startswith(("triton.jit", "jit")) for d in node.decorator_list
            )
            if jitted and node.name.endswith("_kernel"):
                names.add(node.name)
    return names


@pytest.mark.timeout(900)
def test_every_kernel_the_service_launches_compiles_for_hopper() -> None:
    if not any(Path(p).exists() for p in ptxas_binaries()):
        pytest.skip("this Triton has no NVIDIA backend with ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "support_kernel_compile.py")],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    reports = json.loads(run.stdout)
    failed = [f"{r['kernel']}: {r['error']}" for r in reports if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert {r["kernel"] for r in reports} == kernels_in_the_package()  # none left out
    assert all(r["shared"] <= MAX_SHARED_BYTES for r in reports)
    assert all(r["constexprs"].get("PDL_WAIT", "True") == "True" for r in reports)  # as launched on Hopper
    assert {r["constexprs"]["FAST"] for r in reports if r["kernel"] == "_sample_kernel"} == {"0", "64"}
    assert {r["constexprs"]["EMBED"] for r in reports if r["kernel"] == "_sample_kernel"} == {"False", "True"}
    attention_modes = {
        (r["constexprs"]["WRITE"], r["constexprs"]["ATTEND"], r["constexprs"]["HAS_SLOTS"])
        for r in reports
        if r["kernel"] == "_decode_attention_kernel"
    }  # a decode step's; a prompt's writes, then its attention
    assert attention_modes == {("True", "True", "False"), ("True", "False", "True"), ("False", "True", "True")}
    folded = [r for r in reports if r["kernel"] == "_linear_kernel" and r["constexprs"].get("ATTEND") == "True"]
    assert len(folded) == 1, "the depth QKV with its attention folded in"
