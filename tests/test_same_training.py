"""The config redesign (issue 35) changed how a run is configured and set up, not what it computes: a tiny run of
the state config gives, iteration for iteration, the losses and weights the code gave before it.

tests/data/same_training_reference.json was measured at commit 18d30e4 (before the redesign) by the same run written
against that commit's API: load_config(maniskill default, state config, OVERRIDES), start_run, prepare_data(cfg,
episodes(), "delta"), build_policy(cfg, shape_meta, stats), train(cfg, run, policy, data, make_env=None), one CPU
thread; weight_norms are the L2 norms of last.pt's policy tensors. On one machine the two commits agree bit for bit;
across CPUs they do not (AVX2 and AVX-512 matrix kernels round differently: 1e-7 relative in the second loss, 3e-6
absolute in the norm of a small bias whose norm is 0.03), hence the tolerances, each far below what a changed
computation moves (a different seed, batch or step moves the losses and norms by percents).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.policy import build_policy
from utils.config import load_config
from utils.run_setup import prepare_data, start_run
from utils.training import train

OVERRIDES = ["total_iters=6", "batch_size=16", "warmup_iters=2", "model.d_model=32", "model.nhead=4",
             "model.dim_feedforward=64", "model.chunk_size=8", "log_frequency=1", "val_frequency=3",
             "save_frequency=6", "num_eval_episodes=0", "val_fraction=0.25", "wandb.mode=disabled",
             "precision=fp32"]  # the reference ran in fp32, before bf16 autocast became the default on bf16 CPUs
REFERENCE = json.loads((Path(__file__).parent / "data" / "same_training_reference.json").read_text())


def episodes() -> list[dict]:
    """Four smooth 40-step episodes (9 state, 4 action numbers), the same on every machine."""
    rng = np.random.default_rng(0)
    result = []
    for _ in range(4):
        t = np.arange(40, dtype=np.float32)[:, None]
        phase = rng.uniform(0, 3, size=(1, 9)).astype(np.float32)
        result.append({"state": np.sin(0.1 * t + phase).astype(np.float32),
                       "actions": np.cos(0.1 * t + phase[:, :4]).astype(np.float32)})
    return result


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_state_config_trains_as_before_the_redesign(tmp_path, one_thread):
    cfg = load_config("configs/ACT_maniskill_config.yaml", "configs/ACT_maniskill_state_config.yaml",
                      OVERRIDES + [f"ckpt_dir={tmp_path}", f"video_dir={tmp_path / 'videos'}"])
    run = start_run(cfg, None)
    data = prepare_data(cfg, episodes(), "delta")
    policy = build_policy(cfg.model, data.shape_meta, data.stats, cfg.frame_stack)
    metrics = train(cfg, run, policy, data)

    rows = [json.loads(line) for line in (run.ckpt_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    np.testing.assert_allclose(losses, REFERENCE["train_losses"], rtol=1e-5)
    np.testing.assert_allclose(metrics["val/l1"], REFERENCE["val_l1"], rtol=1e-5)
    state = torch.load(run.ckpt_dir / "last.pt", weights_only=True)["policy"]
    norms = {name: float(tensor.double().norm()) for name, tensor in state.items() if tensor.is_floating_point()}
    assert list(norms) == list(REFERENCE["weight_norms"])
    np.testing.assert_allclose(list(norms.values()), list(REFERENCE["weight_norms"].values()),
                               rtol=1e-4, atol=1e-5)
