"""Checks of benchmarks/success_vs_lerobot.py's LeRobot side, run in a process of their own.

Started by tests/test_success_vs_lerobot.py (LeRobot's modules, and the Hugging Face `datasets` they load, stay
out of the pytest process): python tests/lerobot_act_check.py. Exits non-zero with the failed assertion.
  1. Training: the preprocessor normalises the training states to mean 0 / std 1, and 40 of LeRobot's
     optimisation steps on a tiny synthetic task lower its L1 loss.
  2. Evaluation: LeRobotController returns raw actions (un-normalised), its action queue is emptied at every
     round, and temporal ensembling queries the policy at every step.
"""

import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import success_vs_lerobot as bench  # noqa: E402  (after the path above)
from datasets.chunk_dataset import make_train_loader  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.evaluation import evaluate_controller  # noqa: E402
from utils.run_setup import prepare_data  # noqa: E402

CHUNK, STATE_DIM, ACTION_DIM = 4, 5, 3
TINY = ["model.chunk_size=4", "model.d_model=32", "model.nhead=2", "model.dim_feedforward=64",
        "model.num_encoder_layers=1", "model.num_decoder_layers=1", "model.num_style_encoder_layers=1",
        "batch_size=32", "lr=1e-3", "val_fraction=0"]


class RecordingEnv:
    """Two environments whose state never changes; records every action it is given."""
    num_envs, max_episode_steps = 2, 2 * CHUNK + 1

    def __init__(self):
        self.actions = []

    def reset(self, seed: int) -> dict:
        return {"state": np.ones((self.num_envs, STATE_DIM), np.float32)}

    def step(self, actions):
        self.actions.append(actions)
        return self.reset(0), np.zeros(self.num_envs, np.float32), np.zeros(self.num_envs, bool)


def counting_queries(policy) -> list:
    """Count the chunks the policy predicts (LeRobot's select_action calls predict_action_chunk for each)."""
    calls, predict = [], policy.predict_action_chunk
    policy.predict_action_chunk = lambda batch: calls.append(1) or predict(batch)
    return calls


def main():
    torch.manual_seed(0)
    lerobot = bench.import_lerobot()
    cfg = load_config(bench.DEFAULT_CONFIG, bench.STATE_CONFIG, TINY)
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(6):
        state = (rng.normal(size=(30, STATE_DIM)) * [1, 2, 3, 4, 5] + 10).astype(np.float32)
        episodes.append({"state": state, "actions": (state[:, :ACTION_DIM] * 0.01 + 50).astype(np.float32)})
    data = prepare_data(cfg, episodes, "absolute")
    device = torch.device("cpu")

    # 1. Training.
    policy, step, preprocessor, postprocessor = bench.train_lerobot(lerobot, cfg, data, device)
    everything = data.train_set[np.arange(len(data.train_set))]
    normalised = preprocessor({**bench.lerobot_observation(everything["state"][:, -1]),
                               "action": everything["actions"], "action_is_pad": everything["is_pad"]})
    state = normalised["observation.state"]
    assert torch.allclose(state.mean(0), torch.zeros(STATE_DIM), atol=1e-4), state.mean(0)
    assert torch.allclose(state.std(0, correction=0), torch.ones(STATE_DIM), atol=1e-4), state.std(0)

    def l1() -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return policy.forward(normalised)[1]["l1_loss"]

    before = l1()
    for iteration, batch in zip(range(40), make_train_loader(data.train_set, cfg.batch_size, seed=0, num_workers=0)):
        step(batch, iteration)
    after = l1()
    assert after < 0.9 * before, (before, after)  # 0.87 -> 0.72 measured; steps that learn nothing keep it

    # 2. Evaluation, both executions, 2 rounds of 2 environments.
    for execution, queries_expected in (("open loop", 2 * 3), ("temporal ensemble", 2 * (2 * CHUNK + 1))):
        config = bench.lerobot_config(lerobot, cfg, STATE_DIM, ACTION_DIM, device,
                                      temporal_ensemble=execution == "temporal ensemble")
        player = lerobot.ACTPolicy(config)
        player.load_state_dict(policy.state_dict())
        calls, env = counting_queries(player), RecordingEnv()
        evaluate_controller(bench.LeRobotController(player, preprocessor, postprocessor), env, num_episodes=4, seed=0)
        actions = np.stack(env.actions)  # (2 rounds * steps, E, A)
        # ceil(9 steps / 4) = 3 chunks per round in open loop; a queue left over from round 1 would make it 5
        assert len(calls) == queries_expected, (execution, len(calls))
        assert np.abs(actions - 50).max() < 1, (execution, actions.min(), actions.max())  # raw units, near 50
    print("lerobot checks passed")


if __name__ == "__main__":
    main()
