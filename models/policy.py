"""ACTPolicy: the ACT network plus everything needed to use it on raw data.

It owns the normalisation statistics (as buffers, so they travel inside every checkpoint), turns raw
batches into the model's normalised inputs, computes the training loss, and turns predicted chunks back
into raw actions. `build_policy` makes one from the config's `model:` section (models/config.py).
`ChunkedActionExecutor` decides which action to execute at each control step.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.act import ACT, act_loss
from models.config import ModelConfig
from models.fast_cpu import debugger_attached, use_cpu_fast_paths


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Training-time augmentation: every image moved by its own random offset of up to +-pad pixels
    (pad the borders by repeating edge pixels, cut a window of the original size at a random corner), as in
    DrQ (Kostrikov et al. 2020). From a few demos a camera policy otherwise memorises exact pixel positions.

    images: (B, N, C, H, W) float -> (B, N, C, H, W), each of the B*N images shifted independently.
    """
    batch, num_cams, channels, height, width = images.shape
    flat = images.flatten(0, 1)  # (B*N, C, H, W)
    padded = F.pad(flat, (pad, pad, pad, pad), mode="replicate")  # (B*N, C, H+2p, W+2p)
    # Crop window of image i: rows top_i .. top_i+H-1, columns left_i .. left_i+W-1 of the padded image,
    # gathered with one index per output row and column.
    top, left = torch.randint(0, 2 * pad + 1, (2, len(flat), 1), device=images.device)  # (B*N, 1) each
    rows = top + torch.arange(height, device=images.device)  # (B*N, H)
    cols = left + torch.arange(width, device=images.device)  # (B*N, W)
    image_index = torch.arange(len(flat), device=images.device)[:, None, None]  # (B*N, 1, 1)
    shifted = padded.permute(0, 2, 3, 1)[image_index, rows[:, :, None], cols[:, None, :]]  # (B*N, H, W, C)
    return shifted.permute(0, 3, 1, 2).reshape(batch, num_cams, channels, height, width)


class ACTPolicy(nn.Module):
    def __init__(self, model: ACT, stats: dict, kl_weight: float, cpu_fast_paths: bool = True,
                 random_shift: int = 0):
        """stats: {"state_mean", "state_std", "action_mean", "action_std"} arrays, from the training data.
        cpu_fast_paths: swap models/fast_cpu.py's faster layers into `model`, in place (same results and parameter
        names), unless a debugger is attached; False keeps the plain layers of models/act.py. self.cpu_fast_paths
        says which happened.
        random_shift: training images are shifted by up to this many pixels (random_shift above); 0 = off."""
        super().__init__()
        self.cpu_fast_paths = cpu_fast_paths and not debugger_attached()
        if self.cpu_fast_paths:
            use_cpu_fast_paths(model)
        self.model = model
        self.kl_weight = kl_weight
        self.random_shift = random_shift
        for name in ("state_mean", "state_std", "action_mean", "action_std"):
            self.register_buffer(name, torch.as_tensor(stats[name], dtype=torch.float32))

    @staticmethod
    def _flatten_frames(state, images):
        """Fold a frame stack into the feature/camera axes: (B, F, S) -> (B, F*S), (B, F, N, ...) -> (B, F*N, ...)."""
        state = state.flatten(1)
        if images is not None:
            images = images.flatten(1, 2).float()  # uint8 -> float in [0, 255]; the backbone normalises
        return state, images

    def normalize_state(self, state):
        return (state - self.state_mean) / self.state_std

    def _model_inputs(self, batch: dict):
        """Raw batch -> normalised (state, images, target chunk (B, K, A))."""
        state, images = self._flatten_frames(self.normalize_state(batch["state"]), batch.get("images"))
        return state, images, (batch["actions"] - self.action_mean) / self.action_std

    def forward(self, batch: dict, kl_weight: torch.Tensor | None = None) -> dict:
        """Training loss of a raw batch from datasets/chunk_dataset.py (z from the style encoder's posterior).
        kl_weight: this step's weight when it follows a schedule (the KL warm-up of utils/optimization.py), else the
        constant."""
        state, images, target = self._model_inputs(batch)
        if self.training and self.random_shift and images is not None:
            images = random_shift(images, self.random_shift)
        pred, (mu, logvar) = self.model(state, images, target, batch["is_pad"])
        return act_loss(pred, target, batch["is_pad"], mu, logvar, self.kl_weight if kl_weight is None else kl_weight)

    @torch.no_grad()
    def deployed_l1(self, batch: dict) -> torch.Tensor:
        """Masked L1 of the chunk the policy predicts at rollout (z = 0; the target is only compared against)."""
        state, images, target = self._model_inputs(batch)
        pred, _ = self.model(state, images)
        return act_loss(pred, target, batch["is_pad"], None, None, self.kl_weight)["l1"]

    @torch.no_grad()
    def predict_chunk(self, state, images=None):
        """Raw observations (B, F, S) [+ (B, F, N, C, H, W) uint8] -> raw action chunk (B, K, A), z = 0."""
        state, images = self._flatten_frames(self.normalize_state(state), images)
        pred, _ = self.model(state, images)
        return pred * self.action_std + self.action_mean


def build_policy(config: ModelConfig, shape_meta: dict, stats: dict, frame_stack: int = 1,
                 saved_meta: dict | None = None) -> ACTPolicy:
    """ACT sized by the model config; stacked frames enter as a longer state vector and extra camera images.

    shape_meta: {"state_dim", "action_dim", "num_cameras", "image_channels"} of one frame, from the data.
    saved_meta: the shape_meta of the checkpoint whose weights will replace the initial ones (resume, eval). Then
    no ImageNet weights are loaded and the backbone's BatchNorm is the type the checkpoint records, not the one the
    availability of ImageNet weights on this machine would give: a different layer type would not load.
    """
    model = ACT(
        state_dim=shape_meta["state_dim"] * frame_stack, action_dim=shape_meta["action_dim"],
        num_cameras=shape_meta["num_cameras"] * frame_stack, image_channels=shape_meta["image_channels"],
        chunk_size=config.chunk_size, d_model=config.d_model, nhead=config.nhead,
        dim_feedforward=config.dim_feedforward, num_encoder_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers, num_style_encoder_layers=config.num_style_encoder_layers,
        dropout=config.dropout, latent_dim=config.latent_dim, use_cvae=config.use_cvae,
        pretrained_backbone=config.pretrained_backbone and saved_meta is None,
        pretrained_weights_path=config.pretrained_weights_path, backbone_stages=config.backbone_stages,
        frozen_batchnorm=saved_meta.get("frozen_batchnorm") if saved_meta else None,
    )
    policy = ACTPolicy(model, stats, config.kl_weight, cpu_fast_paths=config.cpu_fast_paths,
                       random_shift=config.random_shift)
    print(f"[model] ACT with {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M parameters; "
          f"{_layers_in_use(policy, config)}")
    return policy


def _layers_in_use(policy: ACTPolicy, config: ModelConfig) -> str:
    """Which code runs the model, and how to switch: a breakpoint in layers that are not running is never hit."""
    if policy.cpu_fast_paths:
        return ("layers: models/fast_cpu.py's fast CPU versions of the style encoder, dropout and feed-forward "
                "blocks (same maths as models/act.py). To step through act.py's plain layers instead: start under a "
                "debugger, or model.cpu_fast_paths=false")
    if config.cpu_fast_paths:
        return ("layers: models/act.py's plain layers, because a debugger is attached (without one, "
                "models/fast_cpu.py's faster versions of the same maths run)")
    return "layers: models/act.py's plain layers (model.cpu_fast_paths=false; true runs models/fast_cpu.py's faster ones)"


class ChunkedActionExecutor:
    """Turns a stream of predicted chunks into one action per control step, for a batch of environments.

    temporal_ensemble=True: query the policy every step; the action for step t averages every chunk that
        covers t, weighted exp(-k * i) where i = 0 is the OLDEST prediction (as in the ACT paper, so older
        predictions weigh more with k > 0 and the executed actions stay smooth).
    temporal_ensemble=False: open loop; query every `query_frequency` steps and play the chunk in order.
    """

    def __init__(self, chunk_size: int, temporal_ensemble: bool = True, ensemble_k: float = 0.01,
                 query_frequency: int | None = None):
        self.chunk_size = chunk_size
        self.temporal_ensemble = temporal_ensemble
        self.ensemble_k = ensemble_k
        self.query_frequency = 1 if temporal_ensemble else (query_frequency or chunk_size)
        if not 1 <= self.query_frequency <= chunk_size:
            raise ValueError(f"query_frequency must be in [1, chunk_size={chunk_size}], got {query_frequency}")
        self.reset()

    def reset(self):
        self.step = 0
        self.chunks = []  # temporal ensemble: [(start_step, chunk (E, K, A))], oldest first
        self.current_chunk = None  # open loop: the chunk being played

    def needs_new_chunk(self) -> bool:
        return self.step % self.query_frequency == 0

    def act(self, new_chunk: torch.Tensor | None) -> torch.Tensor:
        """new_chunk: (E, K, A) when needs_new_chunk() was True, else None. Returns actions (E, A)."""
        if new_chunk is not None:
            if self.temporal_ensemble:
                self.chunks.append((self.step, new_chunk))
                # A chunk started at s covers steps s..s+K-1; drop the ones that no longer reach this step.
                self.chunks = [(s, c) for s, c in self.chunks if s + self.chunk_size > self.step]
            else:
                self.current_chunk = new_chunk
        if self.temporal_ensemble:
            predictions = torch.stack([c[:, self.step - s] for s, c in self.chunks])  # (n, E, A), oldest first
            weights = torch.tensor(
                [math.exp(-self.ensemble_k * i) for i in range(len(self.chunks))], device=predictions.device
            )
            weights = (weights / weights.sum()).view(-1, 1, 1)
            action = (weights * predictions).sum(dim=0)
        else:
            action = self.current_chunk[:, self.step % self.query_frequency]
        self.step += 1
        return action
