"""Shared test configuration: environment for Ray and offline model loading, and the one Ray Serve
instance of the session (`ray_serve`, tests/support_ray.py), registered here so that every Ray test
module shares it (a fixture imported into two modules would be two fixtures, and two Ray starts)."""
import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Without CUDA the Triton kernels' tests run under Triton's CPU interpreter, which must be chosen
# before Triton is first imported (its standard library is decorated then), and collecting other
# modules may import it first.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.support_ray import ray_serve  # noqa: F401 - after the environment above
