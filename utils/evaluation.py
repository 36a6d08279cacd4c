"""Roll a policy out in a simulator adapter (env/protocol.py: env/maniskill_env.py, env/bigym_env.py) and score it.

The policy acts through utils/deploy.py's DeployedPolicy, the same object a user's own control loop uses
(evaluate_controller plays any object with DeployedPolicy's reset/select_action, e.g. another codebase's policy).
Episodes run in rounds of `env.num_envs` parallel environments for exactly `env.max_episode_steps`
steps (success does not end an episode), which gives both metrics ManiSkill reports:
success_once (succeeded at any step) and success_at_end (succeeded at the last step).
"""

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from models.policy import ACTPolicy
from utils.deploy import DeployedPolicy


@torch.no_grad()
def evaluate_policy(policy: ACTPolicy, env, num_episodes: int, seed: int, frame_stack: int = 1,
                    temporal_ensemble: bool = True, ensemble_k: float = 0.01, query_frequency: int | None = None,
                    video_dir=None, num_video_episodes: int = 0, video_prefix: str = "", fps: int = 20,
                    rank: int = 0, world_size: int = 1) -> dict:
    """Play num_episodes episodes with the policy deployed as DeployedPolicy (see evaluate_controller).
    Returns {"episodes": [per-episode outcome dicts, the ones this rank played], "videos": [paths]}."""
    deployed = DeployedPolicy(policy, frame_stack, temporal_ensemble, ensemble_k, query_frequency)
    return evaluate_controller(deployed, env, num_episodes, seed, video_dir, num_video_episodes, video_prefix, fps,
                               rank, world_size)


@torch.no_grad()
def evaluate_controller(deployed, env, num_episodes: int, seed: int, video_dir=None, num_video_episodes: int = 0,
                        video_prefix: str = "", fps: int = 20, rank: int = 0, world_size: int = 1) -> dict:
    """Play num_episodes episodes in rounds of env.num_envs; round k resets with seeds seed + k * num_envs + i.

    deployed: what acts, a DeployedPolicy or anything with its two methods: reset() at the start of every round,
    select_action(observation) -> actions (E, A) (benchmarks/success_vs_lerobot.py drives LeRobot's policy so).
    Under torchrun rank r plays rounds r, r + world_size, ...: every episode runs in the same round, with the
    same seeds and batch, as in a single process, so the gathered outcomes are the single-process ones.
    Returns {"episodes": [per-episode outcome dicts, the ones this rank played], "videos": [paths]}.
    """
    episodes, videos = [], []
    num_rounds = -(-num_episodes // env.num_envs)
    for round_index in range(rank, num_rounds, world_size):
        round_seed = seed + round_index * env.num_envs
        obs = env.reset(seed=round_seed)
        deployed.reset()
        num_record = min(env.num_envs, num_video_episodes - len(videos)) if video_dir is not None else 0
        record = num_record > 0
        frames = [env.render(num_record)] if record else []
        ever_success = np.zeros(env.num_envs, dtype=bool)
        first_success_step = np.full(env.num_envs, env.max_episode_steps)
        episode_return = np.zeros(env.num_envs)
        for step in range(env.max_episode_steps):
            obs, reward, success = env.step(deployed.select_action(obs))  # actions (E, A)
            episode_return += reward
            first_success_step[success & ~ever_success] = step + 1
            ever_success |= success
            if record and step < env.max_episode_steps - 1:  # after the last step a vector env shows the next reset
                frames.append(env.render(num_record))
        for env_index in range(env.num_envs):
            episode = round_index * env.num_envs + env_index
            if episode < num_episodes:  # the last round may run spare environments; they are not counted
                episodes.append({"episode": episode, "seed": round_seed + env_index,
                                 "success_once": bool(ever_success[env_index]),
                                 "success_at_end": bool(success[env_index]),
                                 "return": float(episode_return[env_index]),
                                 "first_success_step": int(first_success_step[env_index])})
        if record:
            frames = np.stack(frames, axis=1)  # (num_record, T, H, W, 3)
            for env_index in range(num_record):
                episode = round_index * env.num_envs + env_index
                tag = "success" if ever_success[env_index] else "fail"
                path = Path(video_dir) / f"{video_prefix}ep{episode:03d}_{tag}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                imageio.mimsave(path, list(frames[env_index]), fps=fps, macro_block_size=1)
                videos.append(str(path))
    return {"episodes": episodes, "videos": videos}


def summarize(episodes: list[dict]) -> dict:
    """Per-episode outcomes -> the rates and means that get logged."""
    return {
        "success_once": float(np.mean([e["success_once"] for e in episodes])),
        "success_at_end": float(np.mean([e["success_at_end"] for e in episodes])),
        "return": float(np.mean([e["return"] for e in episodes])),
        # the control step of first success; max_episode_steps for an episode that never succeeds
        "first_success_step": float(np.mean([e["first_success_step"] for e in episodes])),
        "num_episodes": len(episodes),
    }
