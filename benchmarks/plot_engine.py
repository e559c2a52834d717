"""Plot an engine benchmark's throughput runs: audio seconds per second and per-stream real-time factor
against the number of concurrent streams.

    python3 benchmarks/plot_engine.py benchmarks/results/<date>-<gpu>.json   # writes <same name>.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(json_path: str | Path, png_path: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path = Path(json_path)
    res = json.loads(json_path.read_text())
    rows = res["throughput"]
    streams = [r["streams"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(streams, [r["audio_s_per_s"] for r in rows], "o-", label="engine")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent streams")
    left.set_ylabel("audio seconds generated per second")
    left.set_title("Throughput")
    left.grid(True, which="both", alpha=0.3)
    right.plot(streams, [r["slowest_stream_rtf"] for r in rows], "o-", label="slowest stream")
    right.plot(streams, [r["median_stream_rtf"] for r in rows], "s--", label="median stream")
    right.axhline(1.0, color="red", lw=1, label="real time")
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrent streams")
    right.set_ylabel("real-time factor (wall / audio)")
    right.set_title("Per-stream speed (< 1: faster than real time)")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    fig.suptitle(
        f"{res.get('model', '')} on {res.get('device', '')} ({res.get('date', '')[:10]})", fontsize=10
    )
    fig.tight_layout()
    out = Path(png_path) if png_path else json_path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(plot(*sys.argv[1:3]))
