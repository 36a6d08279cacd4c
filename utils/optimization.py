"""One optimisation step and what it needs: AdamW with its parameter groups, the learning-rate schedule, the KL
weight's warm-up, the EMA of the weights and the autocast context (`make_autocast`, the one place that decides
mixed precision)."""

import contextlib
import copy
import math

import torch

from env.errors import RunStopped, UserInputError
from models.policy import ACTPolicy
from utils.cpu_features import cpu_bf16_units
from utils.schema import RunConfig


def build_optimizer(cfg: RunConfig, policy: ACTPolicy) -> torch.optim.Optimizer:
    backbone = [p for n, p in policy.named_parameters() if n.startswith("model.backbone") and p.requires_grad]
    others = [p for n, p in policy.named_parameters() if not n.startswith("model.backbone") and p.requires_grad]
    groups = [{"params": others, "lr": cfg.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr_backbone})
    # fused: one kernel for the whole update (benchmarks/README.md: +6-14% samples/s on CPU).
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=True)


def build_scheduler(cfg: RunConfig, optimizer, start_iter: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
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


def kl_weight_at(cfg: RunConfig, iteration: int) -> float:
    """model.kl_weight, ramped up linearly from 0 over the first kl_warmup_iters iterations when that is > 0, so
    that the style encoder learns to put the chunk into z before the KL term pulls z towards the prior."""
    if iteration >= cfg.kl_warmup_iters:
        return cfg.model.kl_weight
    return cfg.model.kl_weight * iteration / cfg.kl_warmup_iters


class TrainingDiverged(RunStopped):
    """Non-finite losses or weights: the run ends in one line naming the iteration and the last good checkpoint."""


def make_autocast(cfg: RunConfig, device: torch.device) -> tuple[contextlib.AbstractContextManager, str]:
    """(the context the training step's forward pass runs in, one line saying which precision and why).

    precision=auto: bf16 autocast on a CPU with bf16 matrix units, where it halves a camera policy's step time and
    learned as well as fp32 (benchmarks/RESULTS.md, "bf16 on CPU"); fp32 on CUDA, where bf16 measured no faster on an
    H200, and on other CPUs. Under autocast the weights, gradients, optimiser state and losses stay fp32; matrix
    products and convolutions run in bf16. Validation, evaluation and deployment always run in fp32.
    """
    units = cpu_bf16_units() if device.type == "cpu" else []
    if cfg.precision == "auto":
        use_bf16 = bool(units)
        reason = (f"precision=auto, this CPU has {' and '.join(units)}" if units else
                  "precision=auto on CUDA" if device.type == "cuda" else "precision=auto, this CPU has no bf16 units")
    else:
        use_bf16, reason = cfg.precision == "bf16", f"precision={cfg.precision}"
        if use_bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserInputError(f"precision=bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                                 f"use precision=fp32")
        if use_bf16 and device.type == "cpu" and not units:
            reason += ("; this CPU has no bf16 matrix units: bf16 is emulated, 20x slower than fp32 for the rgb CPU "
                       "config's step on an AVX2-only CPU")
    if not use_bf16:
        return contextlib.nullcontext(), f"fp32 ({reason})"
    return torch.autocast(device.type, dtype=torch.bfloat16), f"bf16 autocast ({reason}; precision=fp32 to turn off)"


def optimization_step(cfg: RunConfig, policy: ACTPolicy, training_policy, optimizer, scheduler, autocast, batch: dict,
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
