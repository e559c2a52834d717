"""The HTTP benchmark's accounting: Server-Timing hops and the per-phase summary."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_http
import pytest


def test_server_timing_header_parsed_into_hops() -> None:
    assert bench_http.server_timing("api;dur=12.5, engine;dur=9.1") == {"api": 12.5, "engine": 9.1}
    assert bench_http.server_timing('db;desc="x";dur=3, bad;dur=x, ;dur=1, cache') == {"db": 3.0}
    assert bench_http.server_timing("") == {}


def test_summary_reports_first_audio_per_hop_for_answered_requests_only() -> None:
    ok = [
        bench_http.Result(start=0.0, status=200, first_byte=0.05 + i / 1000, end=1.0, audio_bytes=48000,
                          server_ms={"app": 45.0 + i, "api": 40.0 + i, "engine": 30.0 + i, "admit": 5.0 + i,
                                     "queue": 1.0 + i, "limit": 2.0 + i, "in_relay": 3.0 + i, "out_engine": 0.5})
        for i in range(10)
    ]
    refused = bench_http.Result(start=0.0, status=503, end=0.01, server_ms={"api": 1.0})
    out = bench_http.summary([*ok, refused], bytes_per_s=48000)
    assert out["api_first_audio_ms_p50"] == 44.5 and out["engine_first_audio_ms_p50"] == 34.5
    assert out["app_first_audio_ms_p50"] == 49.5 and out["engine_admitted_ms_p50"] == 9.5
    assert out["engine_queued_ms_p50"] == 5.5 and out["app_limit_ms_p50"] == 6.5
    assert out["engine_first_audio_ms_p99"] < out["api_first_audio_ms_p99"] <= 49.0
    assert out["status_503"] == 1 and out["ok"] == 10
    # The first chunk's hops between the server's layers, by the names the server gave them.
    assert out["hop_in_relay_ms_p50"] == 7.5 and out["hop_out_engine_ms_p99"] == 0.5
    assert not any(key.startswith("hop_in_engine") for key in out)  # not reported: not summarised


def test_summary_counts_answers_without_audio_apart_from_the_good_ones() -> None:
    good = bench_http.Result(start=0.0, status=200, first_byte=0.05, end=1.0, audio_bytes=48000)
    empty = [bench_http.Result(start=0.0, status=200, end=0.02) for _ in range(3)]
    cut = bench_http.Result(start=0.0, status=200, first_byte=0.05, audio_bytes=960, error="cut at window end")
    out = bench_http.summary([good, *empty, cut], bytes_per_s=48000)
    assert out["ok"] == 1 and out["empty_audio"] == 3 and out["errors"] == 0


def test_engine_delta_gives_the_loop_per_iteration_and_the_rows_of_a_step() -> None:
    before = {"steps": 100, "iterations": 100.0, "wait_s": 1.0, "launch_s": 0.2, "host_s": 0.3}
    after = {"steps": 300, "iterations": 300.0, "wait_s": 2.6, "launch_s": 0.6, "host_s": 1.1}
    # 200 steps while the clients received 1600 frames (128 s of audio): 8 rows a step.
    out = bench_http.engine_delta(before, after, audio_s=128.0)
    assert out == {
        "loop_iterations": 200,
        "loop_ms_per_iteration": {"wait": 8.0, "launch": 2.0, "host": 4.0},
        "rows_per_step": 8.0,
    }
    assert bench_http.engine_delta(None, after, 1.0) == {} and bench_http.engine_delta(after, after, 1.0) == {}


def test_the_neighbour_phase_asks_as_two_callers_of_a_live_server(tmp_path: Path) -> None:
    """`--neighbour`: a flood from one key, then one stream from another key and one more from the
    first, over real HTTP; the server files them under their two keys."""
    import asyncio

    from serve_app.api.app import create_app
    from serve_app.api.auth import key_id
    from serve_app.api.settings import ApiSettings
    from tests.support_tools import ToneEngine, serve_http

    engine = ToneEngine(frame_delay_s=0.005)
    app = create_app(engine, ApiSettings(voices_dir=tmp_path / "voices", api_keys="flood-key,other-key"))
    argv = [
        "--api-key", "flood-key", "--neighbour", "6", "--neighbour-key", "other-key", "--neighbour-after-s", "0.2",
        "--idle-trials", "0", "--burst", "0", "--streams", "", "--poisson-load", "0", "--audio-ms", "800",
        "--out", str(tmp_path), "--name", "neighbour",
    ]
    with serve_http(app) as url:
        result = asyncio.run(bench_http.run(bench_http.parse_args(["--url", url, *argv])))
    phase = result["neighbour"]
    assert phase["flooding_requests"] == 6 and phase["flooding"]["ok"] == 6
    # every flooding stream counted once in the timeline of its first audio and of its end
    assert sum(phase["flooding_first_audio_per_s"].values()) == 6 and sum(phase["flooding_ends_per_s"].values()) == 6
    for arm in ("own_caller", "flooding_callers_queue"):
        assert phase[arm]["ok"] == 1 and phase[arm]["errors"] == 0 and phase[arm]["ttfa_ms_p50"] > 0
    assert engine.most_streaming >= 6, "the flood's streams run at once (the client opens enough connections)"
    callers = [r.caller for r in engine.requests]
    # the flood, the one behind it, and the two warm-up requests every run starts with
    assert callers.count(key_id("flood-key")) == 6 + 1 + 2 and callers.count(key_id("other-key")) == 1


def test_the_neighbour_phase_needs_the_other_callers_key() -> None:
    with pytest.raises(SystemExit):
        bench_http.parse_args(["--neighbour", "4"])


def test_per_second_counts_by_whole_second_in_order() -> None:
    assert bench_http.per_second([2.5, 0.1, 0.9, 2.0, 11.2]) == {"0": 2, "2": 2, "11": 1}
    assert list(bench_http.per_second([12.0, 3.0])) == ["3", "12"]
