"""ACT: Action Chunking with Transformers (Zhao et al. 2023, arXiv 2304.13705), written to be read.

The model is a conditional VAE over action chunks. Data flow, token counts on the right:

  STYLE ENCODER (training only: the posterior q(z | proprio, chunk))
      [CLS] [proprio] [a_1] ... [a_K]                     K+2 tokens (Linear projections), 1D sine positions
                          |  TransformerEncoder, padded actions masked out
      output at [CLS] --Linear--> mu, logvar  -->  z = mu + sigma * eps      (inference: z = 0, the prior's mean)

  ENCODER
      [z] [proprio] [camera 1: h*w tokens] ... [camera N]    2 + N*h*w tokens, learned positions for [z] and
                     ^ images --ResNet18--> feature maps      [proprio]; feature maps: 2D sine positions plus a
                                                              learned embedding per camera (and stacked frame)
                          |  TransformerEncoder
                       memory                                  2 + N*h*w tokens

  DECODER
      action queries q_1 ... q_K (learned) --TransformerDecoder, cross-attending to memory-->  K tokens
                          |  Linear
      predicted chunk a_1 ... a_K

Vocabulary:
    chunk            the K = chunk_size future actions predicted at once from one observation.
    proprio          proprioception: the robot's own state (joint positions etc.), one token.
    style variable z the CVAE latent. In training it is inferred from the demonstrated chunk and captures
                     what the observation alone does not fix (e.g. how fast a demonstrator moved); at test time
                     it is 0, so the policy is deterministic.
    [CLS]            a learned token prepended to the style encoder's input; its output summarises the chunk.
    is_pad           True for chunk steps past the end of the episode: masked out of the style encoder's
                     attention and zeroed in the L1 loss.
    action queries   K learned embeddings, one per future step, that ask the decoder "what is action i?".
    memory           the encoder's output tokens, which the decoder attends to.
    temporal ensembling  (models/policy.py, at execution) averaging every chunk predicted so far that covers
                     the current step, with exponential weights, instead of playing one chunk open-loop.

The layers below are the plain maths. models/fast_cpu.py holds the speed-ups that change how, not what, is
computed (the style encoder's last layer computing the [CLS] output alone, a cheaper dropout mask, ReLU and
dropout as one multiplication); ACTPolicy's cpu_fast_paths switches them in or out.

Shape legend used in the comments:
    B  batch size             K  chunk_size (number of predicted future actions)
    S  proprioception size    A  action size
    N  number of cameras (x stacked frames)                 C  image channels (3 for RGB, 4 with depth)
    H, W  image size          h, w  backbone feature map size (H/32, W/32; H/16, W/16 with 3 stages)
    D  d_model                L  latent (style variable) size
    T  number of tokens       F  dim_feedforward
"""

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_HUB_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1


# --------------------------------------------------------------------------------------------------
# Position embeddings
# --------------------------------------------------------------------------------------------------
def sine_embedding_1d(length: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal embedding of positions 0..length-1 (Vaswani et al.). Returns (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


def sine_embedding_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR-style 2D sine embedding of a (height, width) feature map. Returns (height * width, dim).

    Half of the channels encode the row, half the column; coordinates are normalised to (0, 2*pi] so
    the embedding does not depend on the image resolution.
    """
    assert dim % 4 == 0, "d_model must be divisible by 4 for the 2D sine embedding"
    half = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    rows = torch.arange(1, height + 1, dtype=torch.float32) / (height + eps) * scale  # (h,)
    cols = torch.arange(1, width + 1, dtype=torch.float32) / (width + eps) * scale  # (w,)
    dim_t = temperature ** (2 * (torch.arange(half) // 2) / half)  # (D/2,)
    row_embed = rows[:, None] / dim_t  # (h, D/2)
    col_embed = cols[:, None] / dim_t  # (w, D/2)
    # Interleave sin on even channels and cos on odd channels.
    row_embed = torch.stack((row_embed[:, 0::2].sin(), row_embed[:, 1::2].cos()), dim=2).flatten(1)
    col_embed = torch.stack((col_embed[:, 0::2].sin(), col_embed[:, 1::2].cos()), dim=2).flatten(1)
    grid = torch.cat(
        (row_embed[:, None, :].expand(height, width, half), col_embed[None, :, :].expand(height, width, half)),
        dim=2,
    )  # (h, w, D)
    return grid.reshape(height * width, dim)


# --------------------------------------------------------------------------------------------------
# Transformer layers (post-norm, DETR/ACT style: position embeddings are added to queries and keys in
# every layer rather than once to the input, so the values stay free of position information)
# --------------------------------------------------------------------------------------------------
class FeedForward(nn.Sequential):
    """Linear -> ReLU -> Dropout -> Linear on (..., D) tensors, through a hidden size F = dim_feedforward."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float):
        super().__init__(nn.Linear(d_model, dim_feedforward), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(dim_feedforward, d_model))


class Attention(nn.Module):
    """Multi-head attention, softmax(Q K^T / sqrt(D/nhead)) V in each head, then an output projection.

    The maths, initialisation and parameter names of nn.MultiheadAttention (checkpoints load either way), but on
    batch-first tensors without its (B, T, D) <-> (T, B, D) copies: heads are strided views handed to
    scaled_dot_product_attention.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float):
        super().__init__()
        self.nhead, self.dropout = nhead, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))  # rows: W_q, W_k, W_v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, key_padding_mask=None):
        # query: (B, Tq, D); key, value: (B, Tk, D); key_padding_mask: (B, Tk) with True = ignore that token
        # chunk rather than slicing: its backward is one concatenation, where each slice's backward would
        # write into its own zero-filled copy of the whole (3D, D) weight.
        weight_q, weight_k, weight_v = self.in_proj_weight.chunk(3)
        bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, weight_q, bias_q)  # (B, Tq, D)
        k = F.linear(key, weight_k, bias_k)  # (B, Tk, D)
        v = F.linear(value, weight_v, bias_v)  # (B, Tk, D)
        q, k, v = (t.unflatten(-1, (self.nhead, -1)).transpose(1, 2) for t in (q, k, v))  # (B, nhead, T, D/nhead)
        attend = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nhead, Tq, D/nhead)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, Tq, D)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, nhead, dropout)
        self.feedforward = FeedForward(d_model, dim_feedforward, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x, pos, key_padding_mask=None):
        # x, pos: (B, T, D); key_padding_mask: (B, T) with True = ignore that token
        q = k = x + pos
        x = self.norm1(x + self.dropout1(self.self_attn(q, k, x, key_padding_mask)))
        return self.norm2(x + self.dropout2(self.feedforward(x)))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, nhead, dropout)
        self.cross_attn = Attention(d_model, nhead, dropout)
        self.feedforward = FeedForward(d_model, dim_feedforward, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x, query_pos, memory, memory_pos):
        # x, query_pos: (B, K, D); memory, memory_pos: (B, T, D)
        q = k = x + query_pos
        x = self.norm1(x + self.dropout1(self.self_attn(q, k, x)))
        attended = self.cross_attn(x + query_pos, memory + memory_pos, memory)
        x = self.norm2(x + self.dropout2(attended))
        return self.norm3(x + self.dropout3(self.feedforward(x)))


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers, d_model, nhead, dim_feedforward, dropout):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers))

    def forward(self, x, pos, key_padding_mask=None):
        for layer in self.layers:
            x = layer(x, pos, key_padding_mask)
        return x


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers, d_model, nhead, dim_feedforward, dropout):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x, query_pos, memory, memory_pos):
        for layer in self.layers:
            x = layer(x, query_pos, memory, memory_pos)
        return self.norm(x)


# --------------------------------------------------------------------------------------------------
# Visual backbone
# --------------------------------------------------------------------------------------------------
def load_imagenet_resnet18_weights(weights_path: str | None) -> dict | None:
    """ImageNet ResNet18 weights: a configured file, else torchvision's cache/download; None if neither works."""
    if weights_path:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"model.pretrained_weights_path: no file at '{weights_path}'")
        return torch.load(weights_path, map_location="cpu", weights_only=True)
    try:
        # Looks in ~/.cache/torch/hub/checkpoints first and downloads only when the file is missing.
        return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:  # no network, hub blocked, corrupt download ...
        cache = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_HUB_FILE
        warnings.warn(
            "\n" + "!" * 100 + "\n"
            f"  ImageNet ResNet18 weights could not be loaded ({type(exc).__name__}: {exc}).\n"
            "  The visual backbone starts from RANDOM initialisation, which learns much more slowly.\n"
            f"  Fix: put resnet18-f37072fd.pth at {cache} or set model.pretrained_weights_path.\n" + "!" * 100,
            stacklevel=2,
        )
        return None


class ResNet18Backbone(nn.Module):
    """ResNet18 trunk without avgpool/fc: (B, C, H, W) uint8-range floats -> (B, 512, H/32, W/32).

    stages=3 stops after layer3: (B, 256, H/16, W/16), a feature grid twice as fine in each direction (and fewer
    FLOPs) for small images, where the full trunk leaves a 2x2 grid that cannot say where a small object is;
    stages=2 after layer2: (B, 128, H/8, W/8), finer again, four times the image tokens of stages=3.
    """

    def __init__(self, in_channels: int, pretrained: bool, weights_path: str | None = None,
                 frozen_batchnorm: bool | None = None, stages: int = 4):
        super().__init__()
        if stages not in (2, 3, 4):
            raise ValueError(f"model.backbone_stages must be 2, 3 or 4, got {stages!r}")
        state_dict = load_imagenet_resnet18_weights(weights_path) if pretrained else None
        # Pretrained weights come with ImageNet batch statistics worth keeping fixed (small, correlated
        # batches would wreck them); a randomly initialised trunk needs ordinary BatchNorm to train.
        # frozen_batchnorm=None picks by that rule; a checkpoint being reloaded states what it used.
        self.frozen_batchnorm = state_dict is not None if frozen_batchnorm is None else frozen_batchnorm
        norm_layer = FrozenBatchNorm2d if self.frozen_batchnorm else nn.BatchNorm2d
        resnet = torchvision.models.resnet18(weights=None, norm_layer=norm_layer)
        if state_dict is not None:
            resnet.load_state_dict(state_dict)
        if in_channels != 3:
            # Extra (depth) channel: keep the RGB filters, initialise the new channel with their mean.
            rgb_filters = resnet.conv1.weight.data
            resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            resnet.conv1.weight.data[:, :3] = rgb_filters
            resnet.conv1.weight.data[:, 3:] = rgb_filters.mean(dim=1, keepdim=True)
        # children: conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc
        self.trunk = nn.Sequential(*list(resnet.children())[:4 + stages])
        self.out_channels = 64 * 2 ** (stages - 1)  # layer1..layer4: 64, 128, 256, 512 channels
        mean = list(IMAGENET_MEAN) + [0.5] * (in_channels - 3)
        std = list(IMAGENET_STD) + [0.5] * (in_channels - 3)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = (images / 255.0 - self.pixel_mean) / self.pixel_std  # uint8 range -> ImageNet-normalised
        return self.trunk(images)


# --------------------------------------------------------------------------------------------------
# ACT
# --------------------------------------------------------------------------------------------------
class ACT(nn.Module):
    """The CVAE action-chunking transformer. See the module docstring for the data flow.

    num_cameras counts image inputs per sample: cameras x stacked frames (ACTPolicy folds a frame stack into the
    camera axis, frame-major), each with its own learned embedding.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        num_cameras: int = 0,
        image_channels: int = 3,
        chunk_size: int = 100,
        d_model: int = 512,
        nhead: int = 8,
        dim_feedforward: int = 3200,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 1,
        num_style_encoder_layers: int = 4,
        dropout: float = 0.1,
        latent_dim: int = 32,
        use_cvae: bool = True,
        pretrained_backbone: bool = True,
        pretrained_weights_path: str | None = None,
        frozen_batchnorm: bool | None = None,
        backbone_stages: int = 4,
    ):
        super().__init__()
        self.chunk_size, self.latent_dim, self.use_cvae = chunk_size, latent_dim, use_cvae
        self.num_cameras, self.image_channels = num_cameras, image_channels

        # Style (CVAE) encoder: [CLS, proprio, a_1..a_K] -> (mu, logvar) of the style variable z.
        if use_cvae:
            self.style_cls = nn.Embedding(1, d_model)
            self.style_state_proj = nn.Linear(state_dim, d_model)
            self.style_action_proj = nn.Linear(action_dim, d_model)
            self.style_encoder = TransformerEncoder(num_style_encoder_layers, d_model, nhead, dim_feedforward, dropout)
            self.style_to_latent = nn.Linear(d_model, 2 * latent_dim)
            self.register_buffer("style_pos", sine_embedding_1d(chunk_size + 2, d_model), persistent=False)

        # Observation tokens for the main encoder.
        self.latent_proj = nn.Linear(latent_dim, d_model)
        self.state_proj = nn.Linear(state_dim, d_model)
        self.token_pos = nn.Embedding(2, d_model)  # learned positions of the [z, proprio] tokens
        if num_cameras > 0:
            self.backbone = ResNet18Backbone(image_channels, pretrained_backbone, pretrained_weights_path,
                                             frozen_batchnorm, backbone_stages)
            self.feature_proj = nn.Conv2d(self.backbone.out_channels, d_model, kernel_size=1)
            # Every camera gets the same 2D sine code, and attention is blind to the order of its keys: without an
            # embedding of its own, which camera (or which stacked frame) a token came from would be lost.
            self.camera_embed = nn.Embedding(num_cameras, d_model)

        self.encoder = TransformerEncoder(num_encoder_layers, d_model, nhead, dim_feedforward, dropout)
        self.decoder = TransformerDecoder(num_decoder_layers, d_model, nhead, dim_feedforward, dropout)
        self.action_queries = nn.Embedding(chunk_size, d_model)  # one learned query per future step
        self.action_head = nn.Linear(d_model, action_dim)
        self._reset_transformer_parameters()

    def _reset_transformer_parameters(self):
        """Xavier-uniform for the weight matrices of the main encoder and decoder, as in the original ACT (DETR's
        Transformer) and LeRobot. Everything else keeps PyTorch's defaults: N(0, 1) embeddings (action queries,
        [CLS], token positions), Kaiming-uniform Linear layers (input projections, heads, the style encoder's
        feed-forward), and Attention's own init (Xavier projections, as nn.MultiheadAttention)."""
        for param in [*self.encoder.parameters(), *self.decoder.parameters()]:
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def encode_style(self, state, actions, is_pad):
        """(B, S), (B, K, A), (B, K) -> mu, logvar each (B, L)."""
        batch = state.shape[0]
        cls = self.style_cls.weight.expand(batch, 1, -1)  # (B, 1, D)
        state_token = self.style_state_proj(state)[:, None]  # (B, 1, D)
        action_tokens = self.style_action_proj(actions)  # (B, K, D)
        tokens = torch.cat([cls, state_token, action_tokens], dim=1)  # (B, K+2, D)
        not_padded = torch.zeros(batch, 2, dtype=torch.bool, device=state.device)
        key_padding_mask = torch.cat([not_padded, is_pad], dim=1)  # (B, K+2): padded actions are ignored
        # (B, K+2, D); (B, 1, D), the [CLS] output alone, when models/fast_cpu.py's ClsOnlyEncoder is swapped in
        # (see the [model] log line), which skips the outputs that are never read.
        encoded = self.style_encoder(tokens, self.style_pos[None], key_padding_mask)
        # Only the [CLS] output summarises the chunk.
        mu, logvar = self.style_to_latent(encoded[:, 0]).chunk(2, dim=-1)  # (B, L) each
        return mu, logvar

    def encode_images(self, images):
        """(B, N, C, H, W) -> tokens (B, N*h*w, D) and their positions (1, N*h*w, D)."""
        batch, num_cams = images.shape[:2]
        # All cameras share one backbone pass: (B*N, C, H, W) -> (B*N, 512, h, w) (256 with backbone_stages=3).
        # On CPU this beats a pass per camera at batch 16 and 64 alike, provided freed memory is reused
        # (utils.allocator.reuse_freed_memory): otherwise every activation over 32 MiB is freshly page-faulted each
        # step and large batches lose.
        features = self.feature_proj(self.backbone(images.flatten(0, 1)))  # (B*N, D, h, w)
        _, dim, height, width = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # (B*N, h*w, D)
        tokens = tokens.reshape(batch, num_cams * height * width, dim)  # (B, N*h*w, D)
        # Where in the image (the 2D sine code of the backbone's output grid) plus which camera or frame (learned).
        pos = sine_embedding_2d(height, width, dim).to(tokens)  # (h*w, D)
        pos = pos[None] + self.camera_embed.weight[:, None]  # (N, h*w, D)
        return tokens, pos.flatten(0, 1)[None]  # (1, N*h*w, D)

    def forward(self, state, images=None, actions=None, is_pad=None):
        """Predict an action chunk.

        Args:
            state:   (B, S) normalised proprioception.
            images:  (B, N, C, H, W) float in [0, 255], or None for state-only models.
            actions: (B, K, A) normalised target chunk; given during training/validation, None at inference.
            is_pad:  (B, K) bool, True where the target chunk runs past the end of the episode.
        Returns:
            predicted chunk (B, K, A), and (mu, logvar) each (B, L) or None when no posterior was computed.
        """
        batch = state.shape[0]
        if self.use_cvae and actions is not None:
            mu, logvar = self.encode_style(state, actions, is_pad)
            # Reparameterisation trick while training; the posterior mean for (deterministic) validation.
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        else:
            mu = logvar = None
            z = state.new_zeros(batch, self.latent_dim)  # the prior's mean

        tokens = torch.stack([self.latent_proj(z), self.state_proj(state)], dim=1)  # (B, 2, D)
        pos = self.token_pos.weight[None].expand(batch, -1, -1)  # (B, 2, D)
        if self.num_cameras > 0:
            image_tokens, image_pos = self.encode_images(images)
            tokens = torch.cat([tokens, image_tokens], dim=1)  # (B, 2 + N*h*w, D)
            pos = torch.cat([pos, image_pos.expand(batch, -1, -1)], dim=1)
        memory = self.encoder(tokens, pos)  # (B, T, D)

        # As in DETR/ACT the decoder input is zeros and the queries live in query_pos. A side effect worth
        # knowing: the first decoder layer's self-attention sees the same value (its bias) for every key,
        # so its value weights get no gradient, and its query/key weights only the noise of attention
        # dropout (without dropout every query's output is exactly that bias, projected).
        query_pos = self.action_queries.weight[None].expand(batch, -1, -1)  # (B, K, D)
        decoded = self.decoder(torch.zeros_like(query_pos), query_pos, memory, pos)  # (B, K, D)
        return self.action_head(decoded), (mu, logvar)


def act_loss(pred, target, is_pad, mu, logvar, kl_weight: float):
    """L1 with padded steps zeroed + kl_weight * KL(q(z|x) || N(0, I)).

    pred, target: (B, K, A); is_pad: (B, K); mu, logvar: (B, L) or None.
    """
    # Padded steps add zero but still count in the mean: divided by B*K*A, not by the number of valid elements.
    # The original ACT (tonyzhaozh/act) and LeRobot up to 0.4.4 do the same, and kl_weight = 10 was tuned against
    # this scale; LeRobot's main branch divides by the valid elements since its PR #3442.
    l1 = ((pred - target).abs() * ~is_pad.unsqueeze(-1)).mean()
    if mu is None:
        kl = torch.zeros((), device=pred.device)
    else:
        mu, logvar = mu.float(), logvar.float()  # under bf16 autocast they come out of a bf16 Linear: sum in fp32
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(dim=-1).mean()
    return {"loss": l1 + kl_weight * kl, "l1": l1, "kl": kl}
