"""The training run's checkpoints: what a resumed run needs is saved (`save_training_checkpoint`) and put back
(`restore_training_state`) bit for bit: weights, EMA, optimizer moments, every rank's random state, the iteration,
the best score so far and whether that iteration's simulator evaluation is still to run. Writing and reading the
files themselves: utils/checkpoint.py. `resume_note`: where a stopped run can continue from, for its last line."""

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.policy import ACTPolicy
from utils.checkpoint import load_checkpoint, load_weights, restore_rng_state, rng_state, save_checkpoint
from utils.distributed import all_gather
from utils.logger import RunLogger
from utils.optimization import EMA, TrainingDiverged
from utils.run_setup import Run, TrainingData
from utils.schema import RunConfig


@dataclass
class LogWindow:
    """The training losses summed since the last log (tensors on the device, 0.0 before the first step), and how
    many steps they hold."""

    sums: dict
    iterations: int


@dataclass
class Resumed:
    """Where a run picks up: a new one at the defaults, a resumed one where its checkpoint left off."""

    iteration: int = 0
    best_score: float = -math.inf  # of best.pt so far
    evaluation_pending: bool = False  # the iteration's validation, simulator evaluation and saves are still to run
    log_window: LogWindow = field(default_factory=lambda: LogWindow({"loss": 0.0, "l1": 0.0, "kl": 0.0}, 0))


def save_training_checkpoint(path: Path, cfg: RunConfig, run: Run, data: TrainingData, policy: ACTPolicy, ema: EMA | None,
                             optimizer, iteration: int, best: dict, log_window: LogWindow,
                             evaluation_pending: bool = False):
    """Everything a resumed run needs, written by rank 0 (utils/checkpoint.py: atomically). `best`: {"metric",
    "score"} of best.pt so far. log_window: the training losses summed since the last log, so that a run stopped
    between two logs logs the same means when resumed. evaluation_pending: saved before this iteration's
    simulator evaluation, or when a stop signal cut its validation short; a run resumed from it runs the iteration's
    validation, evaluation and saves first. A diverged model never overwrites a good
    checkpoint (NaN can appear between log steps)."""
    if not all(torch.isfinite(p).all() for p in policy.parameters()):
        raise TrainingDiverged(f"non-finite weights at iteration {iteration}, not saving {path.name}; "
                               f"{resume_note(run, 'lr=<lower> or grad_clip=<lower>')}")
    rng_states = all_gather(rng_state())  # every rank's, so that each resumes its own random stream
    log_windows = all_gather({"sums": {key: value.cpu() if torch.is_tensor(value) else value
                                       for key, value in log_window.sums.items()},
                              "iterations": log_window.iterations})
    if not run.distributed.is_main:
        return
    shape_meta = {**data.shape_meta, "frozen_batchnorm": _uses_frozen_batchnorm(policy)}
    save_checkpoint(path, {
        "policy": policy.state_dict(), "ema": ema.policy.state_dict() if ema else None,
        "optimizer": optimizer.state_dict(), "iteration": iteration, "world_size": run.distributed.world_size,
        "config": cfg.to_dict(), "shape_meta": shape_meta, "rng": rng_states, "best": best,
        "run_name": run.name, "wandb_id": run.logger.wandb_id,
        "split": {"train": data.train_episodes, "val": data.val_episodes}, "log_windows": log_windows,
        "evaluation_pending": evaluation_pending,
    })


def resume_note(run: Run, overrides: str = "") -> str:
    """Where a stopped run continues from, for its last line: last.pt's iteration, read from the file (a stop at
    once can come in the middle of a save), and the command with `overrides`; '' on ranks other than 0."""
    if not run.distributed.is_main:
        return ""
    path = run.ckpt_dir / "last.pt"
    if not path.is_file():
        return f"no checkpoint was saved yet ({path} does not exist): nothing to resume"
    saved = load_checkpoint(path)
    pending = (", its validation and evaluation still to run: resume runs them first" if saved.get("evaluation_pending")
               else "")
    launcher = f"torchrun --nproc_per_node={run.distributed.world_size}" if run.distributed.enabled else "python"
    return (f"the last good checkpoint is {path} (iteration {saved['iteration']}{pending}); continue with: "
            f"{launcher} {sys.argv[0]} resume={path}" + (f" {overrides}" if overrides else ""))


def _uses_frozen_batchnorm(policy: ACTPolicy) -> bool | None:
    backbone = getattr(policy.model, "backbone", None)
    return None if backbone is None else backbone.frozen_batchnorm


def _drop_metrics_after(logger: RunLogger, iteration: int, evaluation_pending: bool):
    """A resumed run rewrites history from its checkpoint on: drop rows logged after it, and the checkpoint's own
    iteration's validation and evaluation rows when they are to run again."""
    rows = [row for row in logger.read_metrics() if row["iteration"] < iteration or (row["iteration"] == iteration
            and not (evaluation_pending and any(key.startswith(("val/", "eval/")) for key in row)))]
    logger.metrics_path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def restore_training_state(cfg: RunConfig, run: Run, policy: ACTPolicy, ema: EMA | None, optimizer,
                           best_metric: str) -> Resumed:
    """Load a checkpoint into a freshly built training set-up. best_score is -inf when best.pt was chosen by
    another metric than best_metric (num_eval_episodes changed)."""
    ckpt = run.checkpoint
    load_weights(policy, ckpt["policy"], cfg.resume)
    optimizer.load_state_dict(ckpt["optimizer"])
    if ema:
        ema.policy.load_state_dict(ckpt["ema"] or ckpt["policy"])
    rng_states = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]  # a dict: older checkpoints
    distributed = run.distributed
    resumed = Resumed(ckpt["iteration"])
    if len(rng_states) == distributed.world_size:
        restore_rng_state(rng_states[distributed.rank])
        if "log_windows" in ckpt:  # older checkpoints: the window restarts empty, as their resumed runs did
            window = ckpt["log_windows"][distributed.rank]
            resumed.log_window = LogWindow({key: value.to(run.device) if torch.is_tensor(value) else value
                                            for key, value in window["sums"].items()}, window["iterations"])
    else:  # the batches stay the same global ones; only dropout and z draws change
        print(f"[resume] the checkpoint was trained by {len(rng_states)} process(es), this run has "
              f"{distributed.world_size}: same global batch and batches, but the random draws (dropout, z samples) "
              f"differ, so the run will not match one continued with {len(rng_states)}")
    resumed.evaluation_pending = ckpt.get("evaluation_pending", False)
    if distributed.is_main:
        _drop_metrics_after(run.logger, ckpt["iteration"], resumed.evaluation_pending)
    print(f"[resume] from {cfg.resume} at iteration {ckpt['iteration']}"
          + (", whose validation or evaluation was cut short: running them first" if resumed.evaluation_pending
             else ""))
    saved_best = ckpt.get("best", {"metric": "eval/success_once", "score": ckpt.get("best_success")})  # older format
    if saved_best["metric"] == best_metric:
        resumed.best_score = saved_best["score"]
    else:
        print(f"[resume] best.pt was chosen by {saved_best['metric']}; from now on by {best_metric}")
    return resumed
