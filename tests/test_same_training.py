"""The config redesign (issue 35) changed how a run is configured and set up, not what it computes: a tiny run of
the state config gives, iteration for iteration, the losses and weights the code gave before it.

REFERENCE was measured at commit 18d30e4 (before the redesign) by the same run written against that commit's API:
load_config(maniskill default, state config, OVERRIDES), start_run, prepare_data(cfg, episodes(), "delta"),
build_policy(cfg, shape_meta, stats), train(cfg, run, policy, data, make_env=None), one CPU thread; the weights'
digest is sha256 over the names and bytes of last.pt's policy state dict, in order.
"""

import hashlib
import json

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
REFERENCE_LOSSES = [101.77452087402344, 89.46501922607422, 77.00448608398438, 63.85542297363281,
                    56.8120002746582, 52.19022750854492]
REFERENCE_VAL_L1 = 0.7671664118766784
REFERENCE_WEIGHTS_SHA256 = "9d846d85632f50f3e8d1dc7c4cb6462b7a99a27ab2ab7678878ad64c4bea0434"


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


def test_state_config_trains_exactly_as_before_the_redesign(tmp_path, one_thread):
    cfg = load_config("configs/ACT_maniskill_config.yaml", "configs/ACT_maniskill_state_config.yaml",
                      OVERRIDES + [f"ckpt_dir={tmp_path}", f"video_dir={tmp_path / 'videos'}"])
    run = start_run(cfg, None)
    data = prepare_data(cfg, episodes(), "delta")
    policy = build_policy(cfg.model, data.shape_meta, data.stats, cfg.frame_stack)
    metrics = train(cfg, run, policy, data)

    rows = [json.loads(line) for line in (run.ckpt_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["train/loss"] for row in rows if "train/loss" in row] == REFERENCE_LOSSES
    assert metrics["val/l1"] == REFERENCE_VAL_L1
    digest = hashlib.sha256()
    for name, tensor in torch.load(run.ckpt_dir / "last.pt", weights_only=True)["policy"].items():
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    assert digest.hexdigest() == REFERENCE_WEIGHTS_SHA256
