"""The engine benchmark: full CSM-1B shapes with random weights (bf16), one GPU, one call does all.

Sections, each written to the JSON as soon as it is done (a cut-off run keeps what it measured):
  correctness   bf16 logits vs the fp32 path on the same weights (teacher-forced depth decoder), and
                the engine's compiled, graph-captured step vs the plain eager PyTorch step (same bf16
                weights): greedy codes where the logits have a clear margin must agree (>= 99%); the
                script exits with status 1 when a correctness gate fails
  step          one decode step replayed from its CUDA graphs, per batch bucket
  ttfa          time to first audio: 20-word prompt, no context, `Engine.stream` (prefill + first frame
                + Mimi decode), engine otherwise idle
  neighbour     one caller floods the engine (a stream a slot and as many queued), then another asks for
                one stream: its first audio as a caller of its own, and as one more request of the
                flooding caller (behind its queue), 25-frame streams
  prefill       prefill time for prompts of 500 and 1500 rows
  bs1           ms per frame of one stream through the engine (steady state, 50 frames)
  throughput    N concurrent streams through `Engine.stream`: audio seconds per second and the
                slowest stream's real-time factor (wall / audio; < 1 is faster than real time)
  churn         N closed-loop clients (`--churn`), each asking for a 4-second utterance again as soon as
                its last one ends, as `bench_http.py`'s throughput levels do: audio s per s within a
                window, first audio, each request's real-time factor, audio decode launches per loop
                iteration
  loop variants `--loop-variants`: the throughput and churn runs again under each setting of the
                loop's audio path (chunk alignment, the step stream's priority), in the same process
  hf            transformers' CsmForConditionalGeneration in the same run, same shapes and sampling
                (top-k 50, T 0.9), eager and static cache + torch.compile, batch 1, 50 frames

    PYTHONPATH=. python3 benchmarks/bench_engine.py            # GPU: writes $OUT/<date>-<gpu>.json + .png
    PYTHONPATH=. python3 benchmarks/bench_engine.py --smoke    # CPU, tiny preset, the whole script

Random weights sample random codes, so no stream ends early: every stream runs its full length. The
silence guard is off for the same reason (random Mimi output may be quiet). The prompt text is
tokenized by a word-level tokenizer, so prompt lengths match the real Llama-3 tokenizer's roughly
(one token per word); weights and tokenizer are not the released ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import host_probe
from numerics import rel_err

from serve_app.engine.engine import Engine, freeze_built_objects, lower_switch_interval
from serve_app.engine.prompt import build_prompt
from serve_app.engine.sequence import Sequence
from serve_app.engine.types import GenerationRequest, SamplingParams, Segment
from serve_app.model import mimi_stream_seanet
from serve_app.model.config import CsmModelConfig, to_hf_config_dict
from serve_app.model.csm import CsmModel
from serve_app.model.fast_step import PREFILL_ATTENTIONS, FastStep
from serve_app.model.loading import LoadedModel
from serve_app.model.mimi import MimiCodec
from serve_app.model.tiny import CSM_1B_CONFIG
from serve_app.model.tokenizer import BOS_TOKEN, EOS_TOKEN, TextTokenizer

FRAME_S = 0.08
PROMPT_20_WORDS = (
    "The quick brown fox jumps over the lazy dog while seven happy children sing songs about "
    "summer rain falling softly."
)
CSM_1B = CSM_1B_CONFIG


# ---- set-up -----------------------------------------------------------------------------------------
def word_tokenizer(texts: list[str]) -> TextTokenizer:
    """One token per word or punctuation mark (like Llama-3 on plain English), offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)} | set("[]0123456789"))
    vocab = {w: i for i, w in enumerate(words)}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    return TextTokenizer(tok)


def random_csm(cfg: CsmModelConfig, device: str, seed: int = 0) -> CsmModel:
    """fp32 random weights initialised on the device (N(0, 0.02), unit norms) — as transformers does."""
    with torch.device("meta"):
        model = CsmModel(cfg)
    model = model.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    model.reset_buffers(device)
    return model.eval().requires_grad_(False)


def mimi_config(smoke: bool) -> Any:
    from transformers import MimiConfig

    if smoke:
        from serve_app.model.tiny import tiny_mimi_config

        return tiny_mimi_config()
    return MimiConfig()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---- correctness -----------------------------------------------------------------------------------
MIN_CODE_AGREEMENT = 0.99
"""The graphed engine step's greedy codes vs the plain eager step's, where the margin is clear."""
CLEAR_MARGIN = 0.1
"""A greedy pick is clear when its logit beats the runner-up by this many standard deviations of the
logits. Random weights give Gaussian logits over 2048 codes, whose top two are only ~0.2 standard
deviations apart (median), so about a third of the picks are near-ties that a bf16 rounding may flip
either way. Measured on CPU, bf16 vs fp32 teacher-forced over CSM-1B widths with N(0, 0.02) weights:
94.5% of all greedy codes agree and all the clear ones (87 of 128). Larger weights do not widen the
gap relative to the spread, they only add error (N(0, 0.08), 4 backbone layers: 85% agree, 96% of the
clear ones), so the gate counts the clear picks of the usual N(0, 0.02) weights."""


class Probe:
    """Stands in for a FastStep's sampler: records each codebook's logits, returns forced or greedy ids."""

    def __init__(self, fast: FastStep, forced: torch.Tensor | None = None) -> None:
        self.logits: list[torch.Tensor] = []
        self.forced = forced
        fast._sample = self  # type: ignore[method-assign]

    def __call__(self, logits: torch.Tensor, codebook: int, *_: Any) -> torch.Tensor:
        self.logits.append(logits.float())
        if self.forced is not None:
            return self.forced[:, codebook]
        return logits[:, :2048].argmax(-1)


@torch.inference_mode()
def first_frame(
    model: CsmModel, tokens: torch.Tensor, mask: torch.Tensor, forced: torch.Tensor | None = None
):
    """Plain eager path: prefill, the last prompt row's step, one greedy (or forced) frame."""
    dev = model.codebook0_head.weight.device
    model.setup_caches(1)
    fast = FastStep(model, vocab_limit=2048)
    probe = Probe(fast, forced)
    t = tokens.shape[0]
    kv = min(-(-t // 16) * 16, model.max_seq_len)
    fast.prefill(
        tokens[None, :-1].to(dev),
        mask[None, :-1].to(dev),
        torch.arange(t - 1, device=dev)[None],
        torch.zeros(1, dtype=torch.long, device=dev),
        kv,
    )
    embeds = model.embed_rows(tokens[None, -1:].to(dev), mask[None, -1:].to(dev))[:, 0]
    h = fast.backbone_step(embeds, torch.tensor([t - 1], device=dev), kv)
    ones = torch.ones(1, dtype=torch.long, device=dev)
    codes = fast.depth_frame(h, ones.float(), ones, ones, ones * 0)
    return h.float(), probe.logits, codes


@torch.inference_mode()
def core_frame(model: CsmModel, tokens: torch.Tensor, mask: torch.Tensor, forced: torch.Tensor):
    """The model core's own forward (`CsmModel`, parity-tested against transformers), teacher-forced."""
    dev = model.codebook0_head.weight.device
    model.setup_caches(1)
    t = tokens.shape[0]
    h = model.backbone_forward(
        model.embed_rows(tokens[None].to(dev), mask[None].to(dev)), torch.arange(t, device=dev)[None]
    )[:, -1]
    logits: list[torch.Tensor] = []

    def sampler(x: torch.Tensor, codebook: int) -> torch.Tensor:
        logits.append(x.float())
        return forced[:, codebook]

    model.generate_frame(h, sampler)
    return h.float(), logits


def precision_errors(
    h: torch.Tensor, logits: list[torch.Tensor], h_ref: torch.Tensor, logits_ref: list[torch.Tensor]
) -> dict[str, float]:
    def err(a: torch.Tensor, b: torch.Tensor) -> float:  # the fused heads compute the audio ids only
        width = min(a.shape[-1], b.shape[-1])
        return rel_err(a[..., :width], b[..., :width])

    depth = [err(a, b) for a, b in zip(logits[1:], logits_ref[1:])]
    return {
        "hidden_rel_err": rel_err(h, h_ref),
        "codebook0_logits_rel_err": err(logits[0], logits_ref[0]),
        "depth_logits_rel_err_max": max(depth),
        "depth_logits_rel_err_median": statistics.median(depth),
    }


def correctness_precision(model32: CsmModel, model16: CsmModel, tokens, mask) -> dict[str, Any]:
    """bf16 vs fp32 on the same weights, every codebook fed the fp32 path's codes. The bar: the
    engine's bf16 error is no worse (within 25%, or under 2e-2) than the model core's own bf16 error."""
    h32, logits32, codes32 = first_frame(model32, tokens, mask)
    h16, logits16, _ = first_frame(model16, tokens, mask, forced=codes32)
    core_h16, core_logits16 = core_frame(model16, tokens, mask, codes32)
    engine = precision_errors(h16, logits16, h32, logits32)
    core = precision_errors(core_h16, core_logits16, h32, logits32)
    ok = all(engine[k] <= max(2e-2, 1.25 * core[k]) for k in engine)
    return {"engine_bf16": engine, "model_core_bf16": core, "pass": ok}


def greedy_picks(logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per codebook: the greedy code among the 2048 decodable ones and whether its margin is clear."""
    picks, clear = [], []
    for x in logits:
        x = x[:, :2048].float()
        top2 = x.topk(2, dim=-1).values
        picks.append(x.argmax(-1))
        clear.append((top2[:, 0] - top2[:, 1]) > CLEAR_MARGIN * x.std(dim=-1))
    return torch.stack(picks, 1), torch.stack(clear, 1)


def kv_window(n: int, model: CsmModel) -> int:
    return min(-(-n // 16) * 16, model.max_seq_len)


@torch.inference_mode()
def correctness_fast_path(
    engine: Engine, plain: CsmModel, tokens, mask, tolerance: float, frames: int = 8
) -> dict[str, Any]:
    """The engine's step (compiled + CUDA graphs + Triton kernels on a GPU) vs the plain eager PyTorch
    step on the same weights, both bf16 (fp32 in --smoke), greedy. The plain step is teacher-forced on
    the engine's codes, so each of its picks is made from the same inputs as the engine's: where the
    plain logits have a clear margin, the engine must pick the same code (`MIN_CODE_AGREEMENT`).
    Hidden states and codebook-0 logits must agree within `tolerance` (twice the bf16 error)."""
    runner = engine.loop.runner
    dev = runner.device
    t = tokens.shape[0]
    req = GenerationRequest(text="x", sampling=SamplingParams(top_k=1, seed=0))
    seq = Sequence(req, tokens, mask, 0, lambda _: None, max_frames=frames)
    seq.slot = 0
    runner.start([seq])
    h_fast, codes_fast = [], []
    on_step_stream = torch.cuda.stream(runner.step_stream) if runner.step_stream else contextlib.nullcontext()
    with on_step_stream:  # read each step's outputs behind it, on the stream it runs on
        for i in range(frames):
            runner.step(1, t + i)
            h_fast.append(runner.hidden[:1].float().clone())
            codes_fast.append(runner.codes[:1].clone())
    runner.release(0)
    sync(dev.type)

    plain.setup_caches(1)
    fast = FastStep(plain, vocab_limit=2048, fused_attention=False)
    probe = Probe(fast)
    fast.prefill(
        tokens[None, :-1].to(dev),
        mask[None, :-1].to(dev),
        torch.arange(t - 1, device=dev)[None],
        torch.zeros(1, dtype=torch.long, device=dev),
        kv_window(t, plain),
    )
    embeds = plain.embed_rows(tokens[None, -1:].to(dev), mask[None, -1:].to(dev))[:, 0]
    ones = torch.ones(1, dtype=torch.long, device=dev)
    h_plain, picks, clear = [], [], []
    for i in range(frames):
        h = fast.backbone_step(embeds, torch.tensor([t - 1 + i], device=dev), kv_window(t + i, plain))
        probe.logits, probe.forced = [], codes_fast[i]
        fast.depth_frame(h, ones.float(), ones, ones, ones * i)
        frame_picks, frame_clear = greedy_picks(probe.logits)
        h_plain.append(h.float())
        picks.append(frame_picks)
        clear.append(frame_clear)
        embeds = plain.embed_frame(codes_fast[i])
    same = torch.cat(picks).eq(torch.cat(codes_fast))
    clear_picks = torch.cat(clear)
    h_fast_all, h_plain_all = torch.cat(h_fast), torch.cat(h_plain)
    head = plain.codebook0_head.weight.float()
    out = {
        "hidden_rel_err": rel_err(h_fast_all, h_plain_all),
        "codebook0_logits_rel_err": rel_err(h_fast_all @ head.T, h_plain_all @ head.T),
        "greedy_codes_agreement": float(same.float().mean()),
        "clear_greedy_codes": int(clear_picks.sum()),
        "clear_greedy_codes_agreement": float(same[clear_picks].float().mean()),
        "min_clear_greedy_codes_agreement": MIN_CODE_AGREEMENT,
        "codes": same.numel(),
        "frames": frames,
        "tolerance": tolerance,
    }
    out["pass"] = (
        out["hidden_rel_err"] <= tolerance
        and out["codebook0_logits_rel_err"] <= tolerance
        and out["clear_greedy_codes"] >= same.numel() // 4
        and out["clear_greedy_codes_agreement"] >= MIN_CODE_AGREEMENT
    )
    return out


# ---- engine timings --------------------------------------------------------------------------------
def request(text: str, frames: int, seed: int) -> GenerationRequest:
    return GenerationRequest(text=text, max_audio_length_ms=frames * 80, sampling=SamplingParams(seed=seed))


async def time_stream(
    engine: Engine, req: GenerationRequest, stop_after_first: bool = False
) -> dict[str, Any]:
    t0 = time.perf_counter()
    arrivals, frames, admitted_ms = [], [], None
    stream = engine.stream(req)
    async for chunk in stream:
        arrivals.append(time.perf_counter() - t0)
        frames.append(chunk.frames)
        admitted_ms = chunk.admitted_ms if admitted_ms is None else admitted_ms
        if stop_after_first:
            await stream.aclose()
            break
    return {"arrivals": arrivals, "frames": frames, "admitted_ms": admitted_ms}


def wait_idle(engine: Engine) -> None:
    while any(engine.loop.scheduler.counts()[k] for k in ("running", "waiting")):
        time.sleep(0.002)


def bench_step(engine: Engine, batches: list[int], kv_len: int, iters: int) -> list[dict[str, Any]]:
    runner = engine.loop.runner
    rows = []
    for b in batches:
        if b > runner.n_slots:
            continue
        for _ in range(3):
            runner.step(b, kv_len)
        sync(runner.device.type)
        t0 = time.perf_counter()
        for _ in range(iters):
            runner.step(b, kv_len)
        sync(runner.device.type)
        ms = (time.perf_counter() - t0) * 1000 / iters
        rows.append(
            {
                "batch": b,
                "kv_window": runner.kv_bucket(kv_len),
                "ms_per_step": round(ms, 3),
                "audio_s_per_s_bound": round(b * FRAME_S * 1000 / ms, 1),
            }
        )
        print("step", rows[-1], flush=True)
    return rows


def bench_prefill(
    engine: Engine, tokenizer: TextTokenizer, rows: list[int], iters: int
) -> list[dict[str, Any]]:
    runner, dev = engine.loop.runner, engine.loop.runner.device.type
    out = []
    gen = torch.Generator().manual_seed(0)
    for n in rows:
        text_rows = len(tokenizer.encode_turn(PROMPT_20_WORDS, 0))
        ctx_frames = max(1, n - 2 * text_rows - 1)
        context = [
            Segment(
                text=PROMPT_20_WORDS,
                speaker=1,
                codes=torch.randint(0, 2048, (ctx_frames, 32), generator=gen).numpy(),
            )
        ]
        prompt = build_prompt(tokenizer, PROMPT_20_WORDS, 0, context, 10, runner.model.max_seq_len)
        seq = Sequence(request(PROMPT_20_WORDS, 10, 0), prompt.tokens, prompt.mask, 0, lambda _: None, 10)
        seq.slot = 0
        times = []
        for i in range(iters + 1):
            sync(dev)
            t0 = time.perf_counter()
            runner.start([seq])
            sync(dev)
            if i:
                times.append((time.perf_counter() - t0) * 1000)
            runner.release(0)
        out.append({"rows": len(prompt), "prefill_ms": round(statistics.median(times), 2)})
        print("prefill", out[-1], flush=True)
    return out


def bench_ttfa(engine: Engine, trials: int) -> dict[str, Any]:
    ttfa = []
    for i in range(trials + 1):
        res = asyncio.run(
            time_stream(engine, request(PROMPT_20_WORDS, 50, seed=100 + i), stop_after_first=True)
        )
        wait_idle(engine)
        if i:
            ttfa.append(res["arrivals"][0] * 1000)
    out = {
        "ttfa_ms_p50": round(statistics.median(ttfa), 2),
        "ttfa_ms_p90": round(float(np.percentile(ttfa, 90)), 2),
        "ttfa_ms_min": round(min(ttfa), 2),
        "trials": trials,
        "first_chunk_frames": engine.config.first_chunk_frames,
    }
    print("ttfa", out, flush=True)
    return out


class CollectionLog:
    """CPython's garbage collections as they happen (`gc.callbacks`): generation and milliseconds.
    Every thread waits out a collection, the engine's loop included, so a section that met a full
    one (generation 2) says so in its results instead of passing it off as the engine's time."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float]] = []
        self._started = 0.0
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.rows.append((info["generation"], (time.perf_counter() - self._started) * 1000))

    @contextlib.contextmanager
    def section(self, out: dict[str, Any]) -> Any:
        """Add to `out` the collections made while the block runs: how many were full, their longest."""
        first = len(self.rows)
        yield
        rows = self.rows[first:]
        out["gc"] = {
            "collections": len(rows),
            "full": sum(1 for gen, _ in rows if gen == 2),
            "ms_max": round(max((ms for _, ms in rows), default=0.0), 2),
        }


COLLECTIONS = CollectionLog()


def bench_burst(engine: Engine, arrivals: int, frames: int) -> dict[str, Any]:
    """`arrivals` requests submitted at once to an idle engine: their times to first audio."""

    async def all_at_once() -> list[dict[str, Any]]:
        reqs = [request(PROMPT_20_WORDS, frames, seed=5000 + i) for i in range(arrivals)]
        return await asyncio.gather(*(time_stream(engine, r, stop_after_first=True) for r in reqs))

    collections: dict[str, Any] = {}
    with COLLECTIONS.section(collections):
        ttfa = [r["arrivals"][0] * 1000 for r in asyncio.run(all_at_once())]
    wait_idle(engine)
    out = {
        "arrivals": arrivals,
        "ttfa_ms_p50": round(statistics.median(ttfa), 2),
        "ttfa_ms_p99": round(float(np.percentile(ttfa, 99)), 2),
        "ttfa_ms_max": round(max(ttfa), 2),
        **collections,
    }
    print("burst", out, flush=True)
    return out


def bench_neighbour(engine: Engine, frames: int) -> dict[str, Any]:
    """One caller floods the engine (a stream for every slot and as many again queued), then another
    caller asks for one stream: its time to first audio as a caller of its own (the scheduler shares
    slots among callers) and, in a second arm, as one more request of the flooding caller (first come,
    first served behind its queue). Each arm from an idle engine."""
    slots = engine.loop.runner.n_slots
    queued = min(slots, engine.loop.scheduler.max_waiting)

    async def arm(light_caller: str) -> tuple[float, list[float]]:
        heavy = [
            dataclasses.replace(request(PROMPT_20_WORDS, frames, seed=6000 + i), caller="flooding")
            for i in range(slots + queued)
        ]
        tasks = [asyncio.ensure_future(time_stream(engine, r)) for r in heavy]
        while sum(engine.loop.scheduler.counts()[k] for k in ("running", "waiting")) < len(heavy):
            await asyncio.sleep(0.001)
        light = dataclasses.replace(request(PROMPT_20_WORDS, frames, seed=6999), caller=light_caller)
        first = (await time_stream(engine, light, stop_after_first=True))["arrivals"][0] * 1000
        flooded = [r["arrivals"][0] * 1000 for r in await asyncio.gather(*tasks)]
        return first, flooded

    out: dict[str, Any] = {"slots": slots, "flooding_requests": slots + queued, "frames": frames}
    for name, caller in (("own_caller", "asking"), ("flooding_callers_queue", "flooding")):
        collections: dict[str, Any] = {}
        with COLLECTIONS.section(collections):
            first, flooded = asyncio.run(arm(caller))
        wait_idle(engine)
        out[name] = {
            "ttfa_ms": round(first, 2),
            "flooding_ttfa_ms_p50": round(statistics.median(flooded), 2),
            "flooding_ttfa_ms_max": round(max(flooded), 2),
            **collections,
        }
    print("neighbour", out, flush=True)
    return out


def bench_bs1(engine: Engine, frames: int) -> dict[str, Any]:
    res = asyncio.run(time_stream(engine, request(PROMPT_20_WORDS, frames, seed=7)))
    wait_idle(engine)
    arrivals, sizes = res["arrivals"], res["frames"]
    if sum(sizes) != frames or len(sizes) < 2:
        # Random weights never end an utterance early: a short stream is a fault, not a timing.
        error = f"the stream ended after {sum(sizes)} of {frames} frames"
        out_short = {"bs1_error": error, "chunk_frames": sizes}
        print("bs1", out_short, flush=True)
        return out_short
    ms = (arrivals[-1] - arrivals[0]) * 1000 / (sum(sizes) - sizes[0])
    gaps = np.diff(arrivals) * 1000
    out = {
        "bs1_ms_per_frame": round(ms, 3),
        "frames": sum(sizes),
        "chunk_frames": sizes,
        "chunk_latency_ms_p50": round(float(np.median(gaps)), 2) if len(gaps) else None,
        "first_chunk_ms": round(arrivals[0] * 1000, 2),
    }
    print("bs1", out, flush=True)
    return out


def bench_throughput(engine: Engine, streams: list[int], frames: int) -> list[dict[str, Any]]:
    out = []
    for n in streams:
        if n > engine.loop.runner.n_slots:
            continue

        async def run_all(n: int = n) -> tuple[float, list[dict[str, Any]]]:
            t0 = time.perf_counter()
            reqs = [request(PROMPT_20_WORDS, frames, seed=1000 + i) for i in range(n)]
            res = await asyncio.gather(*(time_stream(engine, r) for r in reqs))
            return time.perf_counter() - t0, res

        before = dict(engine.loop.timings)
        wall, res = asyncio.run(run_all())
        wait_idle(engine)
        spent = {k: engine.loop.timings[k] - before[k] for k in before}
        iters = max(1.0, spent.pop("iterations"))
        audio_s = sum(sum(r["frames"]) for r in res) * FRAME_S
        # A stream whose first frame was end-of-audio (random weights, rarely) has no real-time factor.
        per_stream_rtf = [r["arrivals"][-1] / (sum(r["frames"]) * FRAME_S) for r in res if sum(r["frames"])]
        out.append(
            {
                "streams": n,
                "frames_per_stream": frames,
                "short_streams": sum(sum(r["frames"]) < frames for r in res),  # ended early: see their count
                "wall_s": round(wall, 3),
                "audio_s_per_s": round(audio_s / wall, 1),
                "slowest_stream_rtf": round(max(per_stream_rtf), 4),
                "median_stream_rtf": round(statistics.median(per_stream_rtf), 4),
                "ttfa_ms_p50_under_load": round(statistics.median(r["arrivals"][0] for r in res) * 1000, 1),
                "loop_iterations": int(iters),
                "loop_ms_per_iteration": {
                    k.removesuffix("_s"): round(v * 1000 / iters, 3) for k, v in spent.items()
                },
            }
        )
        print("throughput", out[-1], flush=True)
    return out


def bench_churn(
    engine: Engine, clients: int, frames: int, seconds: float, warmup_s: float = 2.0
) -> dict[str, Any]:
    """`clients` closed-loop clients of `frames`-frame requests for `seconds` (plus `warmup_s` before
    the window): what arrives inside the window, per request and per loop iteration."""
    runner, loop = engine.loop.runner, engine.loop
    launches = 0
    decode = runner.decode_audio

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal launches
        launches += 1
        return decode(*args, **kwargs)

    async def client(i: int, begin: float, end: float) -> list[tuple[float, dict[str, Any]]]:
        # Clients join at random times of the warm-up, so their requests are out of phase (as over
        # HTTP) rather than all starting and ending together.
        await asyncio.sleep(random.Random(i).uniform(0, warmup_s))
        done, n = [], 0
        while time.perf_counter() < end:
            start = time.perf_counter()
            res = await time_stream(engine, request(PROMPT_20_WORDS, frames, seed=20_000 + 1000 * i + n))
            done.append((start, res))
            n += 1
        return done

    async def run_all() -> tuple[float, float, list[tuple[float, dict[str, Any]]]]:
        begin = time.perf_counter() + warmup_s
        end = begin + seconds
        per_client = await asyncio.gather(*(client(i, begin, end) for i in range(clients)))
        return begin, end, [r for c in per_client for r in c]

    runner.decode_audio = counted  # type: ignore[method-assign]
    before = dict(loop.timings)
    try:
        begin, end, done = asyncio.run(run_all())
    finally:
        runner.decode_audio = decode  # type: ignore[method-assign]
    wait_idle(engine)
    spent = {k: loop.timings[k] - before[k] for k in before}
    iters = max(1.0, spent.pop("iterations"))
    in_window = sum(
        f for start, r in done for a, f in zip(r["arrivals"], r["frames"]) if begin <= start + a <= end
    )
    started = [r for start, r in done if begin <= start <= end]
    ttfa = [r["arrivals"][0] * 1000 for r in started if r["arrivals"]]
    admitted = [r["admitted_ms"] for r in started if r.get("admitted_ms") is not None]
    rtf = [r["arrivals"][-1] / (sum(r["frames"]) * FRAME_S) for r in started if sum(r["frames"])]
    out = {
        "clients": clients,
        "frames_per_request": frames,
        "window_s": seconds,
        "requests": len(started),
        "audio_s_per_s": round(in_window * FRAME_S / seconds, 1),
        "ttfa_ms_p50": round(statistics.median(ttfa), 1) if ttfa else None,
        "ttfa_ms_p99": round(float(np.percentile(ttfa, 99)), 1) if ttfa else None,
        # its part before the request's first step (Server-Timing's `admit` over HTTP)
        "admitted_ms_p50": round(statistics.median(admitted), 1) if admitted else None,
        "rtf_p50": round(statistics.median(rtf), 3) if rtf else None,
        "rtf_max": round(max(rtf), 3) if rtf else None,
        "loop_iterations": int(iters),
        "audio_launches_per_iteration": round(launches / iters, 2),
        "loop_ms_per_iteration": {k.removesuffix("_s"): round(v * 1000 / iters, 3) for k, v in spent.items()},
    }
    print("churn", out, flush=True)
    return out


LOOP_VARIANTS = {
    # name: (chunks aligned on the frame clock, the step stream above the audio stream)
    "shipped": (True, True),
    "unaligned": (False, True),
    "equal_priority": (True, False),
    "neither": (False, False),
}


def set_loop_variant(engine: Engine, name: str) -> dict[str, Any]:
    """Switch the idle engine's audio path to `LOOP_VARIANTS[name]`; returns the setting."""
    from serve_app.engine import runner as runner_module

    align, above = LOOP_VARIANTS[name]
    wait_idle(engine)
    loop, runner = engine.loop, engine.loop.runner
    sync(runner.device.type)
    loop.chunks = dataclasses.replace(loop.chunks, align=align)
    if runner.step_stream is not None:
        priority = runner_module.STEP_STREAM_PRIORITY if above else 0
        runner.step_stream = torch.cuda.Stream(runner.device, priority=priority)
    return {
        "chunk_align": align,
        "step_stream_priority": runner.step_stream.priority if runner.step_stream else None,
    }


def profile_run(engine: Engine, out_dir: Path, streams: int, frames: int) -> dict[str, Any]:
    """Kernel time table and a gzipped Chrome trace of `streams` concurrent streams."""
    import gzip
    import shutil

    from torch.profiler import ProfilerActivity, profile

    streams = min(streams, engine.loop.runner.n_slots)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        rows = bench_throughput(engine, [streams], frames)
    table = prof.key_averages().table(
        sort_by="self_device_time_total", row_limit=45, max_name_column_width=70
    )
    (out_dir / "profile.txt").write_text(table)
    trace = out_dir / "profile-trace.json"
    prof.export_chrome_trace(str(trace))
    with trace.open("rb") as src, gzip.open(str(trace) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    print(table[:6000], flush=True)
    return {"streams": streams, "frames": frames, "run": rows, "table": "profile.txt"}


def profile_step(engine: Engine, out_dir: Path, batch: int, iters: int = 20) -> dict[str, Any]:
    """Kernel time table of `iters` replays of the decode step at `batch` rows (no loop, no audio):
    where a frame's device time goes, kernel by kernel."""
    from torch.profiler import ProfilerActivity, profile

    runner = engine.loop.runner
    batch = min(batch, runner.n_slots)
    for _ in range(3):
        runner.step(batch, 256)
    sync(runner.device.type)
    cuda = runner.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            runner.step(batch, 256)
        sync(runner.device.type)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
    name = f"profile-step-b{batch}.txt"
    (out_dir / name).write_text(table)
    print(table[:4000], flush=True)
    return {
        "batch": batch,
        "kernels_per_step": round(sum(e.count for e in events) / iters, 1),
        "device_ms_per_step": round(sum(getattr(e, key) for e in events) / iters / 1000, 3),
        "table": name,
    }


# ---- transformers baseline -------------------------------------------------------------------------
def bench_hf(cfg: CsmModelConfig, device: str, frames: int, smoke: bool) -> dict[str, Any]:
    from transformers import CsmConfig, CsmForConditionalGeneration

    hf_cfg = CsmConfig(**to_hf_config_dict(cfg, codec_config=mimi_config(smoke).to_dict()))
    torch.manual_seed(0)
    with torch.device(device):
        model = CsmForConditionalGeneration(hf_cfg)
    model = model.to(torch.bfloat16 if device == "cuda" else torch.float32).eval()
    ids = torch.randint(10, min(120_000, cfg.text_vocab_size), (1, 24), device=device)
    kw = {
        "do_sample": True,
        "temperature": 0.9,
        "top_k": 50,
        "depth_decoder_do_sample": True,
        "depth_decoder_temperature": 0.9,
        "depth_decoder_top_k": 50,
        "output_audio": False,
    }

    def run(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, **kw)
        sync(device)
        seq = out if isinstance(out, torch.Tensor) else out.sequences
        got = seq.shape[1] if seq.ndim == 3 else n
        return (time.perf_counter() - t0) * 1000 / max(1, got)

    res: dict[str, Any] = {"frames": frames}
    run(4)
    res["hf_eager_bs1_ms_per_frame"] = round(run(frames), 2)
    print("hf eager", res, flush=True)
    if smoke:
        res["hf_compiled_bs1_ms_per_frame"] = None
        res["note"] = "compile skipped in --smoke (CPU)"
        return res
    model.generation_config.cache_implementation = "static"
    model.depth_decoder.generation_config.cache_implementation = "static"
    t0 = time.perf_counter()
    run(frames)
    res["hf_compile_first_call_s"] = round(time.perf_counter() - t0, 1)
    res["hf_compiled_bs1_ms_per_frame"] = round(min(run(frames), run(frames)), 2)
    print("hf compiled", res, flush=True)
    return res


# ---- main ------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--smoke", action="store_true", help="CPU, tiny preset, small sizes: the whole script quickly"
    )
    p.add_argument("--max-slots", type=int, default=128)
    p.add_argument("--streams", default="1,8,16,32,64,128")
    p.add_argument("--frames", type=int, default=100, help="frames per stream in the throughput runs")
    p.add_argument("--bs1-frames", type=int, default=50)
    p.add_argument("--ttfa-trials", type=int, default=20)
    p.add_argument("--burst", type=int, default=64, help="arrivals at once for the burst section")
    p.add_argument("--skip", default="", help="comma-separated sections to skip (e.g. hf)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the step and prefill (default: the engine's default, off)",
    )
    p.add_argument(
        "--fused-linear-max-batch",
        type=int,
        default=None,
        help="fused Triton projections up to this batch (default: the engine's default, every batch)",
    )
    p.add_argument(
        "--in-kernel-split-k-rows",
        type=int,
        default=None,
        help="fused projections of up to this many rows sum split-K in-kernel (default: the kernel's)",
    )
    p.add_argument(
        "--sampler-warps",
        type=int,
        default=None,
        help="warps per row of the fused sampler (default: the kernel's)",
    )
    p.add_argument(
        "--sampler-top-k-fast",
        type=int,
        default=None,
        help="rows with top_k up to this take the sampler's bitonic top-k, 0: every row sorts (default: the kernel's)",
    )
    p.add_argument(
        "--pdl",
        choices=("off", "wait", "early"),
        default=None,
        help="programmatic dependent launch of the Triton kernels (default: the kernels')",
    )
    p.add_argument(
        "--tma-min-rows",
        type=int,
        default=None,
        help="fused projections of at least this many rows load through TMA, 0: never (default: the kernel's)",
    )
    p.add_argument(
        "--prefill-fused-rows",
        type=int,
        default=None,
        help="prefills of up to this many prompt rows run the fused projections, 0: none (default: FastStep's)",
    )
    p.add_argument(
        "--chunk-frames", type=int, default=None, help="frames per later audio chunk (default: the engine's)"
    )
    p.add_argument(
        "--prefill-attention",
        choices=PREFILL_ATTENTIONS,
        default=None,
        help="how short prompts' fused prefill attends (default: the engine's)",
    )
    p.add_argument(
        "--prefill-in-step",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="joining prompts ride in the next step's backbone pass (default: the engine's)",
    )
    p.add_argument(
        "--mimi-seanet",
        choices=("stack", "kernel"),
        default=None,
        help="the streaming Mimi decoder's SEANet: StreamingStack or channels-last KernelSeanet (default: as shipped)",
    )
    p.add_argument(
        "--churn", default="", help="comma-separated client counts of the closed-loop churn section"
    )
    p.add_argument("--churn-s", type=float, default=8.0, help="measured window of each churn level")
    p.add_argument("--churn-frames", type=int, default=50, help="frames per churn request (50: 4 s)")
    p.add_argument(
        "--loop-variants",
        default="",
        help=f"comma-separated loop settings to repeat throughput and churn under ({', '.join(LOOP_VARIANTS)})",
    )
    p.add_argument("--profile", action="store_true", help="profile a throughput run (kernel table + trace)")
    p.add_argument(
        "--profile-step",
        default="",
        help="comma-separated batches whose decode step is profiled kernel by kernel",
    )
    p.add_argument(
        "--switch-ab", action="store_true", help="also measure the largest runs at a 5 ms GIL interval"
    )
    p.add_argument("--out", default=None, help="output directory (default: $OUT, else benchmarks/results)")
    return p.parse_args()


def set_kernel_options(args: argparse.Namespace) -> dict[str, Any]:
    """Process-wide kernel settings from the command line (before the engine captures its graphs);
    returns the settings in force, for the results."""
    from serve_app.model import fast_step
    from serve_app.model.kernels import fused_linear, pdl, sampling

    if args.in_kernel_split_k_rows is not None:
        fused_linear.IN_KERNEL_REDUCE_MAX_ROWS = args.in_kernel_split_k_rows
    if args.sampler_warps is not None:
        sampling.NUM_WARPS = args.sampler_warps
    if args.sampler_top_k_fast is not None:
        sampling.TOP_K_FAST = args.sampler_top_k_fast
    if args.pdl is not None:
        pdl.MODE = args.pdl
    if args.tma_min_rows is not None:
        fused_linear.TMA_MIN_ROWS = args.tma_min_rows or None
    if args.prefill_fused_rows is not None:
        fast_step.PREFILL_FUSED_MAX_ROWS = args.prefill_fused_rows
    return {
        "in_kernel_split_k_max_rows": fused_linear.IN_KERNEL_REDUCE_MAX_ROWS,
        "sampler_warps": sampling.NUM_WARPS,
        "pdl": pdl.MODE,
        "tma_min_rows": fused_linear.TMA_MIN_ROWS,
        "sampler_top_k_fast": sampling.TOP_K_FAST,
        "prefill_fused_rows": fast_step.PREFILL_FUSED_MAX_ROWS,
    }


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options given on the command line; the rest keep the engine's defaults."""
    options: dict[str, Any] = {}
    if args.compile is not None and not args.smoke:
        options["compile"] = args.compile
    if args.fused_linear_max_batch is not None:
        options["fused_linear_max_batch"] = args.fused_linear_max_batch
    if args.chunk_frames is not None:
        options["chunk_frames"] = args.chunk_frames
    if args.prefill_attention is not None:
        options["prefill_attention"] = args.prefill_attention
    if args.prefill_in_step is not None:
        options["prefill_in_step"] = args.prefill_in_step
    return options


def main() -> None:
    args = parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.mimi_seanet is not None:
        mimi_stream_seanet.SEANET_KERNEL = args.mimi_seanet == "kernel"
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        torch.set_num_threads(1)
        args.max_slots, args.streams = min(args.max_slots, 4), "1,2,4"
        args.frames, args.bs1_frames, args.ttfa_trials, args.burst = 6, 6, 3, 4
    from serve_app.model.tiny import TINY_CONFIG

    cfg = TINY_CONFIG if args.smoke else CSM_1B
    date = dt.date.today().isoformat()
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    tag = (
        "cpu-engine-smoke"
        if args.smoke
        else re.sub(r"\W+", "-", str(gpu)).strip("-").lower()  # the name gpu_suite.sh merges HTTP into
    )
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{date}-{tag}.json"
    import transformers

    res: dict[str, Any] = {
        "benchmark": "csm-engine",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "PYTHONPATH=. python3 benchmarks/bench_engine.py " + " ".join(sys.argv[1:]),
        "device": gpu or f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "tiny-random shapes" if args.smoke else "CSM-1B shapes, random weights",
        "dtype": "float32" if args.smoke else "bfloat16",
        "notes": "random weights: no early end of audio; silence guard off; word-level tokenizer",
    }

    def save() -> None:
        path.write_text(json.dumps(res, indent=1))

    res["host"] = host_probe.probe()  # the host's speed, to compare runs on other machines
    print("host", res["host"], flush=True)
    t_start = time.perf_counter()
    tokenizer = word_tokenizer([PROMPT_20_WORDS])
    model32 = random_csm(cfg, device)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    prompt = build_prompt(
        tokenizer,
        PROMPT_20_WORDS,
        0,
        [
            Segment(
                text=PROMPT_20_WORDS, speaker=1, codes=np.random.RandomState(0).randint(0, 2048, (100, 32))
            )
        ],
        10,
    )
    if "correctness" not in skip:
        res["correctness"] = {
            "bf16_vs_fp32": correctness_precision(model32, model16, prompt.tokens, prompt.mask)
        }
        print("correctness", res["correctness"], flush=True)
        save()
    del model32
    serve_dtype = torch.float32 if args.smoke else torch.bfloat16
    plain = copy.deepcopy(model16).to(serve_dtype)
    served = copy.deepcopy(model16).to(serve_dtype)
    del model16
    codec = MimiCodec.random(mimi_config(args.smoke), seed=0).to(device)
    loaded = LoadedModel(served, tokenizer, codec, {"model": res["model"], "device": device})
    lower_switch_interval()  # as a model replica does
    kernels = set_kernel_options(args) if device == "cuda" else {}
    t0 = time.perf_counter()
    engine = Engine(
        loaded,
        max_batch_size=args.max_slots,
        silence_seconds=0.0,
        **engine_options(args),
    )
    res["startup_s"] = round(time.perf_counter() - t0, 1)
    res["engine"] = {k: v for k, v in engine.loop.runner.info().items()}
    res["engine"]["chunk_frames"] = [engine.config.first_chunk_frames, engine.config.chunk_frames]
    res["engine"]["chunk_align"] = engine.config.chunk_align
    res["engine"]["mimi_seanet"] = type(engine.loop.runner.decoder.decoder._seanet).__name__
    res["engine"]["kernels"] = kernels
    res["engine"]["dynamo_graphs"] = dict(torch._dynamo.utils.counters["stats"])
    print("engine ready", res["startup_s"], res["engine"], flush=True)
    save()
    try:
        if "correctness" not in skip:
            core = res["correctness"]["bf16_vs_fp32"]["model_core_bf16"]
            tol = max(2e-2, 2 * max(core["hidden_rel_err"], core["codebook0_logits_rel_err"]))
            res["correctness"]["fast_vs_plain"] = correctness_fast_path(
                engine, plain, prompt.tokens, prompt.mask, tol
            )
            print("correctness", res["correctness"]["fast_vs_plain"], flush=True)
            save()
        del plain
        freeze_built_objects()  # as the engine's own process does once its engine is built
        res["engine"]["gc_frozen_objects"] = gc.get_freeze_count()
        if "step" not in skip:
            res["graph_step"] = bench_step(
                engine, list(engine.loop.runner.batch_buckets), 256, 10 if args.smoke else 50
            )
            save()
        if "ttfa" not in skip:
            res.update(bench_ttfa(engine, args.ttfa_trials))
            save()
        if "burst" not in skip:
            bench_burst(engine, min(args.burst, engine.loop.runner.n_slots), 10)  # warm-up, not reported
            res[f"burst{args.burst}"] = bench_burst(engine, min(args.burst, engine.loop.runner.n_slots), 10)
            save()
        if "neighbour" not in skip:
            res["neighbour"] = bench_neighbour(engine, 10 if args.smoke else 25)
            save()
        if "prefill" not in skip:
            res["prefill_ms"] = bench_prefill(
                engine, tokenizer, [100, 200] if args.smoke else [500, 1500], 2 if args.smoke else 5
            )
            save()
        if "bs1" not in skip:
            res.update(bench_bs1(engine, args.bs1_frames))
            save()
        if "throughput" not in skip:
            # Warm-up (not reported): first-use costs of new batch shapes (prefill, cuBLAS plans,
            # pinned host buffers) are paid once per process, not per request.
            bench_throughput(engine, [min(engine.loop.runner.n_slots, int(args.streams.split(",")[-1]))], 4)
            res["throughput"] = bench_throughput(
                engine, [int(s) for s in args.streams.split(",")], args.frames
            )
            save()
        churn = [int(c) for c in args.churn.split(",") if c]
        if churn:
            res["churn"] = [
                bench_churn(engine, c, args.churn_frames, args.churn_s)
                for c in churn
                if c <= engine.loop.runner.n_slots
            ]
            save()
        if args.loop_variants:
            streams = [int(s) for s in args.streams.split(",")]
            res["loop_variants"] = {}
            for name in args.loop_variants.split(","):
                setting = set_loop_variant(engine, name)
                res["loop_variants"][name] = {
                    **setting,
                    "throughput": bench_throughput(engine, streams, args.frames),
                    "churn": [
                        bench_churn(engine, c, args.churn_frames, args.churn_s)
                        for c in churn
                        if c <= engine.loop.runner.n_slots
                    ],
                }
                print("loop variant", name, res["loop_variants"][name], flush=True)
                save()
            set_loop_variant(engine, "shipped")
        if args.switch_ab and "throughput" not in skip:
            # The same runs with CPython's default 5 ms GIL switch interval (replicas lower it).
            previous = sys.getswitchinterval()
            sys.setswitchinterval(0.005)
            big = [int(s) for s in args.streams.split(",")][-2:]
            res["throughput_default_switch_interval"] = bench_throughput(engine, big, args.frames)
            sys.setswitchinterval(previous)
            save()
        if args.profile_step:
            batches = [int(b) for b in args.profile_step.split(",")]
            res["profile_step"] = [profile_step(engine, out_dir, b) for b in batches]
            save()
        if args.profile:
            res["profile"] = profile_run(engine, out_dir, int(args.streams.split(",")[-1]), 30)
            save()
    finally:
        engine.close()
    del engine, served, loaded
    if device == "cuda":
        torch.cuda.empty_cache()
    if "hf" not in skip:
        res.update(bench_hf(cfg, device, args.bs1_frames, args.smoke))
        if res.get("hf_compiled_bs1_ms_per_frame") and res.get("bs1_ms_per_frame"):
            res["speedup_vs_hf_compiled"] = round(
                res["hf_compiled_bs1_ms_per_frame"] / res["bs1_ms_per_frame"], 1
            )
        if res.get("hf_eager_bs1_ms_per_frame") and res.get("bs1_ms_per_frame"):
            res["speedup_vs_hf_eager"] = round(res["hf_eager_bs1_ms_per_frame"] / res["bs1_ms_per_frame"], 1)
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    save()
    if res.get("throughput"):
        from plot_engine import plot

        res["plot"] = plot(path).name
        save()
    print(json.dumps({k: v for k, v in res.items() if k not in ("graph_step", "throughput")}, indent=1))
    print("throughput", json.dumps(res.get("throughput")))
    print("wrote", path)
    failed = [name for name, gate in res.get("correctness", {}).items() if not gate.get("pass")]
    if "bs1_error" in res:
        failed.append(f"bs1 ({res['bs1_error']})")
    if failed:
        print("correctness gates FAILED:", ", ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
