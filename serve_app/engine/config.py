"""Engine options: the serving knobs (`EngineConfig`) and the model-loading keywords (`LoadOptions`)
that `Engine.from_preset` takes. Free of torch, so a Serve config's `engine:` options are checked
where the application is built (`validate_engine_options`), not first inside a GPU replica."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError


@dataclass(frozen=True)
class EngineConfig:
    """Serving knobs; every field is also a keyword of `Engine.from_preset`."""

    max_batch_size: int | None = None  # KV slots cap; None: 128 on CUDA (as memory allows), 8 on CPU
    max_waiting: int | None = None  # requests queued beyond the slots; None: 2 x slots
    first_chunk_frames: int = 1  # frames in a stream's first chunk (time to first audio)
    chunk_frames: int = 8  # frames in each later chunk
    chunk_ramp: bool = True  # chunks double from the first up to chunk_frames (no gap after the first)
    # Later chunks end on the loop's frame clock, so concurrent streams' chunks decode in one launch.
    chunk_align: bool = True
    silence_rms: float = 0.003  # runaway guard: a frame this quiet (RMS, full scale 1.0) is silent
    silence_seconds: float = 2.4  # ... and this much trailing silence ends the utterance (0: off)
    cuda_graphs: bool | None = None  # None: on for CUDA
    # torch.compile the step and prefill functions (None: on for CUDA). Off by default: with the
    # fused projections and graphed prefills it gains little, and compiling took a replica's start
    # from under a minute to three (docs/performance.md, *Defaults*).
    compile: bool | None = False
    # Decode batches up to this size run the fused Triton projections (RMSNorm, SwiGLU and residual
    # adds inside the matmuls) instead of cuBLAS; 0: none. Needs the fused attention (CUDA, Triton,
    # heads of >= 32 dims); elsewhere it is ignored. Default: every batch.
    fused_linear_max_batch: int | None = 1 << 16
    # How short prompts' fused prefill attends (`model/fast_step.py` PREFILL_ATTENTIONS): "sdpa", or
    # "kernel" (the decode-attention kernel, each token a row over its slot: two launches a layer).
    prefill_attention: Literal["sdpa", "kernel"] = "sdpa"
    # A joining request's prompt rides in the next decode step's backbone pass (one read of the
    # backbone's weights for both; up to 256 prompt rows an admission) instead of a prefill of its
    # own. Needs the fused kernels (else ignored); it captures a backbone graph per batch and row
    # bucket more at start. On: the closed loop of 4 s requests gained 16 % at 128 clients and 7 %
    # at 256 in an A/B on one H100 (docs/runs.md).
    prefill_in_step: bool = True
    audio_dtype: str | None = None  # streaming Mimi decode; None: bfloat16 on CUDA, float32 on CPU
    memory_fraction: float = 0.8  # of free device memory for KV slots
    max_prefill_rows: int = 8192  # padded prompt rows prefilled together in one iteration
    # One loop iteration (milliseconds on a GPU) running this long fails the health check, so Ray
    # replaces a replica whose device or loop is wedged; 0: never. Raise it for big models on a CPU.
    stuck_iteration_s: float = 30.0
    # On a GPU with no kernel cache, start compiling the shipped kernel list (`model/kernels/ahead.py`)
    # before the engine process's imports and the model's load, so the compiles run behind them;
    # False (default): once the model has loaded, with the host's cores to itself. Early, on one H100
    # machine, the imports took 28.7-32.5 s instead of 13.4 and the start 53.9 s on processes, 57.0 on
    # threads; the start after the load measured 42.3 s on another H100 (docs/runs.md).
    compile_ahead_early: bool = False

    @classmethod
    def split(cls, kwargs: Mapping[str, Any]) -> tuple[EngineConfig, dict[str, Any]]:
        """(engine options, the rest: model-loading options) from one keyword dict."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names}), {
            k: v for k, v in kwargs.items() if k not in names
        }


@dataclass(frozen=True)
class LoadOptions:
    """The `load_model` keywords that may ride along with the engine options."""

    device: str | None = None
    dtype: str | None = None
    revision: str | None = None
    local_dir: str | None = None


def validate_engine_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` for `Engine.from_preset`, checked: each name is an `EngineConfig` field or a
    `LoadOptions` field and each value has its type (strings from `serve run key=value` are
    coerced). Raises ValueError naming the offending option."""
    engine_names = [f.name for f in fields(EngineConfig)]
    load_names = [f.name for f in fields(LoadOptions)]
    for name in options:
        if name not in engine_names and name not in load_names:
            close = difflib.get_close_matches(name, engine_names + load_names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown engine option {name!r}{hint}; known: {', '.join(engine_names + load_names)}"
            )
    checked: dict[str, Any] = {}
    for cls, names in ((EngineConfig, engine_names), (LoadOptions, load_names)):
        values = {k: v for k, v in options.items() if k in names}
        try:
            parsed = TypeAdapter(cls).validate_python(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = ".".join(str(part) for part in error["loc"])
            raise ValueError(f"engine option {name!r}: {error['msg']}") from None
        checked.update({k: getattr(parsed, k) for k in values})
    return checked
