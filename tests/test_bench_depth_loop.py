"""The depth-loop benchmark's settings: each names the loop's switches, and a malformed one stops the
run before any GPU work (the benchmark itself runs on the GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_depth_loop as b


def test_a_setting_names_each_switch_of_the_loop() -> None:
    assert b.parse_setting("2x4") == {
        "resident": 2, "warps": 4, "max_registers": None, "keys_before_wait": False, "tickets": False,
        "same_items_each_step": False, "draw_kth_by_bits": False, "next_tile_ahead": False,
    }
    assert b.parse_setting("3x4r168ktsb") == {
        "resident": 3, "warps": 4, "max_registers": 168, "keys_before_wait": True, "tickets": True,
        "same_items_each_step": True, "draw_kth_by_bits": True, "next_tile_ahead": False,
    }
    assert b.parse_setting("2x4kn")["next_tile_ahead"]
    from serve_app.model.kernels import depth_loop

    assert all(hasattr(depth_loop, name) for name in b.SWITCHES)
    assert len(b.SWITCHES) == len(b.parse_setting("2x4"))


@pytest.mark.parametrize("text", ["2x", "2x4q", "x4", "2x4tk", "2x4sk", "2x4bs", "2x4nk"])
def test_a_malformed_setting_stops_the_run_before_the_gpu(text: str) -> None:
    with pytest.raises(SystemExit, match="RxW"):
        b.main(["--settings", f"2x4,{text}"])
