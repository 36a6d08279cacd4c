"""ModelConfig: the `model:` section of a run's config, everything that sizes and shapes the ACT policy.

models/policy.py's build_policy(ModelConfig, ...) builds the policy from it; utils/schema.py makes it one section
of every run's config. Values here are the defaults (ACT on ManiSkill from RGB images); a config file overrides
them under `model:`, the command line with `model.<key>=value`.
"""

from dataclasses import dataclass


@dataclass
class ModelConfig:
    chunk_size: int = 30
    d_model: int = 256
    nhead: int = 8
    dim_feedforward: int = 512
    num_encoder_layers: int = 2
    num_decoder_layers: int = 4
    num_style_encoder_layers: int = 4
    dropout: float = 0.1
    latent_dim: int = 32
    use_cvae: bool = True  # false: deterministic ACT without the style encoder
    kl_weight: float = 10.0
    pretrained_backbone: bool = True  # ImageNet ResNet18 (torch hub cache or download; loud warning + random init
    #                                   if neither)
    pretrained_weights_path: str | None = None
    backbone_stages: int = 4  # ResNet18 stages kept: 4 = the paper (H/32 grid, 512 channels); 3 = H/16 grid, 256
    #                           channels, fewer FLOPs: a grid fine enough to place small objects in small images;
    #                           2 = H/8 grid, 128 channels
    random_shift: int = 0  # training images shifted by up to this many pixels (DrQ-style augmentation); 0 = off
    cpu_fast_paths: bool = True  # models/fast_cpu.py (same results, faster) unless a debugger is attached; false:
    #                              always models/act.py alone. The [model] log line says which runs


# What a resumed or evaluated run cannot change: the shapes of the saved weights.
ARCHITECTURE_KEYS = ("chunk_size", "d_model", "nhead", "dim_feedforward", "num_encoder_layers", "num_decoder_layers",
                     "num_style_encoder_layers", "latent_dim", "use_cvae", "backbone_stages")
