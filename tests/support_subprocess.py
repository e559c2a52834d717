"""A Python subprocess from the project root with Triton's real JIT functions (not the interpreter's
the tests run kernels in): they have names, source hashes and cache keys, and need no GPU for them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(args: list[str], timeout_s: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    """`python args` in the project root with `env` added; its output as text."""
    base = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
