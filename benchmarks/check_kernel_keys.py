"""Whether a launch finds what the compile-ahead pool compiled: for each shipped specialization, the
disk-cache key parts a launch computes (its arguments rebuilt from the recorded types and alignments,
bound by Triton's own binder) against those the pool's compile computes (`preload`'s path). Needs no
GPU: run with the Triton the GPU image has on the path.

    PYTHONPATH=/path/to/triton-3.6:$PWD python benchmarks/check_kernel_keys.py

Prints one JSON line: specializations checked, those whose in-memory key, source key or options
differ, and the Triton version. Both sides run in this one process, where a JIT function's key, once
computed, is kept: whether a key depends on which kernel a process keys first is another question
(`serve_app/model/kernels/keys.py`, `tests/test_kernel_keys.py`)."""

from __future__ import annotations

import ast
import json
import re
import sys
from typing import Any

import torch

DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "i64": torch.int64,
    "i32": torch.int32,
}


def launch_args(spec: dict[str, Any]) -> list[Any]:
    """Arguments a launch of `spec` could pass: aligned or misaligned tensors, ints divisible by 16 or
    not, the recorded constants, TMA descriptors of the recorded block shapes."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    consts = {k[0]: v for k, v in zip(spec["constant_keys"], spec["constant_vals"], strict=True)}
    attrs = {k[0]: v for k, v in zip(spec["attrs_keys"], spec["attrs_vals"], strict=True)}
    args: list[Any] = []
    for i, ty in enumerate(spec["signature"].values()):
        if ty == "constexpr":
            args.append(consts[i])
        elif ty.startswith("*"):
            t = torch.empty(64, dtype=DTYPES[ty[1:]])
            args.append(t if attrs.get(i) else t[1:])
        elif ty.startswith("tensordesc<"):
            m = re.fullmatch(r"tensordesc<(\w+)\[(\d+), (\d+)\]>", ty)
            assert m is not None, ty
            block = [int(m.group(2)), int(m.group(3))]
            args.append(TensorDescriptor.from_tensor(torch.empty(512, 512, dtype=DTYPES[m.group(1)]), block))
        elif ty in ("i32", "i64"):
            args.append(32 if attrs.get(i) else 33)
        elif ty == "fp32":
            args.append(0.5)
        else:
            raise ValueError(f"no stand-in for an argument of type {ty}")
    return args


def main() -> None:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.jit import convert_to_tuple_if_list, create_function_from_signature

    from serve_app.model.kernels import ahead

    backend = make_backend(GPUTarget("cuda", 90, 32))
    key = sys.argv[1] if len(sys.argv) > 1 else next(iter(json.loads(ahead.SHIPPED.read_text())["lists"]))
    differ: list[str] = []
    specs = ahead.shipped_specializations(key)
    for raw in specs:
        spec = json.loads(ahead.portable(raw))
        fn = ahead.kernel_of(raw)
        kwargs = ast.literal_eval(spec["key"][spec["key"].rindex("{") :])  # the launch's options, as recorded
        binder = create_function_from_signature(fn.signature, fn.params, backend)  # type: ignore[attr-defined]
        bound, specialization, options = binder(*launch_args(spec), **kwargs)
        launch_options, signature, constexprs, attrs = fn._pack_args(  # type: ignore[attr-defined]
            backend, kwargs, bound, specialization, options
        )
        launch = ASTSource(fn, signature, constexprs, attrs)
        constants = {
            tuple(k): tl.dtype(v)
            if tl.dtype.is_dtype(v)
            else tl.constexpr(v["constexpr"])
            if isinstance(v, dict) and "constexpr" in v
            else v
            for k, v in zip(spec["constant_keys"], spec["constant_vals"], strict=True)
        }
        pool = ASTSource(
            fn,
            {k: convert_to_tuple_if_list(v) for k, v in spec["signature"].items()},
            constants,
            dict(zip(map(tuple, spec["attrs_keys"]), spec["attrs_vals"], strict=True)),
        )
        pool_options = backend.parse_options(
            {k: tuple(v) if isinstance(v, list) else v for k, v in spec["options"].items()}
        )
        same = (
            str(specialization) == spec["key"][: spec["key"].rindex("{")]
            and launch.hash() == pool.hash()
            and launch_options.hash() == pool_options.hash()
        )
        if not same:
            differ.append(spec["name"].rpartition(".")[2])
    print(json.dumps({"triton": triton.__version__, "list": key, "checked": len(specs), "differ": differ}))


if __name__ == "__main__":
    main()
