"""Setting a run up: seed and device, the run's name and folders (config.yaml, run_info.json, logger), and the
data split into training and validation episodes with the normalisation statistics.

Reading order: `start_run` -> `prepare_data`; then utils/training.py's `train`.
"""

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from datasets.chunk_dataset import ChunkDataset, compute_stats, split_episodes
from env.errors import UserInputError
from utils.checkpoint import check_writable, claim_run_folder
from utils.config import repo_path
from utils.distributed import Distributed, broadcast, shutdown_distributed
from utils.logger import NullLogger, RunLogger
from utils.schema import RunConfig, SimulatorRun, evaluates_in_simulator


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

    def record_info(self, **facts):
        """Add facts to run_info.json (rank 0 only writes it)."""
        path = self.ckpt_dir / "run_info.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **facts}))

    def finish(self):
        self.logger.finish()
        shutdown_distributed()


def start_run(cfg: RunConfig, checkpoint: dict | None, distributed: Distributed = Distributed(),
              task: str | None = None) -> Run:
    """Seed, pick the device, name the run and open its folders and logger.

    `checkpoint` (from parse_args) is the one being resumed or evaluated. Resuming continues its run (same
    name and folders, same W&B run); evaluation-only gets a fresh run named after the evaluated one. A new
    run's folder is created exclusively (claim_run_folder): runs started in the same second never share one.
    ckpt_dir (and video_dir, when videos will be written) must be writable before any work starts.
    Under torchrun (`distributed` from utils.distributed.init_distributed) only rank 0 writes.
    task: the run name's middle part, cfg.env_id unless given (a dataset run has no simulator task). A run
    without a simulator gets no video folder.
    """
    started = time.time()
    if distributed.enabled and cfg.batch_size % distributed.world_size:
        raise UserInputError(f"batch_size={cfg.batch_size} is the global batch and must divide by the "
                             f"{distributed.world_size} processes; e.g. batch_size="
                             f"{cfg.batch_size // distributed.world_size * distributed.world_size}")
    seed_everything(cfg.seed + distributed.rank)  # different dropout draws per rank; DDP syncs the weights
    device = select_device(cfg.device, distributed)
    ckpt_root = repo_path(cfg.ckpt_dir)
    video_root = repo_path(cfg.video_dir) if isinstance(cfg, SimulatorRun) else None
    name = None
    if distributed.is_main:
        check_writable(ckpt_root, "ckpt_dir")
        if video_root and cfg.capture_video and evaluates_in_simulator(cfg) and cfg.num_video_episodes > 0:
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
# Data
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    train_set: ChunkDataset
    val_set: ChunkDataset | None
    stats: dict
    shape_meta: dict
    train_episodes: list[int]
    val_episodes: list[int]


def prepare_data(cfg: RunConfig, episodes: list[dict], action_type: str, cameras: list[str] | None = None) -> TrainingData:
    """Hold out whole episodes for validation, compute normalisation stats on the training episodes only.
    action_type: cfg.action_type resolved (ManiSkill's auto); cameras: the camera names in the order the
    episodes hold them, recorded in every checkpoint for utils/deploy.py's named-camera observations."""
    train_ids, val_ids = split_episodes(len(episodes), cfg.val_fraction, cfg.seed)
    train_eps = [episodes[i] for i in train_ids]
    first = episodes[0]
    shape_meta = {
        "state_dim": first["state"].shape[1],
        "action_dim": first["actions"].shape[1],
        "num_cameras": first["images"].shape[1] if "images" in first else 0,
        "image_channels": first["images"].shape[2] if "images" in first else 3,
        "image_size": list(first["images"].shape[3:]) if "images" in first else None,  # [h, w] trained on
        "cameras": cameras,
    }
    print(f"[data] {len(train_ids)} training / {len(val_ids)} validation episodes"
          + (f" (held out: episodes {', '.join(map(str, val_ids))})" if val_ids else "")
          + f", {sum(len(e['actions']) for e in train_eps)} training samples, action type '{action_type}'")
    train_set = ChunkDataset(train_eps, cfg.model.chunk_size, action_type, cfg.frame_stack)
    val_set = (ChunkDataset([episodes[i] for i in val_ids], cfg.model.chunk_size, action_type, cfg.frame_stack)
               if val_ids else None)
    stats = compute_stats(train_eps, cfg.action_normalization)
    return TrainingData(train_set, val_set, stats, shape_meta, train_ids, val_ids)
