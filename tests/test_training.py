"""The shared training pieces on real demos: what validation measures, how a checkpoint rebuilds its model."""

import numpy as np
import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from ddp_gradient_worker import small_policy_and_data
from models.act import act_loss
from models.policy import build_policy
from utils.config import load_config
from utils.evaluation import validate
from utils.cpu_features import cpu_bf16_units
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
