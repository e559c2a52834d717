"""Shared test configuration: environment for Ray, offline model loading and Triton; shared fixtures,
among them the one Ray Serve instance of the session (`ray_serve`, tests/support_ray.py), registered
here so that every Ray test module shares it (a fixture imported into two modules would be two
fixtures, and two Ray starts).

Test support modules are imported as `tests.support_*` (the repository root is on `pythonpath`).

Without a CUDA device, Triton kernels run in Triton's CPU interpreter: `TRITON_INTERPRET` must be set
before anything imports Triton (any test module may import the kernels), so it is set here."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread (the machine's cores are shared; tiny ops only lose time to thread
    hand-offs), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """`single_thread` for a whole module: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    with single_thread():
        yield


@pytest.fixture
def engine() -> Any:
    """The API tests' scripted engine (`FakeEngine`); modules that need another engine define their own."""
    from tests.support_api import FakeEngine

    return FakeEngine()


@pytest.fixture
def client(tmp_path: Path, engine: Any) -> Any:
    """A TestClient over `create_app` and `engine`, with voices under `tmp_path`."""
    from tests.support_api import make_client

    return make_client(tmp_path, engine)


from tests.support_ray import ray_serve  # noqa: F401 - after the environment above
