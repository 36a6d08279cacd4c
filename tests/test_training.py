"""The shared training pieces on real demos: what validation measures, how a checkpoint rebuilds its model."""

import numpy as np
import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from ddp_gradient_worker import small_policy_and_data
from models.act import act_loss
from utils.config import load_config
from utils.training import build_policy, validate


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
    policy = build_policy(cfg, meta, stats, checkpoint={"shape_meta": {**meta, "frozen_batchnorm": frozen}})
    norm_types = {type(module) for module in policy.model.backbone.modules()}
    assert (FrozenBatchNorm2d in norm_types) is frozen and (torch.nn.BatchNorm2d in norm_types) is not frozen
