"""The training loop, shared by every entry script: steps, logging, validation, simulator evaluation, best.pt and
the periodic checkpoints, on one process or under torchrun.

Reading order of a run: utils/run_setup.py (`start_run`, `prepare_data`) -> models/policy.py (`build_policy`) ->
`train` here, which uses utils/optimization.py (one step), utils/evaluation.py (validation, rollouts),
utils/training_checkpoints.py (save, resume) and utils/stop_signals.py (Ctrl-C and SIGTERM).
"""

import math
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from datasets.chunk_dataset import training_batches
from datasets.frame_store import available_memory
from env.errors import UserInputError
from models.policy import ACTPolicy
from utils.allocator import reuse_freed_memory
from utils.checkpoint import check_room_for_checkpoints, prune_checkpoints
from utils.distributed import all_sum
from utils.evaluation import KL_COLLAPSED, posterior_collapse_note, run_simulator_eval, validate
from utils.optimization import (EMA, TrainingDiverged, build_optimizer, build_scheduler, kl_weight_at, make_autocast,
                                optimization_step)
from utils.run_setup import Run, TrainingData
from utils.schema import RunConfig, evaluates_in_simulator
from utils.stop_signals import StopSignals
from utils.training_checkpoints import (LogWindow, Resumed, restore_training_state, resume_note,
                                        save_training_checkpoint)


def train(cfg: RunConfig, run: Run, policy: ACTPolicy, data: TrainingData, make_env=None) -> dict:
    """Train, and return the last validation and simulator metrics. `make_env(num_envs)` builds the
    simulator adapter used for evaluation (None for a run without a simulator).

    Every log_frequency iterations: losses, lr, it/s (the only host syncs of the hot loop).
    Every val_frequency: validation loss on held-out episodes.
    Every eval_frequency and at the end: success rate in the simulator, with last.pt saved just before (marked
    evaluation pending, so that a run killed during a long evaluation resumes by running it) and after.
    Every save_frequency and at the end: iter_<n>.pt and last.pt (atomic writes; only the newest
    keep_checkpoints iter_<n>.pt stay).
    best.pt: the best simulator success so far, or the lowest validation L1 when there is no simulator eval.
    Ctrl-C or SIGTERM: the step in progress finishes, last.pt is saved and the run ends with one line saying how
    to resume (utils/stop_signals.py).
    Under torchrun (utils/distributed.py) every rank runs this same loop on its share of each batch.
    """
    device, distributed = run.device, run.distributed
    check_batch_fits_in_memory(cfg, run, data.train_set)
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

    # 1. Resume: weights, optimizer moments, random state and position in the data stream, bit for bit.
    resumed = Resumed()
    if run.checkpoint is not None:
        resumed = restore_training_state(cfg, run, policy, ema, optimizer, best_metric)
    start_iter, best_score = resumed.iteration, resumed.best_score
    if distributed.is_main:  # a disk too small for one save stops the run now, not at its first save
        check_room_for_checkpoints(run.ckpt_dir, policy, ema is not None, cfg.keep_checkpoints,
                                   planned_saves=-(-(cfg.total_iters - start_iter) // cfg.save_frequency))
        run.record_info(validation_episodes=data.val_episodes)
    scheduler = build_scheduler(cfg, optimizer, start_iter)
    if cfg.warmup_iters >= cfg.total_iters:
        print(f"[schedule] warning: warmup_iters={cfg.warmup_iters} >= total_iters={cfg.total_iters}: the learning "
              f"rate only rises, to {cfg.total_iters / cfg.warmup_iters:.0%} of lr={cfg.lr:g}, and never decays; "
              f"e.g. warmup_iters={cfg.total_iters // 10} for a run this short")
    # The module the training step calls: the policy itself, wrapped by DDP under torchrun (which averages the
    # gradients over ranks inside backward(), so that every rank takes the same step) and compiled with compile=true.
    training_policy = (DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda" else None)
                       if distributed.enabled else policy)
    training_policy = torch.compile(training_policy) if cfg.compile else training_policy
    autocast, precision = make_autocast(cfg, device)
    print(f"[precision] {precision}")

    env, metrics, collapse_reported = None, {}, False
    # Losses summed on the device since the last log (a checkpoint saved between logs holds them) and their count.
    running, window_iters = resumed.log_window.sums, resumed.log_window.iterations
    window_start, timed_from = time.time(), start_iter  # it/s: the steps since then

    bar = tqdm(range(start_iter, cfg.total_iters), initial=start_iter, total=cfg.total_iters, desc="train",
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30, disable=not distributed.is_main)

    def save(name: str, step: int, evaluation_pending: bool = False):
        save_training_checkpoint(run.ckpt_dir / name, cfg, run, data, policy, ema, optimizer, step,
                                 {"metric": best_metric, "score": best_score}, LogWindow(running, window_iters),
                                 evaluation_pending)

    def validate_evaluate_and_save(step: int, last: bool, stop: StopSignals) -> bool:
        """Steps 4 to 7 of an iteration (alone for a resumed run whose checkpoint had them pending). Returns whether
        last.pt was saved."""
        nonlocal env, best_score, collapse_reported
        # 4. Validate on the held-out episodes. A stop signal during the pass ends it: last.pt is saved with steps
        #    4-7 pending, and the resumed run runs them first.
        validated = data.val_set is not None and (step % cfg.val_frequency == 0 or last)
        if validated:
            validation = validate(eval_policy, data.val_set, cfg.batch_size, device, distributed,
                                  stop_requested=lambda: stop.received != 0)
            if validation is None:
                save("last.pt", step, evaluation_pending=True)
                stop.end_run(stop.requested(), f"during the validation after iteration {step} of {cfg.total_iters}: "
                                               f"stopped without its figures", every_rank=True)
            metrics.update(validation)
            run.logger.log({k: v for k, v in metrics.items() if k.startswith("val/")}, step)
            bar.write(f"[val @ {step}] l1 {metrics['val/l1']:.4f} (deployed, z = 0)  "
                      f"l1_posterior {metrics['val/l1_posterior']:.4f}  kl {metrics['val/kl']:.4f}")
            if policy.model.use_cvae and metrics["val/kl"] < KL_COLLAPSED and not collapse_reported:
                bar.write(posterior_collapse_note(step, metrics))
                collapse_reported = True

        # 5. Evaluate in the simulator. last.pt first: a kill during a long evaluation loses no training, and a
        #    stop signal during it stops at once.
        evaluated = simulator_eval and (step % cfg.eval_frequency == 0 or last)
        if evaluated:
            save("last.pt", step, evaluation_pending=True)
            with stop.stopping_at_once():
                env = env or make_env(cfg.num_eval_envs)
                metrics.update(run_simulator_eval(cfg, run, eval_policy, env, step, prefix=f"iter{step:07d}_"))

        # 6. best.pt when best_metric was just measured and beat its best.
        if evaluated or (validated and best_metric == "val/l1"):
            score = -metrics["val/l1"] if best_metric == "val/l1" else metrics[best_metric]
            if score > best_score:
                best_score = score
                save("best.pt", step)

        # 7. Checkpoints: iter_<n>.pt and last.pt (only the newest keep_checkpoints iter_<n>.pt stay), after this
        #    step's evaluation, so a resumed run starts from a step whose metrics are all logged; last.pt also
        #    after every evaluation, which it must no longer mark pending.
        periodic = step % cfg.save_frequency == 0 or last
        if periodic or evaluated:
            for name in [f"iter_{step:07d}.pt", "last.pt"] if periodic else ["last.pt"]:
                save(name, step)
            if periodic and distributed.is_main:
                prune_checkpoints(run.ckpt_dir, cfg.keep_checkpoints, step)
            run.logger.plot_curves()
        return periodic or evaluated

    # Batch i depends only on (seed, i), and the loader draws nothing from the random state restored above.
    batch_stream = training_batches(data.train_set, cfg.batch_size, cfg.seed, cfg.num_workers, start_iter,
                                    distributed.rank, distributed.world_size)
    # Left in reverse order: a stopped run ignores further signals (StopSignals) before its loader workers end.
    with batch_stream as batches, StopSignals(run) as stop, bar:
        if resumed.evaluation_pending:
            validate_evaluate_and_save(start_iter, start_iter == cfg.total_iters, stop)
        for iteration, batch in zip(bar, batches):
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
                        f"non-finite training loss at iteration {step} ("
                        + ", ".join(f"{key[6:]} {value}" for key, value in means.items()) + "); "
                        + resume_note(run, "lr=<lower> or grad_clip=<lower>"))
                speed = (step - timed_from) / (time.time() - window_start)
                means.update({"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
                              "train/kl_weight": kl_weight_at(cfg, iteration), "train/iters_per_s": speed})
                run.logger.log(means, step)
                bar.set_postfix(loss=f"{means['train/loss']:.4f}", l1=f"{means['train/l1']:.4f}",
                                lr=f"{means['train/lr']:.1e}", it_s=f"{speed:.1f}")
                running, window_iters = {k: 0.0 for k in running}, 0
                window_start, timed_from = time.time(), step

            # 4-7. Validation, simulator evaluation, best.pt, checkpoints.
            saved = validate_evaluate_and_save(step, last, stop)

            # 8. A stop signal (Ctrl-C, SIGTERM) that came during this step ends the run here, with last.pt saved.
            signum = 0 if last else stop.requested()
            if signum:
                if not saved:
                    save("last.pt", step)
                stop.end_run(signum, f"during iteration {step} of {cfg.total_iters}: stopped after it", every_rank=True)
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


# Peak memory of one training step per sample, measured on the CPU as the growth of peak RSS between two batch sizes
# (3 steps in a fresh process each, fp32 and bf16 autocast): the state config 1.3 MiB per sample (inputs: 508 bytes),
# the rgb CPU config 4.7-7.6 MiB (inputs 19.7 kB), the 128x128 rgb config 12.1-18.8 MiB (inputs 49.8 kB), the tests'
# 70k-parameter state model 0.13 MiB (inputs 304 bytes). At least 250x the sample's input bytes in each, so this factor
# gives a lower bound of what a batch needs.
STEP_BYTES_PER_INPUT_BYTE = 250


def check_batch_fits_in_memory(cfg: RunConfig, run: Run, dataset):
    """Stop with one line, before the first batch is drawn, when a training step of batch_size samples certainly
    cannot fit: its input bytes times STEP_BYTES_PER_INPUT_BYTE against the memory available (RAM, which every
    rank's share takes on one machine, or the free memory of each rank's GPU). Smaller batches may still not fit."""
    sample_bytes = sum(tensor.numel() * tensor.element_size() for tensor in dataset[[0]].values())
    if run.device.type == "cuda":
        samples, available, where = (cfg.batch_size // run.distributed.world_size,
                                     torch.cuda.mem_get_info(run.device)[0], f"free on {run.device}")
    else:
        samples, available, where = cfg.batch_size, available_memory(), "available (MemAvailable)"
    needed = samples * sample_bytes * STEP_BYTES_PER_INPUT_BYTE
    if available is not None and needed > available:
        largest = available // (sample_bytes * STEP_BYTES_PER_INPUT_BYTE) * cfg.batch_size // samples
        raise UserInputError(f"batch_size={cfg.batch_size} needs at least {needed / 2**30:,.1f} GiB for one training "
                             f"step ({sample_bytes} input bytes per sample, and a step takes >= "
                             f"{STEP_BYTES_PER_INPUT_BYTE}x its inputs), but {available / 2**30:.1f} GiB is {where}; "
                             f"a batch_size above {largest} cannot fit")
