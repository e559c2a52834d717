"""Each kernel's Triton disk-cache key is the same whichever kernel a process compiles first
(`serve_app.model.kernels.keys`). Run where Triton's own order is fixed, the test puts back the
order of Triton 3.6 (the GPU image's: a callee's globals merged before its key is computed), checks
that it alone makes the keys depend on the order, and that settled modules' keys do not."""

from __future__ import annotations

import json

from tests.support_subprocess import python

KEYS_IN_ORDER = """
import json, sys
import triton.runtime.jit as jit

def merge_then_key(self, func):  # Triton 3.6's DependenciesFinder._update_hash, less its value check
    self.used_global_vals.update(func.used_global_vals)
    self.hasher.update((func.cache_key + str(getattr(func, "noinline", False))).encode("utf-8"))

jit.DependenciesFinder._update_hash = merge_then_key
order, settled = sys.argv[1], sys.argv[2] == "settled"
if not settled:
    from serve_app.model.kernels import keys
    keys.settle = lambda namespace: None
from serve_app.model.kernels import depth_loop, sampling

kernels = {"sampler": sampling._sample_kernel, "depth_loop": depth_loop._depth_loop_kernel}
for name in order.split(","):
    kernels[name].cache_key
print(json.dumps({name: kernel.cache_key for name, kernel in kernels.items()}))
"""


def _keys(order: str, settled: bool) -> dict[str, str]:
    run = python(["-c", KEYS_IN_ORDER, order, "settled" if settled else "unsettled"], timeout_s=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_kernel_keys_do_not_depend_on_which_kernel_a_process_compiles_first() -> None:
    # Triton 3.6's order alone: the sampler's key depends on whether the depth loop's came first
    # (they share `draw_row` and `race_noise`), so one process misses what another cached.
    assert _keys("sampler,depth_loop", settled=False) != _keys("depth_loop,sampler", settled=False)
    settled = _keys("sampler,depth_loop", settled=True)
    assert settled == _keys("depth_loop,sampler", settled=True)
