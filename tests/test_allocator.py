"""utils.allocator.reuse_freed_memory: training steps reuse freed memory instead of page-faulting it in afresh."""

import subprocess
import sys
from pathlib import Path

import pytest

from utils.config import REPO_ROOT

# Page faults per training step of an MLP whose activations (4096 x 2048 floats, 32 MiB) are each at glibc's
# largest mmap threshold: the median over 7 steps after three warm-up steps.
PROBE = """
import resource, sys, torch
from utils.allocator import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory(), "mallopt failed"
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(256, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 256))
batch = torch.randn(4096, 256)
def step():
    model.zero_grad(set_to_none=True)
    model(batch).square().mean().backward()
for _ in range(3):
    step()
faults = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[3])
"""


def faults_per_step(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True)
    return float(result.stdout.split()[-1])


def fault_size() -> int:
    """Bytes one page fault brings in: 4 KiB, or 2 MiB where transparent huge pages back every mapping."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return 2 * 2**20 if thp.is_file() and "[always]" in thp.read_text() else 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's, i.e. Linux only")
def test_training_steps_reuse_freed_memory():
    default, reused = faults_per_step("default"), faults_per_step("reuse")
    assert default > 4096 * 2048 * 4 / fault_size()  # default malloc: a 32 MiB activation comes back as fresh pages
    assert reused < default / 10
