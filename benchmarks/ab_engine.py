"""A/B of the engine on one machine, runs alternating: between code trees, or between settings.

Two machines of the same kind can differ by a fifth in host speed (the loop's host time, the
transformers port's compiled frame), so a change is measured against the code before it in the same
call: each arm's `bench_engine.py` runs in a fresh process, in turns (A, B, A, B, ...), and the
summary lists every run's figures side by side. An arm is a code tree (`run`) or a set of
`bench_engine.py` arguments on this tree (`flags`, for a switch such as `--mimi-seanet`). The summary
is rewritten after every run, so a call cut short keeps the runs that finished.

    # here, with git: one tree per revision (untracked, ignored by .gitignore's `.ab/`; pass it in `carry`)
    python benchmarks/ab_engine.py export main seanet-channels-last
    # on the GPU machine: the trees in turns, then the summary
    python benchmarks/ab_engine.py run --repeats 2 -- --max-slots 256 --streams 64,128,256 \\
        --churn 128,256 --skip correctness,ttfa,burst,prefill,bs1,hf
    # or two settings of this tree
    python benchmarks/ab_engine.py flags --arm stack="--mimi-seanet stack" --arm kernel="--mimi-seanet kernel" \\
        --repeats 2 -- --max-slots 256 --streams 128,256 --churn 128,256 --skip correctness,ttfa,burst,prefill,bs1,hf,step

Writes `<date>-<gpu>-ab.json` (and each run's own results under `ab/`) to $OUT, else benchmarks/results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TREES = ROOT / ".ab"
"""Where `export` writes one tree per revision and `run` finds them."""

TREE_PATHS = ("serve_app", "benchmarks", "pyproject.toml")
"""What a tree needs to run `bench_engine.py` (its helpers and the package it measures)."""


@dataclass(frozen=True)
class Arm:
    """One side of the A/B: the tree `bench_engine.py` runs from, and arguments of its own."""

    name: str
    tree: Path
    args: tuple[str, ...] = ()


def tree_arms(trees: list[Path]) -> list[Arm]:
    return [Arm(tree.name, tree) for tree in trees]


def flag_arms(specs: list[str]) -> list[Arm]:
    """`name=ARGS` specs (ARGS as a shell would split them) as arms on this tree."""
    arms = []
    for spec in specs:
        name, sep, args = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"an arm is NAME=ARGS, got {spec!r}")
        arms.append(Arm(name, ROOT, tuple(shlex.split(args))))
    if len({arm.name for arm in arms}) != len(arms):
        raise ValueError("arm names must differ")
    return arms


def export(revisions: list[str]) -> list[Path]:
    """`git archive` each revision's `TREE_PATHS` (minus the results) into `.ab/<n>-<revision>`."""
    shutil.rmtree(TREES, ignore_errors=True)
    out = []
    for n, rev in enumerate(revisions):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()
        tree = TREES / f"{n}-{re.sub(r'[^A-Za-z0-9_.-]', '_', rev)}"
        tree.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", commit, "--", *TREE_PATHS], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "x", "--exclude=benchmarks/results"], cwd=tree, input=archive, check=True)
        (tree / "REVISION").write_text(f"{rev} {commit}\n")
        out.append(tree)
        print("exported", rev, commit, "→", tree.relative_to(ROOT), flush=True)
    return out


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The comparable figures of one `bench_engine.py` result."""
    out: dict[str, Any] = {}
    for row in result.get("graph_step") or []:
        out[f"graph_step_ms_{row['batch']}"] = row["ms_per_step"]
    for row in result.get("throughput") or []:
        out[f"throughput_{row['streams']}"] = row["audio_s_per_s"]
        loop = row.get("loop_ms_per_iteration") or {}
        out[f"host_ms_{row['streams']}"] = loop.get("host")
    for row in result.get("churn") or []:
        out[f"churn_{row['clients']}"] = row["audio_s_per_s"]
    for key in ("bs1_ms_per_frame", "ttfa_ms_p50", "startup_s"):
        if key in result:
            out[key] = result[key]
    if "burst64" in result:
        out["burst64_p50"], out["burst64_p99"] = (
            result["burst64"]["ttfa_ms_p50"],
            result["burst64"]["ttfa_ms_p99"],
        )
    return out


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """measure → arm → its values in run order (an arm missing a measure gets None there)."""
    arms = list(dict.fromkeys(run["arm"] for run in runs))
    measures = list(dict.fromkeys(key for run in runs for key in run["figures"]))
    return {
        measure: {arm: [r["figures"].get(measure) for r in runs if r["arm"] == arm] for arm in arms}
        for measure in measures
    }


def run(arms: list[Arm], repeats: int, bench_args: list[str], out_dir: Path, timeout_s: float) -> Path:
    """Each arm's `bench_engine.py bench_args ARM_ARGS` in turns, `repeats` rounds; the summary's
    path (rewritten after every run)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    path = (
        out_dir
        / f"{dt.date.today().isoformat()}-{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}-ab.json"
    )
    runs: list[dict[str, Any]] = []
    for round_ in range(repeats):
        for arm in arms:
            run_dir = out_dir / "ab" / f"{arm.name}-{round_}"
            run_dir.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable,
                "benchmarks/bench_engine.py",
                "--out",
                str(run_dir),
                *bench_args,
                *arm.args,
            ]
            env = {**os.environ, "PYTHONPATH": python_path(arm.tree, os.environ.get("PYTHONPATH"))}
            try:
                proc = subprocess.run(
                    command,
                    check=False,
                    cwd=arm.tree,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                )
                code, log = proc.returncode, proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as exc:  # its output may be bytes even with text=True
                parts = (exc.stdout or "", exc.stderr or "")
                code = "timeout"
                log = "".join(p.decode(errors="replace") if isinstance(p, bytes) else p for p in parts)
            (run_dir / "bench.log").write_text(log)
            results = sorted(run_dir.glob("*.json"))
            result = json.loads(results[0].read_text()) if results else {}
            revision = arm.tree / "REVISION"
            runs.append(
                {
                    "arm": arm.name,
                    "args": list(arm.args),
                    "revision": revision.read_text().strip() if revision.exists() else None,
                    "round": round_,
                    "exit": code,
                    "date": result.get("date"),
                    "figures": figures(result),
                }
            )
            print("run", json.dumps(runs[-1]), flush=True)
            write_summary(path, gpu, runs)
    print("wrote", path, flush=True)
    return path


def python_path(tree: Path, inherited: str | None) -> str:
    """The arm's tree first (its `serve_app` is the one imported), then the caller's path: packages
    installed to a folder of their own (`pip install --target`) stay importable in the run."""
    return os.pathsep.join([str(tree), *filter(None, (inherited or "").split(os.pathsep))])


def write_summary(path: Path, gpu: str, runs: list[dict[str, Any]]) -> None:
    path.write_text(
        json.dumps(
            {
                "benchmark": "csm-engine A/B",
                "device": gpu,
                "command": "python benchmarks/ab_engine.py " + shlex.join(sys.argv[1:]),
                "note": "each arm's bench_engine.py in a fresh process, arms in turns; values in run order",
                "summary": summary(runs),
                "runs": runs,
            },
            indent=1,
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="one tree per git revision under .ab/")
    ex.add_argument("revisions", nargs="+")
    rn = sub.add_parser("run", help="bench_engine.py from each tree under .ab/, in turns")
    rn.add_argument(
        "--reverse",
        action="store_true",
        help="trees in reverse order (a second call then balances the first)",
    )
    fl = sub.add_parser("flags", help="bench_engine.py from this tree with each arm's arguments, in turns")
    fl.add_argument("--arm", action="append", required=True, help='NAME="ARGS" (repeat: two or more)')
    for parser in (rn, fl):
        parser.add_argument("--repeats", type=int, default=2)
        parser.add_argument("--timeout-s", type=float, default=300, help="per run")
        parser.add_argument(
            "bench_args", nargs=argparse.REMAINDER, help="after --: bench_engine.py's arguments"
        )
    args = p.parse_args()
    if args.command == "export":
        export(args.revisions)
        return
    if args.command == "flags":
        arms = flag_arms(args.arm)
    else:
        trees = (
            sorted((path for path in TREES.iterdir() if path.is_dir()), reverse=args.reverse)
            if TREES.is_dir()
            else []
        )
        if not trees:
            sys.exit("no trees under .ab/: run `ab_engine.py export REV ...` first (and carry .ab)")
        arms = tree_arms(trees)
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    out_dir = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    run(arms, args.repeats, bench_args, out_dir, args.timeout_s)


if __name__ == "__main__":
    main()
