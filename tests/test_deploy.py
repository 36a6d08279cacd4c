"""The deploy API is the evaluation's own seam: a control loop written against DeployedPolicy acts exactly as
utils/evaluation.py does in the real simulator; both adapters implement the documented environment protocol."""

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from env.bigym_env import BiGymEnv
from env.maniskill_env import ManiSkillEnv
from env.protocol import RobotEnv
from models.policy import build_policy
from utils.checkpoint import save_checkpoint
from utils.config import load_config
from env.images import resize_frames
from utils.config import REPO_ROOT
from utils.deploy import DeployedPolicy, ObservationError
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


CAMERAS = ["cam_high", "cam_wrist"]


@pytest.fixture(scope="module")
def camera_checkpoint(tmp_path_factory):
    """A dataset run's camera policy (two named cameras, trained at 32x48, 5-number state), saved as training does."""
    cfg = load_config("configs/ACT_dataset_config.yaml", overrides=[
        "data.path=unused", "data.image_size=[32,48]", "model.d_model=32", "model.dim_feedforward=64",
        "model.chunk_size=4", "model.pretrained_backbone=false"])
    meta = {"state_dim": 5, "action_dim": 3, "num_cameras": 2, "image_channels": 3, "cameras": CAMERAS,
            "image_size": [32, 48]}
    stats = {"state_mean": np.zeros(5), "state_std": np.ones(5), "action_mean": np.zeros(3), "action_std": np.ones(3)}
    policy = build_policy(cfg.model, meta, stats)
    path = tmp_path_factory.mktemp("deploy_cameras") / "best.pt"
    save_checkpoint(path, {"policy": policy.state_dict(), "ema": None, "config": cfg.to_dict(), "iteration": 0,
                           "shape_meta": {**meta, "frozen_batchnorm": None}, "run_name": "deploy-cameras"})
    return path


def camera_observation(batch: int | None = None) -> dict:
    """Full-size camera frames (64x96, twice the training size) by name, and a state; batch: a leading E axis."""
    rng = np.random.default_rng(0)
    lead = () if batch is None else (batch,)
    return {"state": rng.normal(size=(*lead, 5)),
            "images": {name: rng.integers(0, 256, (*lead, 64, 96, 3), dtype=np.uint8) for name in CAMERAS}}


def changed(observation: dict, key: str, value) -> dict:
    """A copy of the observation with observation[key] (or images[camera] for key 'images/<camera>') replaced;
    value None removes it."""
    observation = {**observation, "images": dict(observation["images"])}
    target, name = (observation["images"], key.split("/")[1]) if key.startswith("images/") else (observation, key)
    if value is None:
        del target[name]
    else:
        target[name] = value(target[name]) if callable(value) else value
    return observation


BAD_OBSERVATIONS = {
    "0..1 floats": ("images/cam_high", lambda frame: frame / 255.0, "float64 with values 0..1; expected uint8 RGB 0..255 (0..1 floats: send (frame * 255)"),
    "channels first": ("images/cam_wrist", lambda frame: frame.transpose(2, 0, 1), "shape (3, 64, 96) (channels first? expected channels last)"),
    "a camera missing": ("images/cam_wrist", None, "lacks camera(s) ['cam_wrist']: it has ['cam_high'], the policy was trained on ['cam_high', 'cam_wrist']"),
    "no images": ("images", None, "trained with 2 camera(s) ['cam_high', 'cam_wrist']: the observation needs 'images'"),
    "another robot's state": ("state", lambda state: state[:4], "shape (4,); the policy was trained on 5 numbers per step"),
    "a NaN in the state": ("state", lambda state: np.where(np.arange(5) == 2, np.nan, state), "NaN or inf at [2]"),
    "text as state": ("state", np.array(["a"] * 5), "dtype <U1; expected numbers"),
    "frames of the wrong size, no names": ("images", np.zeros((2, 3, 16, 16), np.uint8), "shape (2, 3, 16, 16); expected (2, 3, 32, 48)"),
    "frames as int64": ("images/cam_high", lambda frame: frame.astype(np.int64), "dtype int64; expected uint8"),
}


@pytest.mark.parametrize("case", BAD_OBSERVATIONS)
def test_deployed_policy_says_in_one_line_what_differs_from_training(camera_checkpoint, case):
    """Each mistake a control loop can make is named, and a refused call leaves nothing behind: the next good
    observation gets the action a fresh episode would."""
    deployed = DeployedPolicy.from_checkpoint(camera_checkpoint, device="cpu")
    good = camera_observation()
    deployed.reset()
    expected_action = deployed.select_action(good)
    key, value, message = BAD_OBSERVATIONS[case]
    deployed.reset()
    with pytest.raises(ObservationError) as error:
        deployed.select_action(changed(good, key, value))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert np.array_equal(deployed.select_action(good), expected_action)


def test_named_frames_are_resized_to_the_size_trained_on_and_batches_are_checked(camera_checkpoint):
    deployed = DeployedPolicy.from_checkpoint(camera_checkpoint, device="cpu")
    observation = camera_observation(batch=2)
    deployed.reset()
    named = deployed.select_action(observation)
    arrays = np.stack([resize_frames(observation["images"][name], (32, 48)) for name in CAMERAS], 1)  # (E, N, h, w, 3)
    deployed.reset()
    as_arrays = deployed.select_action({"state": observation["state"], "images": arrays.transpose(0, 1, 4, 2, 3)})
    assert named.shape == (2, 3) and np.array_equal(named, as_arrays)
    assert not np.array_equal(named[0], named[1])  # the two robots' observations differ, so do their actions
    with pytest.raises(ObservationError, match="with E = the state's 2"):
        deployed.select_action(changed(observation, "images/cam_wrist", lambda frames: frames[:1]))


def test_robot_code_imports_the_deploy_api_without_losing_its_own_packages(camera_checkpoint, tmp_path):
    """A robot's code base with its own `utils` and `datasets` packages loads a policy through deploy/act_deploy.py
    and still imports its own packages, before and after."""
    for package in ("utils", "datasets"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"OWNER = 'robot {package}'\n")
    script = f"""
import numpy as np
import utils
from act_deploy import DeployedPolicy, ObservationError
import datasets, utils as utils_again
assert utils.OWNER == utils_again.OWNER == "robot utils" and datasets.OWNER == "robot datasets"
policy = DeployedPolicy.from_checkpoint({str(camera_checkpoint)!r}, device="cpu")
frames = {{name: np.zeros((64, 96, 3), np.uint8) for name in {CAMERAS!r}}}
print(policy.select_action({{"state": np.zeros(5), "images": frames}}).shape)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO_ROOT / 'deploy'}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "(3,)"
