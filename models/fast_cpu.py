"""CPU fast paths for training ACT: the same maths as the plain layers in models/act.py, in less time.

Nothing here is part of ACT; read models/act.py to learn the model. `ACTPolicy(..., cpu_fast_paths=True)` (the
default) calls `use_cpu_fast_paths` once, which swaps the modules below in for their plain counterparts. Parameter
names do not change, so checkpoints load either way, and tests/test_model.py checks that both versions give the
same outputs and gradients. A policy built while a debugger is attached keeps the plain layers, so breakpoints in
models/act.py are hit; cpu_fast_paths=False (config: model.cpu_fast_paths=false) does so always. The `[model]`
line of a training run names the layers in use.

What each buys (benchmarks/train_throughput.py, state setting, 1 thread, leave-one-out): ClsOnlyEncoder +17%;
MaskDropout +2% and ReluDropoutFeedForward +0.5%, kept because without the two the measured ratio against
LeRobot's ACT fell (1.36x -> 1.26x state, 1.15x -> 1.11x one camera); with them it is unchanged from before this
file existed (1.37x before and after in one session, benchmarks/README.md). The dropout paths act only while
training eagerly on CPU: on CUDA torch's fused dropout kernel is faster, and torch.compile fuses dropout itself.
"""

import sys

import torch
from torch import nn

from models.act import FeedForward, TransformerEncoder


def debugger_attached() -> bool:
    """True under pdb, an IDE's debugger (debugpy, PyCharm) or any other trace function. Python 3.12+ debuggers
    may register through sys.monitoring instead of a trace function."""
    monitoring = getattr(sys, "monitoring", None)
    registered = monitoring is not None and monitoring.get_tool(monitoring.DEBUGGER_ID) is not None
    return sys.gettrace() is not None or registered


def eager_cpu_training(module: nn.Module, x: torch.Tensor) -> bool:
    return module.training and not x.is_cuda and not torch.compiler.is_compiling()


def dropout_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Bool tensor shaped like x, True with probability 1 - p: 31-bit random integers against round(p * 2^31).
    The keep probability is exact to 5e-10, and on CPU it costs a third of torch's bernoulli_."""
    return torch.empty_like(x, dtype=torch.int32).random_() >= round(p * 2**31)


def apply_keep_mask(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """x * keep / (1 - p). The mask goes in as uint8 (bool operands take a slow type-promotion path), which is
    also what autograd keeps for backward: 1 byte per element."""
    return x.mul(keep.view(torch.uint8)).mul_(1.0 / (1.0 - p))


class MaskDropout(nn.Dropout):
    """nn.Dropout with the cheaper keep mask above."""

    def forward(self, x):
        if self.p == 0 or not eager_cpu_training(self, x):
            return super().forward(x)
        return apply_keep_mask(x, dropout_keep_mask(x, self.p), self.p)


class ReluDropoutFeedForward(nn.Sequential):
    """act.FeedForward (same children, so the same checkpoint keys) with ReLU and dropout as one multiplication
    by a 1-byte mask that is 0 where the hidden unit is <= 0 or dropped. Same values and gradients, but autograd
    keeps only that mask for backward instead of also the 4-byte ReLU output, and the activation takes fewer
    passes over memory."""

    def forward(self, x):
        linear1, _, dropout, linear2 = self
        if dropout.p == 0 or not eager_cpu_training(self, x):
            return super().forward(x)
        hidden = linear1(x)  # (..., F)
        keep = dropout_keep_mask(hidden, dropout.p)
        keep &= hidden > 0
        return linear2(apply_keep_mask(hidden, keep, dropout.p))  # (..., D)


class ClsOnlyEncoder(nn.Module):
    """The style encoder when only the [CLS] output is read: its last layer computes the output of the first
    token alone (every token is still a key and value), skipping K+1 tokens' queries and feed-forward.
    Returns (B, 1, D) where act.TransformerEncoder returns (B, T, D). Holds the same `layers`."""

    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers

    def forward(self, x, pos, key_padding_mask=None):
        *layers, last = self.layers
        for layer in layers:
            x = layer(x, pos, key_padding_mask)
        # act.EncoderLayer.forward with the queries and the residual cut to the first token.
        keys = x + pos
        cls = x[:, :1]  # (B, 1, D)
        cls = last.norm1(cls + last.dropout1(last.self_attn(keys[:, :1], keys, x, key_padding_mask)))
        return last.norm2(cls + last.dropout2(last.feedforward(cls)))


def use_cpu_fast_paths(model: nn.Module) -> None:
    """Swap the modules above into an act.ACT, in place."""
    if isinstance(getattr(model, "style_encoder", None), TransformerEncoder):
        model.style_encoder = ClsOnlyEncoder(model.style_encoder.layers)
    _swap(model, nn.Dropout, lambda plain: MaskDropout(plain.p))
    _swap(model, FeedForward, lambda plain: ReluDropoutFeedForward(*plain))


def _swap(model: nn.Module, plain_type: type, make_fast) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is plain_type:
                setattr(parent, name, make_fast(child))
