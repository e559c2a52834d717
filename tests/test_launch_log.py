"""The engine loop's record of its last device launches (what a slow iteration's log line shows)."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine.launch_log import LaunchLog


def test_keeps_the_last_launches_oldest_first_and_formats_them_when_described() -> None:
    log = LaunchLog(2, timed=False)
    lengths = [3]
    for step in range(3):
        with log.launch(step, "prefill {} prompts of {} rows", 1, lengths):
            pass
    lengths.append(9)  # formatted when described, not when launched
    assert len(log) == 2
    assert log.describe() == "#1 prefill 1 prompts of [3, 9] rows; #2 prefill 1 prompts of [3, 9] rows"


def test_a_launch_that_raises_is_not_recorded() -> None:
    log = LaunchLog(4, timed=False)
    with pytest.raises(RuntimeError), log.launch(0, "step rows={}", 1):
        raise RuntimeError("out of memory")
    assert len(log) == 0 and log.describe() == ""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_each_launch_carries_the_device_time_it_took() -> None:
    log = LaunchLog(4, timed=True)
    a = torch.randn(2048, 2048, device="cuda")
    side = torch.cuda.Stream()
    with log.launch(0, "matmuls x{}", 20):
        for _ in range(20):
            a = a @ a.T / 2048
    with log.launch(1, "on a side stream", stream=side), torch.cuda.stream(side):
        torch.cuda.current_stream().wait_stream(torch.cuda.default_stream())
        b = a + 1
    torch.cuda.synchronize()
    first, second = log.describe().split("; ")
    assert first.startswith("#0 matmuls x20 [device ") and first.endswith(" ms]")
    assert float(first.split("[device ")[1].removesuffix(" ms]")) > 0
    assert second.startswith("#1 on a side stream [device ")
    del b
