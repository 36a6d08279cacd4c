"""One DDP backward pass on this rank's share of a global batch; rank 0 saves the averaged gradients.
Started by tests/test_distributed.py: torchrun --nproc_per_node=2 tests/ddp_gradient_worker.py DEMOS OUT"""

import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.maniskill_demos import load_maniskill_demos  # noqa: E402
from datasets.chunk_dataset import ChunkDataset, compute_stats, make_train_loader  # noqa: E402
from models.act import ACT  # noqa: E402
from models.policy import ACTPolicy  # noqa: E402
from utils.distributed import init_distributed, shutdown_distributed  # noqa: E402

GLOBAL_BATCH = 16


def small_policy_and_data(demo_path):
    """The same small state-only policy (seed 0) and replay buffer in every process that calls this (also used by
    tests/test_training.py)."""
    episodes = load_maniskill_demos(demo_path, 4, "state", "pd_ee_delta_pos")
    torch.manual_seed(0)
    model = ACT(state_dim=42, action_dim=4, chunk_size=8, d_model=32, nhead=4, dim_feedforward=64,
                num_encoder_layers=1, num_decoder_layers=1, num_style_encoder_layers=1, latent_dim=8)
    return ACTPolicy(model, compute_stats(episodes), kl_weight=10.0), ChunkDataset(episodes, 8, "delta")


if __name__ == "__main__":
    distributed = init_distributed()
    policy, data = small_policy_and_data(sys.argv[1])
    loader = make_train_loader(data, GLOBAL_BATCH, seed=0, num_workers=0, rank=distributed.rank,
                               world_size=distributed.world_size)
    batch = next(iter(loader))
    assert len(batch["actions"]) == GLOBAL_BATCH // distributed.world_size
    policy.eval()  # no dropout and z = posterior mean: the comparison is about the gradient averaging alone
    ddp_policy = DistributedDataParallel(policy)  # must outlive backward(): its hooks do the averaging
    ddp_policy(batch)["loss"].backward()
    if distributed.is_main:
        torch.save({name: p.grad for name, p in policy.named_parameters()}, sys.argv[2])
    shutdown_distributed()
