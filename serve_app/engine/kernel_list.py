"""Record which Triton kernel specializations an engine start compiles, for `kernels.ahead`.

Run on a GPU of the target the list is for, after a change to a kernel's signature or to what the
engine captures:

    python -m serve_app.engine.kernel_list --model csm-1b-random --max-batch-size 128,256

Each engine is built with recording on, then streams a few short requests of several prompt lengths
(kernels first launched at a request, not at capture); the specializations are merged into the
shipped file under this GPU's target, sorted, each once."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from serve_app.engine.engine import Engine
from serve_app.engine.types import GenerationRequest
from serve_app.model.kernels import ahead
from serve_app.model.loading import load_model

REQUEST_TEXTS = (
    "Hello.",
    "A short sentence to say, with a comma.",
    (
        "A longer request of several sentences. It is here so that the prompt buckets past the first "
        "one are launched once too. The engine captures most of them ahead; this catches the rest."
    ),
)


async def _requests(engine: Engine) -> None:
    for text in REQUEST_TEXTS:
        await engine.generate(GenerationRequest(text=text, max_audio_length_ms=800))
    await asyncio.gather(
        *(engine.generate(GenerationRequest(text=t, max_audio_length_ms=400)) for t in REQUEST_TEXTS * 3)
    )


def record(model: str, batch_sizes: list[int]) -> tuple[str, list[str]]:
    """(the model's key, the specializations compiled by starting its engine at each of
    `batch_sizes` slots), in this process, one after the other (each compiling only what the ones
    before did not), with nothing compiled ahead."""
    os.environ["CSM_COMPILE_AHEAD"] = "0"
    with ahead.recording() as specs:
        loaded = load_model(model, device="cuda")
        for size in batch_sizes:
            engine = Engine(loaded, max_batch_size=size)
            try:
                asyncio.run(_requests(engine))
            finally:
                engine.close()
    return ahead.geometry_key(loaded.model.cfg), specs


def merge(path: Path, key: str, specs: list[str], triton_version: str) -> dict[str, object]:
    """`path`'s lists with `key`'s replaced by `specs` (sorted, each once)."""
    shipped = json.loads(path.read_text()) if path.exists() else {}
    lists = dict(shipped.get("lists", {}))
    lists[key] = {"triton": triton_version, "specializations": sorted(set(specs))}
    return {"lists": dict(sorted(lists.items()))}


def main() -> None:
    import triton

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="csm-1b-random")
    ap.add_argument("--max-batch-size", default="128,256", help="engines' slot counts, comma-separated")
    ap.add_argument("--out", type=Path, default=ahead.SHIPPED)
    args = ap.parse_args()
    key, specs = record(args.model, [int(s) for s in args.max_batch_size.split(",")])
    key = ahead.list_key(ahead.target_name(ahead.current_target()), key)
    args.out.write_text(json.dumps(merge(args.out, key, specs, triton.__version__), indent=0) + "\n")
    print(f"{len(set(specs))} specializations for {key} -> {args.out}")


if __name__ == "__main__":
    main()
