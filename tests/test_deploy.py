"""The deploy API is the evaluation's own seam: a control loop written against DeployedPolicy acts exactly as
utils/evaluation.py does in the real simulator; both adapters implement the documented environment protocol."""

import inspect

import numpy as np
import pytest
import torch

from env.bigym_env import BiGymEnv
from env.maniskill_env import ManiSkillEnv
from env.protocol import RobotEnv
from models.policy import build_policy
from utils.checkpoint import save_checkpoint
from utils.config import load_config
from utils.deploy import DeployedPolicy
from utils.evaluation import evaluate_controller
from utils.run_setup import prepare_data

STEPS = 12


class RecordingEnv:
    """Passes everything through to a real adapter and keeps the actions it was given."""

    def __init__(self, env):
        self.env, self.actions = env, []
        self.num_envs, self.max_episode_steps = env.num_envs, env.max_episode_steps

    def reset(self, seed):
        return self.env.reset(seed)

    def step(self, actions):
        self.actions.append(np.array(actions))
        return self.env.step(actions)


@pytest.fixture(scope="module")
def checkpoint(pickcube_state_demos, tmp_path_factory):
    """A small PickCube policy with two stacked frames and temporal ensembling, saved as training saves it."""
    from datasets.maniskill_demos import load_maniskill_demos

    cfg = load_config("configs/ACT_maniskill_config.yaml", "configs/ACT_maniskill_state_config.yaml", overrides=[
        "frame_stack=2", "temporal_ensemble=true", "ensemble_k=0.1", "model.d_model=32", "model.dim_feedforward=64",
        "model.chunk_size=5", "val_fraction=0"])
    data = prepare_data(cfg, load_maniskill_demos(pickcube_state_demos, 4, "state", "pd_ee_delta_pos"), "delta")
    policy = build_policy(cfg.model, data.shape_meta, data.stats, cfg.frame_stack)
    path = tmp_path_factory.mktemp("deploy") / "best.pt"
    save_checkpoint(path, {"policy": policy.state_dict(), "ema": None, "config": cfg.to_dict(), "iteration": 0,
                           "shape_meta": {**data.shape_meta, "frozen_batchnorm": None}, "run_name": "deploy-test"})
    return path, policy, cfg


def test_a_loop_written_against_the_api_reproduces_the_evaluations_actions(checkpoint):
    path, policy, cfg = checkpoint
    recorder = RecordingEnv(ManiSkillEnv("PickCube-v1", 1, "state", "pd_ee_delta_pos", [], STEPS))
    evaluate_controller(DeployedPolicy.from_config(policy, cfg), recorder, num_episodes=2, seed=7)
    recorder.env.close()

    # A user's loop: one robot, unbatched observations in, one action out; settings from the checkpoint.
    deployed = DeployedPolicy.from_checkpoint(path, device="cpu")
    env = ManiSkillEnv("PickCube-v1", 1, "state", "pd_ee_delta_pos", [], STEPS)
    actions = []
    for episode_seed in (7, 8):
        observation = env.reset(seed=episode_seed)
        deployed.reset()
        for _ in range(STEPS):
            action = deployed.select_action({"state": observation["state"][0]})  # (S,) -> (A,)
            actions.append(action[None])
            observation, _, _ = env.step(action[None])
    env.close()
    assert len(actions) == len(recorder.actions) == 2 * STEPS
    assert all(np.array_equal(ours, theirs) for ours, theirs in zip(actions, recorder.actions))
    assert not np.array_equal(actions[0], actions[1])  # the policy does act on what it sees


def test_checkpoint_settings_can_be_overridden(checkpoint):
    """Open loop every 3 steps instead of the saved temporal ensembling: steps 0-2 play the first chunk, step 3
    plays the start of a chunk predicted from the two latest observations (frame_stack=2)."""
    path, policy, _ = checkpoint
    deployed = DeployedPolicy.from_checkpoint(path, device="cpu", temporal_ensemble=False, query_frequency=3)
    states = [torch.full(policy.state_mean.shape, float(step)) for step in range(4)]
    deployed.reset()
    actions = [deployed.select_action({"state": state.numpy()}) for state in states]
    first = policy.predict_chunk(torch.stack([states[0], states[0]])[None])[0]  # (K, A): start frame repeated
    second = policy.predict_chunk(torch.stack([states[2], states[3]])[None])[0]
    assert all(np.array_equal(actions[step], first[step].numpy()) for step in range(3))
    assert np.array_equal(actions[3], second[0].numpy())


@pytest.mark.parametrize("adapter", [ManiSkillEnv, BiGymEnv])
def test_both_adapters_implement_the_environment_protocol(adapter):
    assert RobotEnv in adapter.__mro__  # declared, not only alike
    for method in ("reset", "step", "render", "close"):
        expected = list(inspect.signature(getattr(RobotEnv, method)).parameters)
        assert list(inspect.signature(getattr(adapter, method)).parameters) == expected, method
