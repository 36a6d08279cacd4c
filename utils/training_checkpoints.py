"""The training run's checkpoints: what a resumed run needs is saved (`save_training_checkpoint`) and put back
(`restore_training_state`) bit for bit: weights, EMA, optimizer moments, every rank's random state, the iteration
and the best score so far. Writing and reading the files themselves: utils/checkpoint.py."""

import json
import math
from pathlib import Path

import torch

from models.policy import ACTPolicy
from utils.checkpoint import load_weights, restore_rng_state, rng_state, save_checkpoint
from utils.distributed import all_gather
from utils.logger import RunLogger
from utils.optimization import EMA, TrainingDiverged
from utils.run_setup import Run, TrainingData
from utils.schema import RunConfig


def save_training_checkpoint(path: Path, cfg: RunConfig, run: Run, data: TrainingData, policy: ACTPolicy, ema: EMA | None,
                             optimizer, iteration: int, best: dict):
    """Everything a resumed run needs, written by rank 0 (utils/checkpoint.py: atomically). `best`: {"metric",
    "score"} of best.pt so far. A diverged model never overwrites a good checkpoint (NaN can appear between log
    steps)."""
    if not all(torch.isfinite(p).all() for p in policy.parameters()):
        raise TrainingDiverged(f"non-finite weights at iteration {iteration}; not saving {path.name}. The last good "
                               f"checkpoint is {run.ckpt_dir / 'last.pt'}. Try a lower lr or grad_clip.")
    rng_states = all_gather(rng_state())  # every rank's, so that each resumes its own random stream
    if not run.distributed.is_main:
        return
    shape_meta = {**data.shape_meta, "frozen_batchnorm": _uses_frozen_batchnorm(policy)}
    save_checkpoint(path, {
        "policy": policy.state_dict(), "ema": ema.policy.state_dict() if ema else None,
        "optimizer": optimizer.state_dict(), "iteration": iteration, "world_size": run.distributed.world_size,
        "config": cfg.to_dict(), "shape_meta": shape_meta, "rng": rng_states, "best": best,
        "run_name": run.name, "wandb_id": run.logger.wandb_id,
        "split": {"train": data.train_episodes, "val": data.val_episodes},
    })


def _uses_frozen_batchnorm(policy: ACTPolicy) -> bool | None:
    backbone = getattr(policy.model, "backbone", None)
    return None if backbone is None else backbone.frozen_batchnorm


def _drop_metrics_after(logger: RunLogger, iteration: int):
    """A resumed run rewrites history from its checkpoint on: drop rows logged after it."""
    rows = [row for row in logger.read_metrics() if row["iteration"] <= iteration]
    logger.metrics_path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def restore_training_state(cfg: RunConfig, run: Run, policy: ACTPolicy, ema: EMA | None, optimizer,
                           best_metric: str) -> tuple[int, float]:
    """Load a checkpoint into a freshly built training set-up. Returns its iteration and the score of its best.pt,
    or -inf when that was chosen by another metric than best_metric (num_eval_episodes changed)."""
    ckpt = run.checkpoint
    load_weights(policy, ckpt["policy"], cfg.resume)
    optimizer.load_state_dict(ckpt["optimizer"])
    if ema:
        ema.policy.load_state_dict(ckpt["ema"] or ckpt["policy"])
    rng_states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]  # a dict: older checkpoints
    distributed = run.distributed
    if len(rng_states) == distributed.world_size:
        restore_rng_state(rng_states[distributed.rank])
    else:  # the batches stay the same global ones; only dropout and z draws change
        print(f"[resume] the checkpoint was trained by {len(rng_states)} process(es), this run has "
              f"{distributed.world_size}: same global batch and batches, but the random draws (dropout, z samples) "
              f"differ, so the run will not match one continued with {len(rng_states)}")
    if distributed.is_main:
        _drop_metrics_after(run.logger, ckpt["iteration"])
    print(f"[resume] from {cfg.resume} at iteration {ckpt['iteration']}")
    saved_best = ckpt.get("best", {"metric": "eval/success_once", "score": ckpt.get("best_success")})  # older format
    if saved_best["metric"] != best_metric:
        print(f"[resume] best.pt was chosen by {saved_best['metric']}; from now on by {best_metric}")
        return ckpt["iteration"], -math.inf
    return ckpt["iteration"], saved_best["score"]
