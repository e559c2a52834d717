"""What serialising one streamed chunk costs the model replica: Ray's default (cloudpickle) against
plain pickle, which `HandleEngine` asks Ray Serve's transport for (`SERIALIZATION`). The replica
serialises every chunk on its event-loop thread, beside the engine's loop thread. CPU only.

    python benchmarks/bench_chunk_pickle.py      # writes $OUT (or benchmarks/results)/<date>-cpu-chunk-pickle.json
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import numpy as np
from ray import cloudpickle

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from cpu_results import nearest_rank, write_cpu_result

from serve_app.constants import FRAME_SAMPLES, NUM_CODEBOOKS
from serve_app.engine.types import AudioChunk


def us_per_dump(dumps, chunk: AudioChunk, rounds: int = 50, calls: int = 200) -> float:
    """The median over `rounds` of µs per call of `calls` dumps."""
    dumps(chunk)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            dumps(chunk)
        times.append((time.perf_counter() - start) / calls * 1e6)
    return nearest_rank(times, 0.5)


def main() -> None:
    rows = []
    for frames in (1, 8):
        chunk = AudioChunk(
            pcm=np.zeros(frames * FRAME_SAMPLES, np.float32),
            codes=np.zeros((frames, NUM_CODEBOOKS), np.int64),
            frames=frames,
        )
        row = {
            "frames": frames,
            "cloudpickle_us": round(us_per_dump(cloudpickle.dumps, chunk), 2),
            "pickle_us": round(us_per_dump(lambda c: pickle.dumps(c, protocol=5), chunk), 2),
            "same_object_back": pickle.loads(pickle.dumps(chunk, protocol=5)).frames == frames,
        }
        rows.append(row)
        print(row, flush=True)
    write_cpu_result("chunk-pickle", {"rows": rows})


if __name__ == "__main__":
    main()
