"""How good the policy is: its validation loss on held-out episodes (`validate`), and its success in a simulator
adapter (env/protocol.py: env/maniskill_env.py, env/bigym_env.py), during training (`run_simulator_eval`) or of a
saved checkpoint (`evaluate_checkpoint`, mode=eval).

In the simulator the policy acts through utils/deploy.py's DeployedPolicy, the same object a user's own control loop
uses (evaluate_controller plays any object with DeployedPolicy's reset/select_action, e.g. another codebase's policy).
Episodes run in rounds of `env.num_envs` parallel environments for exactly `env.max_episode_steps`
steps (success does not end an episode), which gives both metrics ManiSkill reports:
success_once (succeeded at any step) and success_at_end (succeeded at the last step). An adapter whose reward
counts a task's stages names them (its `stages`, env/protocol.py); each stage's rate is then the fraction of
episodes whose highest reward reached the stage's threshold (ALOHA: the paper's Table I columns).
"""

import json
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from tqdm import tqdm

from datasets.chunk_dataset import ChunkDataset, iterate_in_order
from env.errors import UserInputError
from models.policy import ACTPolicy
from utils.checkpoint import policy_from_checkpoint, restore_rng_state, rng_state
from utils.deploy import DeployedPolicy
from utils.distributed import Distributed, all_gather, all_sum
from utils.run_setup import Run
from utils.schema import SimulatorRun


# --------------------------------------------------------------------------------------------------
# Validation on held-out episodes
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(policy: ACTPolicy, dataset: ChunkDataset, batch_size: int, device,
             distributed: Distributed = Distributed(), stop_requested=lambda: False) -> dict | None:
    """Loss on every held-out sample, eval mode (no dropout). Two L1 figures:

    val/l1            the deployed policy: z = 0, as in a rollout. The figure to watch; best.pt follows it
                      when the run does not evaluate in the simulator.
    val/l1_posterior  z = the posterior mean, computed from the target chunk itself: how well the CVAE
                      reconstructs, not how well the policy acts. Reported beside val/kl.
    Under torchrun each rank takes a share of the samples and the sums are added up over ranks.
    None when stop_requested() became true between two batches on any rank (a pass over a large held-out set can
    take many minutes; a stop signal should not wait for it).
    """
    policy.eval()
    totals, count, stopped = {"l1": 0.0, "l1_posterior": 0.0, "kl": 0.0}, 0, False
    for batch in iterate_in_order(dataset, batch_size, distributed.rank, distributed.world_size):
        if stop_requested():
            stopped = True
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        posterior = policy(batch)
        size = len(batch["actions"])
        totals["l1"] += policy.deployed_l1(batch).item() * size
        totals["l1_posterior"] += posterior["l1"].item() * size
        totals["kl"] += posterior["kl"].item() * size
        count += size
    *sums, count, stopped_ranks = all_sum([*totals.values(), count, float(stopped)], device)
    if stopped_ranks:
        return None
    return {f"val/{k}": total / count for k, total in zip(totals, sums)}


KL_COLLAPSED = 0.01  # nats, summed over z's dimensions: below this z tells the decoder next to nothing


def posterior_collapse_note(step: int, metrics: dict) -> str:
    return (f"[val @ {step}] posterior collapse: val/kl {metrics['val/kl']:.4f} < {KL_COLLAPSED} nats, so z carries "
            f"(next to) nothing about the chunk and the deployed L1 ({metrics['val/l1']:.4f}, z = 0) equals the "
            f"posterior L1 ({metrics['val/l1_posterior']:.4f}). The CVAE has become a deterministic chunk regressor: "
            f"fine for demos with one way of doing each step, unable to choose between several. To keep z in use: "
            f"kl_warmup_iters=<iterations> or a lower model.kl_weight. (Said once per run.)")


# --------------------------------------------------------------------------------------------------
# Rollouts in a simulator
# --------------------------------------------------------------------------------------------------


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
    my_rounds = range(rank, num_rounds, world_size)
    # A BiGym or ALOHA evaluation runs for tens of minutes: show its steps and the successes so far (rank 0 only).
    bar = tqdm(total=len(my_rounds) * env.max_episode_steps, desc=f"eval {num_episodes} episodes", unit="step",
               disable=rank != 0, mininterval=10)
    for round_index in my_rounds:
        round_seed = seed + round_index * env.num_envs
        obs = env.reset(seed=round_seed)
        deployed.reset()
        num_record = min(env.num_envs, num_video_episodes - len(videos)) if video_dir is not None else 0
        record = num_record > 0
        frames = [env.render(num_record)] if record else []
        ever_success = np.zeros(env.num_envs, dtype=bool)
        first_success_step = np.full(env.num_envs, env.max_episode_steps)
        episode_return = np.zeros(env.num_envs)
        max_reward = np.full(env.num_envs, -np.inf)
        for step in range(env.max_episode_steps):
            obs, reward, success = env.step(deployed.select_action(obs))  # actions (E, A)
            episode_return += reward
            max_reward = np.maximum(max_reward, reward)
            first_success_step[success & ~ever_success] = step + 1
            ever_success |= success
            if record and step < env.max_episode_steps - 1:  # after the last step a vector env shows the next reset
                frames.append(env.render(num_record))
            bar.update()
        for env_index in range(env.num_envs):
            episode = round_index * env.num_envs + env_index
            if episode < num_episodes:  # the last round may run spare environments; they are not counted
                episodes.append({"episode": episode, "seed": round_seed + env_index,
                                 "success_once": bool(ever_success[env_index]),
                                 "success_at_end": bool(success[env_index]),
                                 "return": float(episode_return[env_index]),
                                 "max_reward": float(max_reward[env_index]),
                                 **{f"stage/{name}": bool(max_reward[env_index] >= threshold)
                                    for name, threshold in getattr(env, "stages", {}).items()},
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
        bar.set_postfix(success_once=f"{sum(e['success_once'] for e in episodes)}/{len(episodes)}")
    bar.close()
    return {"episodes": episodes, "videos": videos}


def summarize(episodes: list[dict]) -> dict:
    """Per-episode outcomes -> the rates and means that get logged (stage/<name>: the rate of each named stage)."""
    stage_rates = {key: float(np.mean([e[key] for e in episodes])) for key in episodes[0] if key.startswith("stage/")}
    return {**stage_rates,
        "success_once": float(np.mean([e["success_once"] for e in episodes])),
        "success_at_end": float(np.mean([e["success_at_end"] for e in episodes])),
        "return": float(np.mean([e["return"] for e in episodes])),
        # the control step of first success; max_episode_steps for an episode that never succeeds
        "first_success_step": float(np.mean([e["first_success_step"] for e in episodes])),
        "num_episodes": len(episodes),
    }


def run_simulator_eval(cfg: SimulatorRun, run: Run, policy: ACTPolicy, env, iteration: int, prefix: str) -> dict:
    """Roll the policy out, log success metrics and videos, return the metrics.

    The random state is put back afterwards: rollouts (and building the simulator on first use) must not
    shift the training run's random stream, or a resumed run, which builds its simulator later, would differ.
    """
    started, saved_rng = time.time(), rng_state()
    result = evaluate_controller(DeployedPolicy.from_config(policy, cfg), env, cfg.num_eval_episodes, cfg.eval_seed,
                                 video_dir=run.video_dir if cfg.capture_video and run.distributed.is_main else None,
                                 num_video_episodes=cfg.num_video_episodes, video_prefix=prefix,
                                 rank=run.distributed.rank, world_size=run.distributed.world_size)
    restore_rng_state(saved_rng)
    episodes = sorted(sum(all_gather(result["episodes"]), []), key=lambda e: e["episode"])
    if run.distributed.is_main:  # which seeds failed, for a closer look
        (run.ckpt_dir / f"episodes_{prefix.rstrip('_')}.json").write_text(json.dumps(episodes, indent=0))
    summary = summarize(episodes)
    metrics = {f"eval/{k}": v for k, v in summary.items()}
    metrics["eval/seconds"] = time.time() - started
    metrics["time/elapsed_s"] = time.time() - run.started
    run.logger.log(metrics, iteration)
    for path in result["videos"]:
        run.logger.log_video(path, iteration)
    print(f"[eval @ {iteration}] success_once {summary['success_once']:.1%}  success_at_end "
          f"{summary['success_at_end']:.1%}  return {summary['return']:.2f}  "
          + "".join(f"{key[6:]} {value:.1%}  " for key, value in summary.items() if key.startswith("stage/"))
          + f"over {summary['num_episodes']} episodes "
          f"({metrics['eval/seconds']:.0f}s)" + (f"; videos in {run.video_dir}" if result["videos"] else ""))
    return metrics


def evaluate_checkpoint(cfg: SimulatorRun, run: Run, make_env) -> dict:
    """mode=eval: reload a checkpoint and only roll it out (success rate, videos), no training."""
    if cfg.num_eval_episodes == 0:
        raise UserInputError("mode=eval needs num_eval_episodes >= 1")
    policy = policy_from_checkpoint(cfg.model, cfg.frame_stack, run.checkpoint, run.device, cfg.checkpoint)
    env = make_env(cfg.num_eval_envs)
    metrics = run_simulator_eval(cfg, run, policy, env, run.checkpoint["iteration"], prefix="eval_")
    env.close()
    run.finish()
    return metrics
