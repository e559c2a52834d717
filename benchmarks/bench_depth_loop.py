"""The one-row frame's persistent depth loop (`serve_app.model.kernels.depth_loop`) on the GPU.

Random CSM-1B weights (bf16). For each setting (programs an SM x warps a program, then the switches of `SETTING`: `3x4r168`, `2x4k`):
- the loop's launch alone, replayed as a CUDA graph: µs a frame and a depth step;
- a traced launch (each phase's end read from the GPU's clock as its last item counts in): the
  chain's time by phase kind, µs a step, summed over the layers;
and the whole graphed frame at one row (`FastStep.depth_frame` after the backbone state), with the
loop and with the depth steps as launches (`fast_step.DEPTH_LOOP` off), with their codes' agreement.

    python benchmarks/bench_depth_loop.py --settings 2x4,1x8 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_fused_linear import graph_us  # a sibling module: its folder is on the path when run

from serve_app.model import fast_step
from serve_app.model.fast_step import FastStep
from serve_app.model.kernels import depth_loop
from serve_app.model.tiny import CSM_1B_CONFIG, random_model

KINDS = ("qkv", "attention", "output", "gate_up", "down")

SETTING = re.compile(
    r"(?P<resident>\d+)x(?P<warps>\d+)(?:r(?P<registers>\d+))?(?P<keys>k)?(?P<tickets>t)?(?P<same>s)?(?P<bits>b)?"
    r"(?P<next>n)?"
)
"""Programs an SM x warps, then optionally a register cap (`r168`), the attention's older keys loaded
before its wait (`k`, `depth_loop.KEYS_BEFORE_WAIT`), items by ticket (`t`, `depth_loop.TICKETS`),
each program's same items every step (`s`, `depth_loop.SAME_ITEMS_EACH_STEP`), the draw's k-th
score bit by bit (`b`, `depth_loop.DRAW_KTH_BY_BITS`) and the next projection tile requested ahead
(`n`, `depth_loop.NEXT_TILE_AHEAD`)."""


def phase_profile(loop: depth_loop.DepthLoop, run) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """µs a step by phase kind (the layers' phases summed), median over the traced launch's steps."""
    loop.trace_phases()
    run()
    torch.cuda.synchronize()
    ns = loop.phase_ns().double()  # (steps, phases)
    loop.trace_phases(False)
    layers = loop.geo.layers
    profile = {kind: float(ns[:, i : 5 * layers : 5].sum(1).median()) / 1000 for i, kind in enumerate(KINDS)}
    profile["head"] = float(ns[:, 5 * layers].median()) / 1000
    profile["draw"] = float(ns[:, 5 * layers + 1].median()) / 1000
    profile["step"] = float(ns.sum(1).median()) / 1000
    profile["first_step"] = float(ns[0].sum()) / 1000
    return {k: round(v, 2) for k, v in profile.items()}


def time_setting(model, h: torch.Tensor, sampling: tuple[torch.Tensor, ...]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The loop's launch (graphed, and traced) and the one-row depth frame under the current setting."""
    fast = FastStep(model, 2048, True, linear_max_batch=1 << 16)
    loop = fast._depth_loop
    assert loop is not None
    _, _, inputs = fast._frame_start(h, *sampling)

    def run() -> torch.Tensor:
        return loop.run(inputs, *sampling)

    us = graph_us(run)
    return {
        "programs": loop.grid,
        "loop_us": round(us, 1),
        "us_per_step": round(us / loop.steps, 2),
        "traced_us_per_step": phase_profile(loop, run),
        "frame_ms": round(graph_us(lambda: fast.depth_frame(h, *sampling)) / 1000, 3),
    }


def model_frames(model, h: torch.Tensor, sampling: tuple[torch.Tensor, ...]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """One one-row depth frame's codes under the current settings."""
    return FastStep(model, 2048, True, linear_max_batch=1 << 16).depth_frame(h, *sampling).clone()


SWITCHES = (
    "RESIDENT", "NUM_WARPS", "MAX_REGISTERS", "KEYS_BEFORE_WAIT", "TICKETS", "SAME_ITEMS_EACH_STEP", "DRAW_KTH_BY_BITS",
    "NEXT_TILE_AHEAD",
)
"""The `depth_loop` module's settings a `SETTING` gives, in its order."""


def parse_setting(text: str) -> dict[str, Any]:
    """One `--settings` entry as its row's fields (`SWITCHES` in order), or SystemExit."""
    parsed = SETTING.fullmatch(text)
    if parsed is None:
        raise SystemExit(f"a setting is RxW[rREGISTERS][k][t][s][b][n], not {text!r}")
    return {
        "resident": int(parsed["resident"]),
        "warps": int(parsed["warps"]),
        "max_registers": int(parsed["registers"]) if parsed["registers"] else None,
        "keys_before_wait": bool(parsed["keys"]),
        "tickets": bool(parsed["tickets"]),
        "same_items_each_step": bool(parsed["same"]),
        "draw_kth_by_bits": bool(parsed["bits"]),
        "next_tile_ahead": bool(parsed["next"]),
    }


@torch.inference_mode()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings", default="2x4ksbn,2x4kbn,2x4k", help="RxW[rREGISTERS][k][t][s][b][n], comma-separated"
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    parser.add_argument(
        "--no-launches", action="store_true", help="skip the frame with its depth steps as launches (their compiles)"
    )
    args = parser.parse_args(argv)
    settings = {text: parse_setting(text) for text in args.settings.split(",")}  # before the GPU's minutes
    device = torch.device("cuda")
    model = random_model(CSM_1B_CONFIG, device="cuda").eval().to(torch.bfloat16)
    model.setup_caches(1)
    gen = torch.Generator("cuda").manual_seed(1)
    h = torch.randn(1, CSM_1B_CONFIG.backbone.dim, device=device, dtype=torch.bfloat16, generator=gen) * 0.5
    ones = torch.ones(1, device=device, dtype=torch.long)
    sampling = (ones.float() * 0.9, ones * 50, ones * 7, ones)
    gpu = torch.cuda.get_device_name(0)
    result: dict[str, Any] = {
        "benchmark": "depth-loop",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_depth_loop.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": gpu,
        "torch": torch.__version__,
        "settings": [],
    }
    frames: dict[str, torch.Tensor] = {}
    saved = {name: getattr(depth_loop, name) for name in SWITCHES}
    for setting, fields in settings.items():
        row: dict[str, Any] = dict(fields)
        for name, value in zip(SWITCHES, fields.values(), strict=True):
            setattr(depth_loop, name, value)
        try:
            row |= time_setting(model, h, sampling)
            frames[setting] = model_frames(model, h, sampling)
        except Exception as exc:  # noqa: BLE001  # one setting that does not fit must not end the run
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        result["settings"].append(row)
        print(json.dumps(row), flush=True)
    for name, value in saved.items():
        setattr(depth_loop, name, value)
    if not args.no_launches:
        fast_step.DEPTH_LOOP = False
        try:
            launches = FastStep(model, 2048, True, linear_max_batch=1 << 16)
            result["step_launches_frame_ms"] = round(graph_us(lambda: launches.depth_frame(h, *sampling)) / 1000, 3)
            codes = model_frames(model, h, sampling)
        finally:
            fast_step.DEPTH_LOOP = True
        result["codes_equal_to_step_launches"] = {
            s: round(float(c.eq(codes).float().mean()), 4) for s, c in frames.items()
        }
        print(json.dumps({k: result[k] for k in ("step_launches_frame_ms", "codes_equal_to_step_launches")}))
    # The codes themselves, so runs of other code trees can be checked for the same draws.
    result["codes"] = {s: c.flatten().tolist() for s, c in frames.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.date.today().isoformat()}-{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}-depth-loop.json"
    path.write_text(json.dumps(result, indent=1))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
