"""The ManiSkill adapter against the real simulator."""

import json

import numpy as np

from datasets.maniskill_demos import load_maniskill_demos
from env.maniskill_env import ManiSkillEnv


def test_replayed_demo_succeeds_at_its_last_step(pickcube_state_demos):
    """Open-loop replay of a demo from its seed must end in success, also on the time-limit step, where the
    vector env auto-resets and the finished episode's info has to be read from final_info."""
    meta = json.loads(pickcube_state_demos.with_suffix(".json").read_text())["episodes"][0]
    actions = load_maniskill_demos(pickcube_state_demos, 1, "state", "pd_ee_delta_pos")[0]["actions"]
    env = ManiSkillEnv("PickCube-v1", 1, "state", "pd_ee_delta_pos", [], max_episode_steps=len(actions))
    obs = env.reset(seed=meta["episode_seed"])
    assert obs["state"].shape == (1, 42)
    successes = []
    for action in actions:
        obs, reward, success = env.step(action[None])
        successes.append(success[0])
    env.close()
    assert successes[-1], f"success flags at the last steps: {successes[-5:]}"
    assert not successes[0] and np.isfinite(reward).all()


def test_video_frames_come_from_the_first_environments_only():
    """render(count) on a CPU vector env renders the first `count` environments: the same frames those
    environments give when all of them render, and none of the others (each costs seconds on a CPU)."""
    env = ManiSkillEnv("PickCube-v1", 3, "state", "pd_ee_delta_pos", [], max_episode_steps=5)
    env.reset(seed=10)
    every = env.render()
    first = env.render(1)
    skipped = [frame is None for frame in env.env.call("render_if_first", 1)]  # what each worker did
    env.close()
    assert every.shape[0] == 3 and first.shape == (1, *every.shape[1:]) and first.dtype == np.uint8
    np.testing.assert_array_equal(first[0], every[0])
    assert not np.array_equal(every[0], every[1])  # different seeds place the cube elsewhere
    assert skipped == [False, True, True]
