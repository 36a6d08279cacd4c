"""Real training steps on real demos: the L1 loss must at least halve."""

import torch

from datasets.maniskill_demos import load_maniskill_demos
from datasets.chunk_dataset import ChunkDataset, compute_stats, make_train_loader
from models.act import ACT
from models.policy import ACTPolicy


def test_a_few_hundred_steps_halve_the_l1_loss(pickcube_state_demos):
    torch.manual_seed(0)
    episodes = load_maniskill_demos(pickcube_state_demos, 4, "state", "pd_ee_delta_pos")
    data = ChunkDataset(episodes, chunk_size=10, action_type="delta")
    model = ACT(state_dim=42, action_dim=4, chunk_size=10, d_model=64, nhead=4, dim_feedforward=128,
                num_encoder_layers=2, num_decoder_layers=2, num_style_encoder_layers=2, latent_dim=8)
    policy = ACTPolicy(model, compute_stats(episodes), kl_weight=10.0)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    loader = iter(make_train_loader(data, batch_size=32, seed=0, num_workers=0))
    history = []
    for _ in range(300):
        losses = policy(next(loader))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["l1"].item())
    first, last = sum(history[:20]) / 20, sum(history[-20:]) / 20
    assert last < 0.5 * first, f"L1 went from {first:.3f} to {last:.3f}"
