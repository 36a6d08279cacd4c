"""benchmarks/success_vs_lerobot.py: the wall-clock training loop, and the LeRobot side (when LeRobot is installed).

The comparison itself trains for minutes and is run by hand (benchmarks/README.md); these check its parts.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
LEROBOT_SITE = REPO_ROOT / "benchmarks" / ".lerobot_site"
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import success_vs_lerobot  # noqa: E402  (benchmarks/ is not a package)
from success_vs_lerobot import train_for  # noqa: E402


@pytest.fixture
def counting_policy(monkeypatch):
    """A one-weight 'policy' whose step adds 1 to the weight and takes exactly 0.25 s of a fake clock."""
    clock = [0.0]
    monkeypatch.setattr(success_vs_lerobot.time, "perf_counter", lambda: clock[0])
    policy = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(policy.weight)

    def step(batch, iteration):
        with torch.no_grad():
            policy.weight += 1
        clock[0] += 0.25

    return policy, step


def test_train_for_keeps_a_copy_of_the_weights_at_every_mark(counting_policy):
    policy, step = counting_policy
    snapshots = train_for(step, policy, iter(range(100)), [1.0, 1.6, 3.0], None, torch.device("cpu"))
    assert [s["minutes"] for s in snapshots] == [1.0 / 60, 1.6 / 60, 3.0 / 60]
    # each mark is taken after the first step that reaches it
    assert [s["iterations"] for s in snapshots] == [4, 7, 12]
    assert [s["trained_s"] for s in snapshots] == [1.0, 1.75, 3.0]
    # copies taken at the marks: the weight counts the steps done by then, not the final ones
    assert [s["weights"]["weight"].item() for s in snapshots] == [4, 7, 12]


def test_train_for_stops_at_max_iters_and_gives_later_marks_the_final_weights(counting_policy):
    policy, step = counting_policy
    snapshots = train_for(step, policy, iter(range(100)), [1.0, 5.0, 10.0], 7, torch.device("cpu"))
    assert [s["iterations"] for s in snapshots] == [4, 7, 7]
    assert [s["weights"]["weight"].item() for s in snapshots] == [4, 7, 7]
    assert policy.weight.item() == 7  # no step after max_iters


def test_lerobot_trains_on_our_batches_and_plays_in_our_evaluation():
    if not (LEROBOT_SITE / "lerobot").is_dir():
        pytest.skip("LeRobot is not installed: run benchmarks/install_lerobot.sh (into benchmarks/.lerobot_site)")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "lerobot_act_check.py")], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lerobot checks passed" in result.stdout
