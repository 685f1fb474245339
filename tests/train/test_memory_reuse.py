"""Training keeps the memory its steps free for the next steps (glibc), instead of faulting in fresh pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cnnkit.runtime import _glibc, reuse_freed_memory

pytestmark = pytest.mark.skipif(_glibc() is None, reason="malloc tuning is for glibc only")

# ResNet-9's training steps at batch 128, in a fresh process (no earlier allocation shapes the heap): the page
# faults of the steps after the first two, once the memory the first ones used could be reused
STEPS = r"""
import json, resource, torch
from cnnkit.models import create
from cnnkit.runtime import reuse_freed_memory

torch.manual_seed(0)
model = create("resnet9", 10, 1, width=16, pool_first=True).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))
with reuse_freed_memory() as took:
    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"took": took, "later_steps": sum(faults[2:])}))
"""


def _later_step_faults(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_training_steps_reuse_freed_memory_instead_of_faulting_in_fresh_pages():
    kept = _later_step_faults()
    system = _later_step_faults(CNNKIT_MALLOC="system")  # the user's opt-out: malloc left alone
    assert kept["took"] and not system["took"]
    # glibc's defaults give freed activations back and fault them in again (tens of thousands of pages over
    # six steps here); kept, the steps reuse them
    assert system["later_steps"] > 10_000, system
    assert kept["later_steps"] < system["later_steps"] / 5, (kept, system)


def test_nested_uses_restore_the_defaults_only_when_the_outermost_ends(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr("cnnkit.runtime._glibc", lambda: FakeLibc())
    monkeypatch.delenv("CNNKIT_MALLOC", raising=False)
    with reuse_freed_memory() as outer:
        with reuse_freed_memory() as inner:
            assert outer and inner
        assert calls == [(-3, 32 * 2**20), (-1, 2**31 - 1)]  # the inner exit restored nothing
    assert calls[2:] == [(-3, 128 * 1024), (-1, 128 * 1024), ("trim", 0)]


def test_fit_records_that_it_kept_freed_memory(trained_run):
    import yaml

    chosen = yaml.safe_load((trained_run.run_dir / "config.yaml").read_text())["chosen"]
    assert chosen["memory"].startswith("freed memory kept")
