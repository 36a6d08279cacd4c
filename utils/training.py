"""Everything both entry scripts share: run set-up, data split, policy construction, the training loop,
validation, simulator evaluation, checkpointing and resuming.

Reading order: `start_run` -> `prepare_data` -> `build_policy` -> `train` (or `evaluate_checkpoint`).
"""

import copy
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from datasets.replay_buffer import ChunkDataset, compute_stats, iterate_in_order, make_train_loader, split_episodes
from models.act import ACT
from models.policy import ACTPolicy
from utils.allocator import reuse_freed_memory
from utils.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from utils.config import Config, to_config
from utils.evaluation import evaluate_policy
from utils.logger import RunLogger

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(path) -> Path:
    """Relative paths in configs are relative to the repository, wherever the script is started from."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


# --------------------------------------------------------------------------------------------------
# Run set-up
# --------------------------------------------------------------------------------------------------
def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device='{name}' was asked for but CUDA is not available; use device=auto or cpu")
    return torch.device(name)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    name: str
    ckpt_dir: Path
    video_dir: Path
    device: torch.device
    logger: RunLogger
    checkpoint: dict | None  # the checkpoint being resumed or evaluated, if any
    started: float  # time.time() at start-up: eval rows log the wall time since then as time/elapsed_s


def start_run(cfg: Config) -> Run:
    """Seed, pick the device, name the run and open its folders and logger.

    Resuming continues the checkpoint's run (same name and folders, same W&B run); evaluation-only
    gets a fresh run named after the evaluated one.
    """
    started = time.time()
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    malloc_note = " (malloc reuses freed memory)" if device.type == "cpu" and reuse_freed_memory() else ""
    checkpoint = None
    if cfg.mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got '{cfg.mode}'")
    if cfg.mode == "eval":
        if not cfg.checkpoint:
            raise ValueError("mode=eval needs checkpoint=<path to a .pt file>")
        checkpoint = load_checkpoint(cfg.checkpoint)
        name = f"{checkpoint['run_name']}-eval-{time.strftime('%Y%m%d-%H%M%S')}"
    elif cfg.resume:
        checkpoint = load_checkpoint(cfg.resume)
        name = checkpoint["run_name"]
    else:
        name = f"{cfg.exp_name}-{cfg.env_id}-{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    ckpt_dir, video_dir = repo_path(cfg.ckpt_dir) / name, repo_path(cfg.video_dir) / name
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    (ckpt_dir / "run_info.json").write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    wandb_id = checkpoint.get("wandb_id") if checkpoint and cfg.mode == "train" else None
    logger = RunLogger(ckpt_dir, name, cfg.to_dict(), cfg.wandb, wandb_id)
    print(f"[run] {name} on {device}{malloc_note}\n      checkpoints, metrics, curves: {ckpt_dir}\n"
          f"      videos: {video_dir}")
    return Run(name, ckpt_dir, video_dir, device, logger, checkpoint, started)


# --------------------------------------------------------------------------------------------------
# Data and policy
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    train_set: ChunkDataset
    val_set: ChunkDataset | None
    stats: dict
    shape_meta: dict
    train_episodes: list[int]
    val_episodes: list[int]


def prepare_data(cfg: Config, episodes: list[dict], action_type: str) -> TrainingData:
    """Hold out whole episodes for validation, compute normalisation stats on the training episodes only."""
    train_ids, val_ids = split_episodes(len(episodes), cfg.val_fraction, cfg.seed)
    train_eps = [episodes[i] for i in train_ids]
    first = episodes[0]
    shape_meta = {
        "state_dim": first["state"].shape[1],
        "action_dim": first["actions"].shape[1],
        "num_cameras": first["images"].shape[1] if "images" in first else 0,
        "image_channels": first["images"].shape[2] if "images" in first else 3,
        "action_type": action_type,
    }
    print(f"[data] {len(train_ids)} training / {len(val_ids)} validation episodes, "
          f"{sum(len(e['actions']) for e in train_eps)} training samples, action type '{action_type}'")
    train_set = ChunkDataset(train_eps, cfg.model.chunk_size, action_type, cfg.frame_stack)
    val_set = (ChunkDataset([episodes[i] for i in val_ids], cfg.model.chunk_size, action_type, cfg.frame_stack)
               if val_ids else None)
    return TrainingData(train_set, val_set, compute_stats(train_eps), shape_meta, train_ids, val_ids)


def build_policy(cfg: Config, shape_meta: dict, stats: dict, frozen_batchnorm: bool | None = None) -> ACTPolicy:
    """ACT sized by cfg.model; stacked frames enter as a longer state vector and extra camera images."""
    m, frames = cfg.model, cfg.frame_stack
    model = ACT(
        state_dim=shape_meta["state_dim"] * frames, action_dim=shape_meta["action_dim"],
        num_cameras=shape_meta["num_cameras"] * frames, image_channels=shape_meta["image_channels"],
        chunk_size=m.chunk_size, d_model=m.d_model, nhead=m.nhead, dim_feedforward=m.dim_feedforward,
        num_encoder_layers=m.num_encoder_layers, num_decoder_layers=m.num_decoder_layers,
        num_style_encoder_layers=m.num_style_encoder_layers, dropout=m.dropout, latent_dim=m.latent_dim,
        use_cvae=m.use_cvae, pretrained_backbone=m.pretrained_backbone and frozen_batchnorm is None,
        pretrained_weights_path=m.pretrained_weights_path, frozen_batchnorm=frozen_batchnorm,
    )
    policy = ACTPolicy(model, stats, m.kl_weight)
    print(f"[model] ACT with {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M parameters")
    return policy


def policy_from_checkpoint(checkpoint: dict, device) -> ACTPolicy:
    """Rebuild the policy exactly as it was saved (its own config), weights and normalisation included."""
    cfg = to_config(checkpoint["config"])
    meta = checkpoint["shape_meta"]
    # Placeholder statistics of the right size; the real ones are buffers in the saved state dict.
    placeholder = {"state_mean": np.zeros(meta["state_dim"]), "state_std": np.ones(meta["state_dim"]),
                   "action_mean": np.zeros(meta["action_dim"]), "action_std": np.ones(meta["action_dim"])}
    policy = build_policy(cfg, meta, placeholder, frozen_batchnorm=meta["frozen_batchnorm"])
    policy.load_state_dict(checkpoint["ema"] or checkpoint["policy"])
    return policy.to(device)


# --------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------
def build_optimizer(cfg: Config, policy: ACTPolicy) -> torch.optim.Optimizer:
    backbone = [p for n, p in policy.named_parameters() if n.startswith("model.backbone") and p.requires_grad]
    others = [p for n, p in policy.named_parameters() if not n.startswith("model.backbone") and p.requires_grad]
    groups = [{"params": others, "lr": cfg.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr_backbone})
    # fused: one kernel for the whole update (benchmarks/README.md: +6-14% samples/s on CPU).
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=True)


def build_scheduler(cfg: Config, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over warmup_iters, then constant or cosine decay to zero at total_iters."""
    if cfg.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got '{cfg.lr_schedule}'")

    def factor(iteration: int) -> float:
        if iteration < cfg.warmup_iters:
            return (iteration + 1) / cfg.warmup_iters
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (iteration - cfg.warmup_iters) / max(1, cfg.total_iters - cfg.warmup_iters)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EMA:
    """Exponential moving average of the policy's weights; evaluation and best.pt use the average."""

    def __init__(self, policy: ACTPolicy, decay: float):
        self.decay = decay
        self.policy = copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, policy: ACTPolicy):
        ema_params = list(self.policy.parameters())
        torch._foreach_lerp_(ema_params, list(policy.parameters()), 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.policy.buffers(), policy.buffers()):
            ema_buffer.copy_(buffer)


class TrainingDiverged(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# Validation and the training loop
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(policy: ACTPolicy, dataset: ChunkDataset, batch_size: int, device) -> dict:
    """Mean L1 and KL over every held-out sample (eval mode: no dropout, z = posterior mean)."""
    policy.eval()
    totals, count = {"l1": 0.0, "kl": 0.0}, 0
    for batch in iterate_in_order(dataset, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        losses = policy(batch)
        size = len(batch["actions"])
        for key in totals:
            totals[key] += losses[key].item() * size
        count += size
    return {f"val/{k}": v / count for k, v in totals.items()}


def _checkpoint_payload(cfg, run, policy, ema, optimizer, scheduler, iteration, data, best_success) -> dict:
    shape_meta = {**data.shape_meta, "frozen_batchnorm": _uses_frozen_batchnorm(policy)}
    return {
        "policy": policy.state_dict(), "ema": ema.policy.state_dict() if ema else None,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "iteration": iteration,
        "config": cfg.to_dict(), "shape_meta": shape_meta, "rng": rng_state(), "best_success": best_success,
        "run_name": run.name, "wandb_id": run.logger.wandb_id,
        "split": {"train": data.train_episodes, "val": data.val_episodes},
    }


def _uses_frozen_batchnorm(policy: ACTPolicy) -> bool | None:
    backbone = getattr(policy.model, "backbone", None)
    return None if backbone is None else backbone.frozen_batchnorm


def run_simulator_eval(cfg, run, policy, env, iteration: int, prefix: str) -> dict:
    """Roll the policy out, log success metrics and videos, return the metrics."""
    started = time.time()
    result = evaluate_policy(policy, env, cfg.num_eval_episodes, cfg.eval_seed, frame_stack=cfg.frame_stack,
                             temporal_ensemble=cfg.temporal_ensemble, ensemble_k=cfg.ensemble_k,
                             query_frequency=cfg.query_frequency,
                             video_dir=run.video_dir if cfg.capture_video else None,
                             num_video_episodes=cfg.num_video_episodes, video_prefix=prefix)
    metrics = {f"eval/{k}": v for k, v in result.items() if k != "videos"}
    metrics["eval/seconds"] = time.time() - started
    metrics["time/elapsed_s"] = time.time() - run.started
    run.logger.log(metrics, iteration)
    for path in result["videos"]:
        run.logger.log_video(path, iteration)
    print(f"[eval @ {iteration}] success_once {result['success_once']:.1%}  success_at_end "
          f"{result['success_at_end']:.1%}  return {result['return']:.2f}  over {result['num_episodes']} episodes "
          f"({metrics['eval/seconds']:.0f}s)" + (f"; videos in {run.video_dir}" if result["videos"] else ""))
    return metrics


def train(cfg: Config, run: Run, policy: ACTPolicy, data: TrainingData, make_env) -> dict:
    """The training loop. `make_env(num_envs)` builds the simulator adapter used for evaluation.

    Every log_frequency iterations: losses, lr, it/s (the only host syncs of the hot loop).
    Every val_frequency: validation loss on held-out episodes.
    Every eval_frequency and at the end: success rate in the simulator; best.pt keeps the best.
    Every save_frequency and at the end: iter_<n>.pt and last.pt (atomic writes).
    """
    device = run.device
    policy.to(device)
    optimizer = build_optimizer(cfg, policy)
    scheduler = build_scheduler(cfg, optimizer)
    ema = EMA(policy, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start_iter, best_success = 0, -1.0
    if run.checkpoint is not None:  # resume: same weights, optimizer moments, lr schedule, RNG and data stream
        ckpt = run.checkpoint
        policy.load_state_dict(ckpt["policy"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # The config's lr / lr_backbone win over the saved ones, so `resume=... lr=...` does what it says
        # (a plain resume starts from the checkpoint's config, so nothing changes then).
        scheduler.base_lrs = [cfg.lr, cfg.lr_backbone][: len(optimizer.param_groups)]
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["initial_lr"], group["lr"] = base_lr, base_lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
        if ema:
            ema.policy.load_state_dict(ckpt["ema"] or ckpt["policy"])
        restore_rng_state(ckpt["rng"])
        start_iter, best_success = ckpt["iteration"], ckpt["best_success"]
        _drop_metrics_after(run.logger, start_iter)
        print(f"[resume] from {cfg.resume} at iteration {start_iter}, lr {scheduler.get_last_lr()[0]:.2e}")

    eval_policy = ema.policy if ema else policy
    train_step = torch.compile(policy) if cfg.compile else policy
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    loader = make_train_loader(data.train_set, cfg.batch_size, cfg.seed, cfg.num_workers, start_iter)
    env = None
    running = {"loss": 0.0, "l1": 0.0, "kl": 0.0}
    window_start, window_iters = time.time(), 0
    last_eval = {}

    def save(name: str, iteration: int):
        # Never let a diverged model overwrite the last good checkpoint (NaN can appear between log steps).
        if not all(torch.isfinite(p).all() for p in policy.parameters()):
            raise TrainingDiverged(f"non-finite weights at iteration {iteration}; not saving {name}. The last good "
                                   f"checkpoint is {run.ckpt_dir / 'last.pt'}. Try a lower lr or grad_clip.")
        save_checkpoint(run.ckpt_dir / name,
                        _checkpoint_payload(cfg, run, policy, ema, optimizer, scheduler, iteration, data, best_success))

    bar = tqdm(range(start_iter, cfg.total_iters), initial=start_iter, total=cfg.total_iters, desc="train",
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)
    for iteration, batch in zip(bar, loader):
        policy.train()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            losses = train_step(batch)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        if ema:
            ema.update(policy)
        for key in running:
            running[key] += losses[key].detach()  # stays on the device: no sync per step
        window_iters += 1
        step = iteration + 1

        if step % cfg.log_frequency == 0 or step == cfg.total_iters:
            means = {f"train/{k}": float(v) / window_iters for k, v in running.items()}
            if not all(math.isfinite(v) for v in means.values()):
                raise TrainingDiverged(
                    f"non-finite training loss at iteration {step} ({means}); stopping. The last good "
                    f"checkpoint is {run.ckpt_dir / 'last.pt'}. Try a lower lr or grad_clip.")
            speed = window_iters / (time.time() - window_start)
            means.update({"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm),
                          "train/iters_per_s": speed})
            run.logger.log(means, step)
            bar.set_postfix(loss=f"{means['train/loss']:.4f}", l1=f"{means['train/l1']:.4f}",
                            lr=f"{means['train/lr']:.1e}", it_s=f"{speed:.1f}")
            running = {k: 0.0 for k in running}
            window_start, window_iters = time.time(), 0

        if data.val_set is not None and (step % cfg.val_frequency == 0 or step == cfg.total_iters):
            val = validate(eval_policy, data.val_set, cfg.batch_size, device)
            run.logger.log(val, step)
            bar.write(f"[val @ {step}] l1 {val['val/l1']:.4f}  kl {val['val/kl']:.4f}")

        if cfg.num_eval_episodes > 0 and (step % cfg.eval_frequency == 0 or step == cfg.total_iters):
            if env is None:
                env = make_env(cfg.num_eval_envs)
            last_eval = run_simulator_eval(cfg, run, eval_policy, env, step, prefix=f"iter{step:07d}_")
            if last_eval["eval/success_once"] > best_success:
                best_success = last_eval["eval/success_once"]
                save("best.pt", step)

        if step % cfg.save_frequency == 0 or step == cfg.total_iters:
            save(f"iter_{step:07d}.pt", step)
            save("last.pt", step)
            run.logger.plot_curves()
    bar.close()
    if env is not None:
        env.close()
    run.logger.plot_curves()
    run.logger.finish()
    return last_eval


def _drop_metrics_after(logger: RunLogger, iteration: int):
    """A resumed run rewrites history from its checkpoint on: drop rows logged after it."""
    rows = [row for row in logger.read_metrics() if row["iteration"] <= iteration]
    logger.metrics_path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def evaluate_checkpoint(cfg: Config, run: Run, make_env) -> dict:
    """mode=eval: reload a checkpoint and only roll it out (success rate, videos), no training."""
    policy = policy_from_checkpoint(run.checkpoint, run.device)
    env = make_env(cfg.num_eval_envs)
    metrics = run_simulator_eval(cfg, run, policy, env, run.checkpoint["iteration"], prefix="eval_")
    env.close()
    run.logger.finish()
    return metrics
