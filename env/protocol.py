"""The environment protocol: what the evaluation (utils/evaluation.py) needs from a simulator or a robot.

A third simulator plugs in by writing one class with these members (env/maniskill_env.py and
env/bigym_env.py are the two examples) and an entry script that builds it; nothing else changes.
Every array is numpy and batched over E = num_envs environments stepped together:

    observation = {"state":  (E, S) float32            the robot's state, the same S numbers, same order, as the
                                                       training episodes' "state"
                   "images": (E, N, C, H, W) uint8     (only with cameras) N cameras in the trained order, at the
                                                       training size, C = 3 (RGB) or 4 (RGB + depth)}
    actions     = (E, A) float32                       raw actions, in the units of the training episodes' "actions"

An episode is exactly max_episode_steps steps; success does not end it (the evaluation reads success at
every step and at the last one).
"""

from typing import Protocol

import numpy as np


class RobotEnv(Protocol):
    num_envs: int  # E
    max_episode_steps: int
    # Optional: when the reward counts a task's stages, {stage name: reward threshold}, in the order they are reached;
    # the evaluation reports each stage's rate (episodes whose highest reward reaches it). env/aloha_env.py has it.
    stages: dict[str, float]

    def reset(self, seed: int) -> dict:
        """Start E new episodes, environment i seeded with seed + i; returns the first observation."""
        ...

    def step(self, actions: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
        """Apply (E, A) actions for one control step; returns (observation, reward (E,) float32,
        success (E,) bool: the task is solved in this state)."""
        ...

    def render(self, count: int | None = None) -> np.ndarray:
        """(count or E, H, W, 3) uint8 video frames of the first environments (any viewpoint and size)."""
        ...

    def close(self) -> None:
        ...
