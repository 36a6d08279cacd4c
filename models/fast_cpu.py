"""Fast paths for training ACT on CPU: the same maths as the plain layers in models/act.py, in less time.

Nothing here is part of ACT; read models/act.py to learn the model. `ACTPolicy(..., cpu_fast_paths=True)` (the
default) calls `use_cpu_fast_paths` once, which swaps the modules below in for their plain counterparts. Parameter
names do not change, so checkpoints load either way, and tests/test_model.py checks that both versions give the
same outputs and gradients. Pass cpu_fast_paths=False to step through the plain layers alone.

Only paths that buy at least 5% of a training step live here (benchmarks/train_throughput.py, 1 thread):
  * ClsOnlyEncoder: +17% in the state-only setting (its style encoder is the largest block), less with cameras.
Tried and removed, under 5%: a dropout mask from 31-bit random integers (+2%), ReLU and dropout as one
multiplication in the feed-forward block (+0.5%), one GEMM for the shared query/key input of self-attention (-2%).
"""

from torch import nn

from models.act import TransformerEncoder


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
