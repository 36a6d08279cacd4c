"""The training loop, shared by every entry script: steps, logging, validation, simulator evaluation, best.pt and
the periodic checkpoints, on one process or under torchrun.

Reading order of a run: utils/run_setup.py (`start_run`, `prepare_data`) -> models/policy.py (`build_policy`) ->
`train` here, which uses utils/optimization.py (one step), utils/evaluation.py (validation, rollouts) and
utils/training_checkpoints.py (save, resume).
"""

import math
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from datasets.chunk_dataset import make_train_loader
from models.policy import ACTPolicy
from utils.allocator import reuse_freed_memory
from utils.checkpoint import check_room_for_checkpoints, prune_checkpoints
from utils.distributed import all_sum
from utils.evaluation import KL_COLLAPSED, posterior_collapse_note, run_simulator_eval, validate
from utils.optimization import (EMA, TrainingDiverged, build_optimizer, build_scheduler, kl_weight_at, make_autocast,
                                optimization_step)
from utils.run_setup import Run, TrainingData
from utils.schema import RunConfig, evaluates_in_simulator
from utils.training_checkpoints import restore_training_state, save_training_checkpoint


def train(cfg: RunConfig, run: Run, policy: ACTPolicy, data: TrainingData, make_env=None) -> dict:
    """Train, and return the last validation and simulator metrics. `make_env(num_envs)` builds the
    simulator adapter used for evaluation (None for a run without a simulator).

    Every log_frequency iterations: losses, lr, it/s (the only host syncs of the hot loop).
    Every val_frequency: validation loss on held-out episodes.
    Every eval_frequency and at the end: success rate in the simulator.
    Every save_frequency and at the end: iter_<n>.pt and last.pt (atomic writes; only the newest
    keep_checkpoints iter_<n>.pt stay).
    best.pt: the best simulator success so far, or the lowest validation L1 when there is no simulator eval.
    Under torchrun (utils/distributed.py) every rank runs this same loop on its share of each batch.
    """
    device, distributed = run.device, run.distributed
    # From here on glibc keeps what PyTorch frees for the next step's activations (faster CPU steps). Not before:
    # reading the data frees each episode's arrays once they are copied into the replay buffer, and a kept
    # heap would hold that memory twice (peak RSS 9.1 GiB instead of ~6 on benchmarks/own_data_memory.py).
    reuse_freed_memory()
    policy.to(device)
    optimizer = build_optimizer(cfg, policy)
    ema = EMA(policy, cfg.ema_decay) if cfg.ema_decay > 0 else None
    eval_policy = ema.policy if ema else policy
    # best.pt keeps the highest score so far of best_metric (success rate as is, validation L1 negated).
    simulator_eval = evaluates_in_simulator(cfg)
    best_metric = "eval/success_once" if simulator_eval else "val/l1"
    start_iter, best_score = 0, -math.inf

    # 1. Resume: weights, optimizer moments, random state and position in the data stream, bit for bit.
    if run.checkpoint is not None:
        start_iter, best_score = restore_training_state(cfg, run, policy, ema, optimizer, best_metric)
    if distributed.is_main:  # a disk too small for one save stops the run now, not at its first save
        check_room_for_checkpoints(run.ckpt_dir, policy, ema is not None, cfg.keep_checkpoints,
                                   planned_saves=-(-(cfg.total_iters - start_iter) // cfg.save_frequency))
    scheduler = build_scheduler(cfg, optimizer, start_iter)
    # Batch i depends only on (seed, i), and the loader draws nothing from the random state restored above.
    loader = make_train_loader(data.train_set, cfg.batch_size, cfg.seed, cfg.num_workers, start_iter,
                               distributed.rank, distributed.world_size)
    # The module the training step calls: the policy itself, wrapped by DDP under torchrun (which averages the
    # gradients over ranks inside backward(), so that every rank takes the same step) and compiled with compile=true.
    training_policy = (DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda" else None)
                       if distributed.enabled else policy)
    training_policy = torch.compile(training_policy) if cfg.compile else training_policy
    autocast, precision = make_autocast(cfg, device)
    print(f"[precision] {precision}")

    env, metrics, collapse_reported = None, {}, False
    running = {"loss": 0.0, "l1": 0.0, "kl": 0.0}  # summed since the last log, on the device
    window_start, window_iters = time.time(), 0
    bar = tqdm(range(start_iter, cfg.total_iters), initial=start_iter, total=cfg.total_iters, desc="train",
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30, disable=not distributed.is_main)
    for iteration, batch in zip(bar, loader):
        step = iteration + 1  # iterations done after this one; the schedules below count in these
        last = step == cfg.total_iters

        # 2. One optimisation step.
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        losses, grad_norm = optimization_step(cfg, policy, training_policy, optimizer, scheduler, autocast, batch,
                                              iteration)
        if ema:
            ema.update(policy)
        for key in running:
            running[key] += losses[key].detach()  # stays on the device: no sync per step
        window_iters += 1

        # 3. Log the training losses averaged since the last log.
        if step % cfg.log_frequency == 0 or last:
            sums = all_sum([float(v) for v in running.values()], device)  # over ranks
            means = {f"train/{k}": total / window_iters / distributed.world_size for k, total in zip(running, sums)}
            if not all(math.isfinite(v) for v in means.values()):
                raise TrainingDiverged(
                    f"non-finite training loss at iteration {step} ({means}); stopping. The last good "
                    f"checkpoint is {run.ckpt_dir / 'last.pt'}. Try a lower lr or grad_clip.")
            speed = window_iters / (time.time() - window_start)
            means.update({"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
                          "train/kl_weight": kl_weight_at(cfg, iteration), "train/iters_per_s": speed})
            run.logger.log(means, step)
            bar.set_postfix(loss=f"{means['train/loss']:.4f}", l1=f"{means['train/l1']:.4f}",
                            lr=f"{means['train/lr']:.1e}", it_s=f"{speed:.1f}")
            running = {k: 0.0 for k in running}
            window_start, window_iters = time.time(), 0

        # 4. Validate on the held-out episodes.
        validated = data.val_set is not None and (step % cfg.val_frequency == 0 or last)
        if validated:
            metrics.update(validate(eval_policy, data.val_set, cfg.batch_size, device, distributed))
            run.logger.log({k: v for k, v in metrics.items() if k.startswith("val/")}, step)
            bar.write(f"[val @ {step}] l1 {metrics['val/l1']:.4f} (deployed, z = 0)  "
                      f"l1_posterior {metrics['val/l1_posterior']:.4f}  kl {metrics['val/kl']:.4f}")
            if policy.model.use_cvae and metrics["val/kl"] < KL_COLLAPSED and not collapse_reported:
                bar.write(posterior_collapse_note(step, metrics))
                collapse_reported = True

        # 5. Evaluate in the simulator.
        evaluated = simulator_eval and (step % cfg.eval_frequency == 0 or last)
        if evaluated:
            env = env or make_env(cfg.num_eval_envs)
            metrics.update(run_simulator_eval(cfg, run, eval_policy, env, step, prefix=f"iter{step:07d}_"))

        # 6. best.pt when best_metric was just measured and beat its best.
        if evaluated or (validated and best_metric == "val/l1"):
            score = -metrics["val/l1"] if best_metric == "val/l1" else metrics[best_metric]
            if score > best_score:
                best_score = score
                save_training_checkpoint(run.ckpt_dir / "best.pt", cfg, run, data, policy, ema, optimizer, step,
                                         {"metric": best_metric, "score": best_score})

        # 7. Checkpoints: iter_<n>.pt and last.pt (only the newest keep_checkpoints iter_<n>.pt stay), after this
        #    step's evaluation, so a resumed run starts from a step whose metrics are all logged.
        if step % cfg.save_frequency == 0 or last:
            for name in (f"iter_{step:07d}.pt", "last.pt"):
                save_training_checkpoint(run.ckpt_dir / name, cfg, run, data, policy, ema, optimizer, step,
                                         {"metric": best_metric, "score": best_score})
            if distributed.is_main:
                prune_checkpoints(run.ckpt_dir, cfg.keep_checkpoints, step)
            run.logger.plot_curves()
    bar.close()
    if env is not None:
        env.close()
    run.logger.plot_curves()
    run.finish()
    return metrics


def final_summary(metrics: dict) -> str:
    """The run's last figures for the closing line of an entry script."""
    parts = []
    if "eval/success_once" in metrics:
        parts.append(f"success rate {metrics['eval/success_once']:.1%} (at end {metrics['eval/success_at_end']:.1%})")
    if "val/l1" in metrics:
        parts.append(f"validation L1 {metrics['val/l1']:.4f} (deployed policy)")
    return ", ".join(parts) or "no validation or simulator evaluation was configured"
