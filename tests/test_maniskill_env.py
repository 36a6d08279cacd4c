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
