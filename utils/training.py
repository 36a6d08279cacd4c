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
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from datasets.replay_buffer import ChunkDataset, compute_stats, iterate_in_order, make_train_loader, split_episodes
from env.errors import UserInputError
from models.act import ACT
from models.policy import ACTPolicy
from utils.allocator import reuse_freed_memory
from utils.checkpoint import (check_room_for_checkpoints, check_writable, claim_run_folder, prune_checkpoints,
                              restore_rng_state, rng_state, save_checkpoint)
from utils.config import Config, repo_path
from utils.distributed import Distributed, all_gather, all_sum, broadcast, shutdown_distributed
from utils.evaluation import evaluate_policy, summarize
from utils.logger import NullLogger, RunLogger


# --------------------------------------------------------------------------------------------------
# Run set-up
# --------------------------------------------------------------------------------------------------
def select_device(name: str, distributed: Distributed) -> torch.device:
    """auto: CUDA when available (under torchrun each process its own GPU, cuda:LOCAL_RANK), else the CPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"device='{name}' was asked for but CUDA is not available; use device=auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", distributed.local_rank) if name in ("auto", "cuda") else torch.device(name)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    name: str
    ckpt_dir: Path
    video_dir: Path | None  # None: no simulator, no videos
    device: torch.device
    logger: RunLogger | NullLogger
    checkpoint: dict | None  # the checkpoint being resumed or evaluated, if any
    started: float  # time.time() at start-up: eval rows log the wall time since then as time/elapsed_s
    distributed: Distributed  # rank and world size under torchrun; rank 0 of 1 otherwise

    def finish(self):
        self.logger.finish()
        shutdown_distributed()


def start_run(cfg: Config, checkpoint: dict | None, distributed: Distributed = Distributed(),
              task: str | None = None) -> Run:
    """Seed, pick the device, name the run and open its folders and logger.

    `checkpoint` (from parse_args) is the one being resumed or evaluated. Resuming continues its run (same
    name and folders, same W&B run); evaluation-only gets a fresh run named after the evaluated one. A new
    run's folder is created exclusively (claim_run_folder): runs started in the same second never share one.
    ckpt_dir (and video_dir, when videos will be written) must be writable before any work starts.
    Under torchrun (`distributed` from utils.distributed.init_distributed) only rank 0 writes.
    task: the run name's middle part, cfg.env_id unless given (a dataset run has no simulator task). A config
    without video_dir (no simulator) gets no video folder.
    """
    started = time.time()
    if distributed.enabled and cfg.batch_size % distributed.world_size:
        raise UserInputError(f"batch_size={cfg.batch_size} is the global batch and must divide by the "
                             f"{distributed.world_size} processes; e.g. batch_size="
                             f"{cfg.batch_size // distributed.world_size * distributed.world_size}")
    seed_everything(cfg.seed + distributed.rank)  # different dropout draws per rank; DDP syncs the weights
    device = select_device(cfg.device, distributed)
    ckpt_root = repo_path(cfg.ckpt_dir)
    video_root = repo_path(cfg.video_dir) if "video_dir" in cfg else None
    name = None
    if distributed.is_main:
        check_writable(ckpt_root, "ckpt_dir")
        if video_root and cfg.capture_video and cfg.num_eval_episodes > 0 and cfg.num_video_episodes > 0:
            check_writable(video_root, "video_dir")
        if cfg.mode == "train" and checkpoint is not None:
            name = checkpoint["run_name"]
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            base = (f"{checkpoint['run_name']}-eval-{stamp}" if cfg.mode == "eval"
                    else f"{cfg.exp_name}-{task or cfg.env_id}-{cfg.seed}-{stamp}")
            name = claim_run_folder(ckpt_root, video_root, base)
    name = broadcast(name)  # rank 0 names the run
    ckpt_dir = ckpt_root / name
    video_dir = video_root / name if video_root else None
    if not distributed.is_main:
        return Run(name, ckpt_dir, video_dir, device, NullLogger(), checkpoint, started, distributed)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    (ckpt_dir / "run_info.json").write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                                         "processes": distributed.world_size,
                                                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    wandb_id = checkpoint.get("wandb_id") if checkpoint and cfg.mode == "train" else None
    logger = RunLogger(ckpt_dir, name, cfg.to_dict(), cfg.wandb, wandb_id)
    processes = f" x {distributed.world_size} processes (torchrun)" if distributed.enabled else ""
    print(f"[run] {name} on {device}{processes}\n      checkpoints, metrics, curves: {ckpt_dir}"
          + (f"\n      videos: {video_dir}" if video_dir else ""))
    return Run(name, ckpt_dir, video_dir, device, logger, checkpoint, started, distributed)


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
    }
    print(f"[data] {len(train_ids)} training / {len(val_ids)} validation episodes, "
          f"{sum(len(e['actions']) for e in train_eps)} training samples, action type '{action_type}'")
    train_set = ChunkDataset(train_eps, cfg.model.chunk_size, action_type, cfg.frame_stack)
    val_set = (ChunkDataset([episodes[i] for i in val_ids], cfg.model.chunk_size, action_type, cfg.frame_stack)
               if val_ids else None)
    stats = compute_stats(train_eps, cfg.action_normalization)
    return TrainingData(train_set, val_set, stats, shape_meta, train_ids, val_ids)


def build_policy(cfg: Config, shape_meta: dict, stats: dict, checkpoint: dict | None = None) -> ACTPolicy:
    """ACT sized by cfg.model; stacked frames enter as a longer state vector and extra camera images.

    With a checkpoint (resume, eval) the backbone is built as the checkpoint records it (frozen or trainable
    BatchNorm), not by whether ImageNet weights happen to be available on this machine: the saved weights
    replace the initial ones anyway, and a different layer type would not load.
    """
    m, frames = cfg.model, cfg.frame_stack
    frozen_batchnorm = checkpoint["shape_meta"].get("frozen_batchnorm") if checkpoint else None
    model = ACT(
        state_dim=shape_meta["state_dim"] * frames, action_dim=shape_meta["action_dim"],
        num_cameras=shape_meta["num_cameras"] * frames, image_channels=shape_meta["image_channels"],
        chunk_size=m.chunk_size, d_model=m.d_model, nhead=m.nhead, dim_feedforward=m.dim_feedforward,
        num_encoder_layers=m.num_encoder_layers, num_decoder_layers=m.num_decoder_layers,
        num_style_encoder_layers=m.num_style_encoder_layers, dropout=m.dropout, latent_dim=m.latent_dim,
        use_cvae=m.use_cvae, pretrained_backbone=m.pretrained_backbone and checkpoint is None,
        pretrained_weights_path=m.pretrained_weights_path, frozen_batchnorm=frozen_batchnorm,
        backbone_stages=m.backbone_stages,
    )
    policy = ACTPolicy(model, stats, m.kl_weight, cpu_fast_paths=m.cpu_fast_paths, random_shift=m.random_shift)
    print(f"[model] ACT with {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M parameters; "
          f"{layers_in_use(policy, m)}")
    return policy


def layers_in_use(policy: ACTPolicy, m: Config) -> str:
    """Which code runs the model, and how to switch: a breakpoint in layers that are not running is never hit."""
    if policy.cpu_fast_paths:
        return ("layers: models/fast_cpu.py's fast CPU versions of the style encoder, dropout and feed-forward "
                "blocks (same maths as models/act.py). To step through act.py's plain layers instead: start under a "
                "debugger, or model.cpu_fast_paths=false")
    if m.cpu_fast_paths:
        return ("layers: models/act.py's plain layers, because a debugger is attached (without one, "
                "models/fast_cpu.py's faster versions of the same maths run)")
    return "layers: models/act.py's plain layers (model.cpu_fast_paths=false; true runs models/fast_cpu.py's faster ones)"


def load_weights(policy: ACTPolicy, state_dict: dict, source: str):
    """Checkpoint weights into a policy built from the config; a mismatch is a config mistake, said as one."""
    camera_embed = policy.state_dict().get("model.camera_embed.weight")
    if camera_embed is not None and "model.camera_embed.weight" not in state_dict:
        # Saved before cameras had an embedding of their own: the model ran as if it were zero.
        state_dict = {**state_dict, "model.camera_embed.weight": torch.zeros_like(camera_embed)}
    try:
        policy.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise UserInputError(f"{source}: its weights do not fit the model the config describes (was a model.* "
                             f"key overridden?): {str(exc).splitlines()[1].strip()}") from None


def policy_from_checkpoint(cfg: Config, checkpoint: dict, device, source: str = "checkpoint") -> ACTPolicy:
    """Rebuild the policy exactly as it was saved (cfg: its own config, from parse_args), weights and
    normalisation included."""
    meta = checkpoint["shape_meta"]
    # Placeholder statistics of the right size; the real ones are buffers in the saved state dict.
    placeholder = {"state_mean": np.zeros(meta["state_dim"]), "state_std": np.ones(meta["state_dim"]),
                   "action_mean": np.zeros(meta["action_dim"]), "action_std": np.ones(meta["action_dim"])}
    policy = build_policy(cfg, meta, placeholder, checkpoint)
    load_weights(policy, checkpoint["ema"] or checkpoint["policy"], source)
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


def build_scheduler(cfg: Config, optimizer, start_iter: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over warmup_iters, then constant or cosine decay to zero at total_iters.

    The schedule is a pure function of the iteration, so a resumed run rebuilds it at `start_iter` from the
    config (an `lr=` override on resume simply takes effect) instead of restoring the scheduler's state.
    """

    def factor(iteration: int) -> float:
        if iteration < cfg.warmup_iters:
            return (iteration + 1) / cfg.warmup_iters
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (iteration - cfg.warmup_iters) / max(1, cfg.total_iters - cfg.warmup_iters)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    for group, base_lr in zip(optimizer.param_groups, (cfg.lr, cfg.lr_backbone)):
        group["initial_lr"] = base_lr  # what LambdaLR scales; it expects it when not starting at 0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start_iter - 1)


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


def kl_weight_at(cfg: Config, iteration: int) -> float:
    """model.kl_weight, ramped up linearly from 0 over the first kl_warmup_iters iterations when that is > 0, so
    that the style encoder learns to put the chunk into z before the KL term pulls z towards the prior."""
    if iteration >= cfg.kl_warmup_iters:
        return cfg.model.kl_weight
    return cfg.model.kl_weight * iteration / cfg.kl_warmup_iters


class TrainingDiverged(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# Validation, simulator evaluation, checkpoints
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(policy: ACTPolicy, dataset: ChunkDataset, batch_size: int, device,
             distributed: Distributed = Distributed()) -> dict:
    """Loss on every held-out sample, eval mode (no dropout). Two L1 figures:

    val/l1            the deployed policy: z = 0, as in a rollout. The figure to watch; best.pt follows it
                      when the run does not evaluate in the simulator.
    val/l1_posterior  z = the posterior mean, computed from the target chunk itself: how well the CVAE
                      reconstructs, not how well the policy acts. Reported beside val/kl.
    Under torchrun each rank takes a share of the samples and the sums are added up over ranks.
    """
    policy.eval()
    totals, count = {"l1": 0.0, "l1_posterior": 0.0, "kl": 0.0}, 0
    for batch in iterate_in_order(dataset, batch_size, distributed.rank, distributed.world_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        posterior = policy(batch)
        size = len(batch["actions"])
        totals["l1"] += policy.deployed_l1(batch).item() * size
        totals["l1_posterior"] += posterior["l1"].item() * size
        totals["kl"] += posterior["kl"].item() * size
        count += size
    *sums, count = all_sum([*totals.values(), count], device)
    return {f"val/{k}": total / count for k, total in zip(totals, sums)}


KL_COLLAPSED = 0.01  # nats, summed over z's dimensions: below this z tells the decoder next to nothing


def posterior_collapse_note(step: int, metrics: dict) -> str:
    return (f"[val @ {step}] posterior collapse: val/kl {metrics['val/kl']:.4f} < {KL_COLLAPSED} nats, so z carries "
            f"(next to) nothing about the chunk and the deployed L1 ({metrics['val/l1']:.4f}, z = 0) equals the "
            f"posterior L1 ({metrics['val/l1_posterior']:.4f}). The CVAE has become a deterministic chunk regressor: "
            f"fine for demos with one way of doing each step, unable to choose between several. To keep z in use: "
            f"kl_warmup_iters=<iterations> or a lower model.kl_weight. (Said once per run.)")


def run_simulator_eval(cfg, run, policy, env, iteration: int, prefix: str) -> dict:
    """Roll the policy out, log success metrics and videos, return the metrics.

    The random state is put back afterwards: rollouts (and building the simulator on first use) must not
    shift the training run's random stream, or a resumed run, which builds its simulator later, would differ.
    """
    started, saved_rng = time.time(), rng_state()
    result = evaluate_policy(policy, env, cfg.num_eval_episodes, cfg.eval_seed, frame_stack=cfg.frame_stack,
                             temporal_ensemble=cfg.temporal_ensemble, ensemble_k=cfg.ensemble_k,
                             query_frequency=cfg.query_frequency,
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
          f"{summary['success_at_end']:.1%}  return {summary['return']:.2f}  over {summary['num_episodes']} episodes "
          f"({metrics['eval/seconds']:.0f}s)" + (f"; videos in {run.video_dir}" if result["videos"] else ""))
    return metrics


def save_training_checkpoint(path: Path, cfg: Config, run: Run, data: TrainingData, policy: ACTPolicy, ema: EMA | None,
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


def restore_training_state(cfg, run, policy, ema, optimizer, best_metric: str) -> tuple[int, float]:
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


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------
def optimization_step(cfg: Config, policy: ACTPolicy, training_policy, optimizer, scheduler, autocast, batch: dict,
                      iteration: int) -> tuple[dict, torch.Tensor]:
    """One step of train() on a batch already on the device: forward through training_policy (the policy, or its
    DDP / compiled wrapper), backward, gradient clipping, AdamW, the lr schedule. Returns (losses, grad norm)."""
    policy.train()
    with autocast:
        losses = training_policy(batch, kl_weight=torch.tensor(kl_weight_at(cfg, iteration)))
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    return losses, grad_norm


def train(cfg: Config, run: Run, policy: ACTPolicy, data: TrainingData, make_env) -> dict:
    """Train, and return the last validation and simulator metrics. `make_env(num_envs)` builds the
    simulator adapter used for evaluation.

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
    best_metric = "eval/success_once" if cfg.num_eval_episodes > 0 else "val/l1"
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
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")

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
        evaluated = cfg.num_eval_episodes > 0 and (step % cfg.eval_frequency == 0 or last)
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


def evaluate_checkpoint(cfg: Config, run: Run, make_env) -> dict:
    """mode=eval: reload a checkpoint and only roll it out (success rate, videos), no training."""
    if cfg.num_eval_episodes == 0:
        raise UserInputError("mode=eval needs num_eval_episodes >= 1")
    policy = policy_from_checkpoint(cfg, run.checkpoint, run.device, cfg.checkpoint)
    env = make_env(cfg.num_eval_envs)
    metrics = run_simulator_eval(cfg, run, policy, env, run.checkpoint["iteration"], prefix="eval_")
    env.close()
    run.finish()
    return metrics
