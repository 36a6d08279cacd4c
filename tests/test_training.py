"""The shared training pieces on real demos: what validation measures, how a checkpoint rebuilds its model, what a
short run says and draws."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from ddp_gradient_worker import small_policy_and_data
from models.act import act_loss
from models.policy import build_policy
from utils.config import REPO_ROOT, load_config
from utils.evaluation import validate
from utils.cpu_features import cpu_bf16_units
from utils.logger import draw_curves
from utils.optimization import kl_weight_at, make_autocast


def test_validation_l1_is_the_deployed_policy_not_the_reconstruction(pickcube_state_demos):
    policy, data = small_policy_and_data(pickcube_state_demos)
    metrics = validate(policy, data, batch_size=len(data), device="cpu")  # one batch: comparable by hand

    batch = data[np.arange(len(data))]
    normalise = lambda actions: (actions - policy.action_mean) / policy.action_std  # noqa: E731
    deployed = normalise(policy.predict_chunk(batch["state"]))  # z = 0, as in a rollout
    expected = act_loss(deployed, normalise(batch["actions"]), batch["is_pad"], None, None, 10.0)["l1"]
    assert metrics["val/l1"] == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["val/l1_posterior"] != pytest.approx(metrics["val/l1"], rel=1e-3)  # z from the target differs
    assert metrics["val/kl"] > 0


@pytest.mark.parametrize("frozen", [True, False])
def test_a_checkpoint_rebuilds_the_backbone_it_was_trained_with(frozen):
    """Whether ImageNet weights are available on this machine must not decide the BatchNorm type on resume."""
    cfg = load_config("configs/ACT_maniskill_config.yaml", overrides=["model.d_model=32", "model.pretrained_backbone=true"])
    meta = {"state_dim": 9, "action_dim": 4, "num_cameras": 1, "image_channels": 3}
    stats = {"state_mean": np.zeros(9), "state_std": np.ones(9), "action_mean": np.zeros(4), "action_std": np.ones(4)}
    policy = build_policy(cfg.model, meta, stats, saved_meta={**meta, "frozen_batchnorm": frozen})
    norm_types = {type(module) for module in policy.model.backbone.modules()}
    assert (FrozenBatchNorm2d in norm_types) is frozen and (torch.nn.BatchNorm2d in norm_types) is not frozen


def test_kl_warmup_ramps_the_weight_the_loss_uses(pickcube_state_demos):
    cfg = load_config("configs/ACT_maniskill_config.yaml", overrides=["kl_warmup_iters=100", "model.kl_weight=10"])
    assert [kl_weight_at(cfg, i) for i in (0, 25, 50, 100, 5000)] == [0.0, 2.5, 5.0, 10.0, 10.0]
    off = load_config("configs/ACT_maniskill_config.yaml")  # the default: no warm-up
    assert off.kl_warmup_iters == 0 and kl_weight_at(off, 0) == off.model.kl_weight

    policy, data = small_policy_and_data(pickcube_state_demos)
    policy.eval()  # z = posterior mean: the same KL term in every call
    batch = data[np.arange(16)]
    constant = policy(batch)
    ramped = policy(batch, kl_weight=torch.tensor(kl_weight_at(cfg, 25)))
    assert constant["kl"] > 0
    torch.testing.assert_close(constant["loss"], constant["l1"] + 10.0 * constant["kl"])
    torch.testing.assert_close(ramped["loss"], ramped["l1"] + 2.5 * ramped["kl"])


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
def test_precision_decides_what_the_forward_pass_computes_in(precision):
    """auto: bf16 exactly where the CPU has bf16 matrix units; the losses stay fp32 either way (the KL term included,
    whose inputs come out of a bf16 Linear)."""
    cfg = load_config("configs/ACT_maniskill_config.yaml", "configs/ACT_maniskill_state_config.yaml",
                      [f"precision={precision}", "model.d_model=32", "model.nhead=4", "model.dim_feedforward=64"])
    autocast, said = make_autocast(cfg, torch.device("cpu"))
    bf16 = precision == "bf16" or (precision == "auto" and bool(cpu_bf16_units()))
    meta = {"state_dim": 9, "action_dim": 4, "num_cameras": 0, "image_channels": 3}
    stats = {"state_mean": np.zeros(9), "state_std": np.ones(9), "action_mean": np.zeros(4), "action_std": np.ones(4)}
    policy = build_policy(cfg.model, meta, stats)
    chunk = cfg.model.chunk_size
    batch = {"state": torch.randn(2, 1, 9), "actions": torch.randn(2, chunk, 4),
             "is_pad": torch.zeros(2, chunk, dtype=torch.bool)}
    with autocast:
        hidden = policy.model.action_head(torch.randn(2, cfg.model.d_model))
        losses = policy(batch)
    assert hidden.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert said.startswith("bf16 autocast" if bf16 else "fp32") and f"precision={precision}" in said
    assert all(value.dtype == torch.float32 for value in losses.values())
    if precision == "auto" and bf16:
        assert any(unit in said for unit in cpu_bf16_units())  # the log names why


def test_a_short_run_says_its_warm_up_never_ends_names_its_held_out_episodes_and_draws_one_point_curves(
        pickcube_state_demos, tmp_path):
    """40 iterations under warmup_iters=500, one log and one validation: the warm-up is said at the start, the
    held-out episodes are named in the log and in run_info.json, and every series' single point shows in the
    curves (a line through one point draws nothing)."""
    result = subprocess.run([sys.executable, "ACT_for_Maniskill.py", "--config",
                             "configs/ACT_maniskill_state_config.yaml", "wandb.mode=disabled",
                             f"demo_path={pickcube_state_demos}", "num_demos=4", "val_fraction=0.25",
                             f"ckpt_dir={tmp_path}", "batch_size=16", "model.d_model=32", "model.dim_feedforward=64",
                             "model.chunk_size=8", "num_eval_episodes=0", "total_iters=40", "warmup_iters=500",
                             "log_frequency=50", "val_frequency=50", "save_frequency=50"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("[schedule] warning: warmup_iters=500 >= total_iters=40: the learning rate only rises, to 8% of "
            "lr=0.001, and never decays") in result.stdout
    (run_dir,) = tmp_path.iterdir()
    held_out = torch.load(run_dir / "last.pt", weights_only=True)["split"]["val"]
    assert len(held_out) == 1 and f"(held out: episodes {held_out[0]})" in result.stdout
    assert json.loads((run_dir / "run_info.json").read_text())["validation_episodes"] == held_out

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    figure = draw_curves(rows)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)  # (height, width, 3), row 0 at the top
    drawn = [line for axis in figure.axes for line in axis.get_lines()]
    assert len(drawn) == 6  # train/l1, val/l1, val/l1_posterior, train/kl, val/kl, train/lr: one point each
    for line in drawn:
        (x,), (y,) = line.get_data()
        column, row = line.axes.transData.transform((x, y))
        assert pixels[pixels.shape[0] - round(row), round(column)].sum() < 600, f"{line.get_label()} is not drawn"
