"""Success rate against training time: our ACT and LeRobot 0.4.4's ACT, trained on the same demos.

    bash benchmarks/install_lerobot.sh     # once: LeRobot 0.4.4 into benchmarks/.lerobot_site (git-ignored)
    PYTHONPATH=. .venv/bin/python benchmarks/success_vs_lerobot.py                  # 15 min of training each, seed 1
    PYTHONPATH=. .venv/bin/python benchmarks/success_vs_lerobot.py --seeds 1 2      # the repeat, when the gap is small
    PYTHONPATH=. .venv/bin/python benchmarks/success_vs_lerobot.py --minutes 0.5 --marks 0.25,0.5 \\
        --eval-episodes 2 num_eval_envs=2                                           # smoke run (a few minutes)

Measure on an otherwise idle machine: the two sides train one after the other, each for the same wall-clock budget,
so anything else running changes what each one gets done.

For every seed, one child process per implementation (ours, then LeRobot; the order flips from seed to seed):
  1. The same data: configs/ACT_maniskill_state_config.yaml's PickCube-v1 state demos (100 motion-planned episodes,
     generated into demos/ on first use), the same whole-episode 90/10 split (fixed by the seed), and the very same
     batches in the same order, from our replay buffer (datasets/chunk_dataset.py), for both.
  2. Training for --minutes of training time (evaluation excluded: it runs after training), with the same torch
     threads; at each mark (--marks, minutes) a copy of the weights is kept.
  3. Every kept copy plays --eval-episodes unseen episodes (seeds 1000000, 1000001, ...) in our evaluation loop
     (utils/evaluation.py), its chunks executed two ways: temporal ensembling (k = ensemble_k) and open loop (a
     whole chunk played before the next query). For LeRobot that is its own select_action, with
     temporal_ensemble_coeff = ensemble_k and n_action_steps = 1, or its action queue with n_action_steps =
     chunk_size, between its own pre/post-processors, the way lerobot_eval.py's rollout calls them.

The same on both sides (from the resolved config): chunk size, d_model, heads, feed-forward size, encoder /
decoder / VAE-encoder layers, latent size, dropout, CVAE with KL weight 10, batch size, AdamW lr and weight
decay, gradient clipping at grad_clip (LeRobot's training script clips at its optimiser's grad_clip_norm, 10 by
default, the same value as ours).
Each side otherwise runs as its own training script does:
  * ours: models/policy.py's policy, utils/optimization.py's optimiser (fused AdamW) and schedule (linear warm-up, cosine decay to zero at
    total_iters; the run stops there, as `ACT_for_Maniskill.py` would, and the marks after it get the final
    weights), malloc reusing freed memory (utils/allocator.py), bf16 autocast on CUDA (amp); normalisation inside
    the policy with the training episodes' mean/std (std floored at 0.01).
  * LeRobot: its ACTPolicy and ACTConfig unmodified; the optimiser from its preset (torch.optim.AdamW, no
    scheduler: ACT's preset has none), default allocator, fp32. In 0.4.4 normalisation is no longer inside the
    policy: its preprocessor (NormalizerProcessorStep, mean/std) runs on every batch and observation and its
    postprocessor un-normalises actions, built by make_act_pre_post_processors from statistics computed as
    LeRobot computes them (mean and population std of the training episodes' frames, no floor: PickCube's state
    has near-constant dimensions (in 4 demos looked at, a quaternion component with std 2e-4: scaled up ~5000x);
    --lerobot-min-std 0.01 floors them as ours does, to see what that difference costs).
  * LeRobot's ACT needs an image or an "environment state" input: it gets the state vector as both
    observation.state and observation.environment_state (one more encoder token than ours, as in
    benchmarks/train_throughput.py).

Writes --out (JSON: every mark's iterations and success rates) and prints a markdown table.
"""

import argparse
import dataclasses
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from datasets.chunk_dataset import infer_action_type, make_train_loader
from datasets.maniskill_demos import load_configured_demos, task_recipe
from env.errors import UserInputError
from env.maniskill_env import ManiSkillEnv
from models.policy import build_policy
from utils.allocator import reuse_freed_memory
from utils.config import REPO_ROOT, default_config_file, load_config, repo_path, run_main
from utils.deploy import DeployedPolicy
from utils.distributed import Distributed
from utils.evaluation import evaluate_controller, summarize
from utils.optimization import build_optimizer, build_scheduler, make_autocast, optimization_step
from utils.run_setup import prepare_data, seed_everything, select_device
from utils.schema import ManiSkillRun

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = default_config_file("maniskill")
LEROBOT_SITE = REPO / "benchmarks" / ".lerobot_site"
STATE_CONFIG = "configs/ACT_maniskill_state_config.yaml"
EXECUTIONS = ("temporal ensemble", "open loop")  # how a chunk becomes actions; see the docstring, step 3


# --------------------------------------------------------------------------------------------------
# LeRobot, imported next to this repository's own `datasets` package
# --------------------------------------------------------------------------------------------------
def import_lerobot():
    """LeRobot's ACT modules. Its imports load Hugging Face's `datasets`, whose name is that of this repository's
    `datasets` package: ours is set aside in sys.modules while LeRobot imports and put back afterwards (LeRobot's
    modules keep their references to Hugging Face's). The site folder then stays on sys.path, last."""
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "datasets"}
    sys.path.insert(0, str(LEROBOT_SITE))
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    for name in [name for name in sys.modules if name.split(".")[0] == "datasets"]:
        del sys.modules[name]
    sys.modules.update(ours)
    sys.path.remove(str(LEROBOT_SITE))
    sys.path.append(str(LEROBOT_SITE))
    return SimpleNamespace(FeatureType=FeatureType, PolicyFeature=PolicyFeature, ACTConfig=ACTConfig,
                           ACTPolicy=ACTPolicy, make_processors=make_act_pre_post_processors)


def lerobot_config(lerobot, cfg, state_dim: int, action_dim: int, device, temporal_ensemble: bool):
    """ACTConfig with our sizes and optimiser settings; execution: temporal ensembling or the action queue."""
    m, feature, kind = cfg.model, lerobot.PolicyFeature, lerobot.FeatureType
    return lerobot.ACTConfig(
        input_features={"observation.state": feature(kind.STATE, (state_dim,)),
                        "observation.environment_state": feature(kind.ENV, (state_dim,))},
        output_features={"action": feature(kind.ACTION, (action_dim,))},
        device=device.type, pretrained_backbone_weights=None, chunk_size=m.chunk_size,
        n_action_steps=1 if temporal_ensemble else m.chunk_size,
        temporal_ensemble_coeff=cfg.ensemble_k if temporal_ensemble else None,
        dim_model=m.d_model, n_heads=m.nhead, dim_feedforward=m.dim_feedforward, n_encoder_layers=m.num_encoder_layers,
        n_decoder_layers=m.num_decoder_layers, n_vae_encoder_layers=m.num_style_encoder_layers, use_vae=m.use_cvae,
        latent_dim=m.latent_dim, dropout=m.dropout, kl_weight=m.kl_weight,
        optimizer_lr=cfg.lr, optimizer_weight_decay=cfg.weight_decay, optimizer_lr_backbone=cfg.lr_backbone,
    )


def lerobot_stats(train_set, min_std: float = 0.0) -> dict:
    """Normalisation statistics as LeRobot computes them for a dataset: per-dimension mean and population std
    (min_std > 0 floors the std as ours does, an ablation: LeRobot itself has no floor)."""
    def mean_std(frames: torch.Tensor) -> dict:  # (N, D) -> per-dimension statistics, computed in float64
        frames = frames.double()
        return {"mean": frames.mean(0).float(), "std": frames.std(0, correction=0).clamp(min=min_std).float()}

    state = mean_std(train_set.states)
    return {"observation.state": state, "observation.environment_state": state, "action": mean_std(train_set.actions)}


def lerobot_observation(state: torch.Tensor) -> dict:
    """Our state (E, S) -> LeRobot's observation keys (the state is its robot state and its environment state)."""
    return {"observation.state": state, "observation.environment_state": state}


class LeRobotController:
    """LeRobot's policy in our evaluation loop (utils/evaluation.py's evaluate_controller), called the way
    lerobot_eval.py's rollout calls it: preprocessor (normalise) -> select_action -> postprocessor (un-normalise)."""

    def __init__(self, policy, preprocessor, postprocessor):
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor

    def reset(self):
        self.policy.reset()  # empties the action queue / the temporal ensemble

    def select_action(self, observation: dict) -> np.ndarray:
        batch = self.preprocessor(lerobot_observation(torch.from_numpy(observation["state"])))
        with torch.inference_mode():
            action = self.policy.select_action(batch)  # (E, A), normalised
        return self.postprocessor(action).numpy()


# --------------------------------------------------------------------------------------------------
# Training for a wall-clock budget
# --------------------------------------------------------------------------------------------------
def train_ours(cfg, data, device):
    """Our policy and one optimisation step as utils/training.py's train() takes them. Returns (policy, step)."""
    policy = build_policy(cfg.model, data.shape_meta, data.stats, cfg.frame_stack).to(device)
    reuse_freed_memory()  # as train() does on CPU, once the data is read
    optimizer = build_optimizer(cfg, policy)
    scheduler = build_scheduler(cfg, optimizer)
    autocast, _ = make_autocast(cfg, device)

    def step(batch: dict, iteration: int):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        optimization_step(cfg, policy, policy, optimizer, scheduler, autocast, batch, iteration)

    return policy, step


def train_lerobot(lerobot, cfg, data, device, min_std: float = 0.0):
    """LeRobot's policy and one step as its lerobot_train.py takes it (preprocessor, then update_policy).
    min_std: see lerobot_stats. Returns (policy, step, preprocessor, postprocessor)."""
    config = lerobot_config(lerobot, cfg, data.shape_meta["state_dim"], data.shape_meta["action_dim"], device,
                            temporal_ensemble=False)
    policy = lerobot.ACTPolicy(config).to(device)
    preprocessor, postprocessor = lerobot.make_processors(config, lerobot_stats(data.train_set, min_std))
    optimizer = config.get_optimizer_preset().build(policy.get_optim_params())

    def step(batch: dict, iteration: int):
        policy.train()
        batch = preprocessor({**lerobot_observation(batch["state"][:, -1]), "action": batch["actions"],
                              "action_is_pad": batch["is_pad"]})
        loss, _ = policy.forward(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad()

    return policy, step, preprocessor, postprocessor


def train_for(step, policy, loader, marks_s: list[float], max_iters: int | None, device) -> list[dict]:
    """Call step(batch, iteration) until marks_s[-1] seconds of training; keep the weights at every mark.

    The clock runs while a batch is fetched and a step taken, not while weights are copied. A run with max_iters
    (our schedule's end) stops there and the remaining marks get its final weights.
    Returns [{"minutes", "iterations", "trained_s", "weights"}] in mark order.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    snapshots, trained_s, iteration, batches = [], 0.0, 0, iter(loader)

    def keep(mark_s):
        weights = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        snapshots.append({"minutes": mark_s / 60, "iterations": iteration, "trained_s": trained_s, "weights": weights})

    while len(snapshots) < len(marks_s):
        if iteration == max_iters:
            print(f"[train] schedule finished at iteration {iteration} after {trained_s / 60:.1f} min")
            for mark_s in marks_s[len(snapshots):]:
                keep(mark_s)
            break
        started = time.perf_counter()
        step(next(batches), iteration)
        sync()
        trained_s += time.perf_counter() - started
        iteration += 1
        while len(snapshots) < len(marks_s) and trained_s >= marks_s[len(snapshots)]:
            keep(marks_s[len(snapshots)])
            print(f"[train] {snapshots[-1]['minutes']:g} min: {iteration} iterations", flush=True)
    return snapshots


# --------------------------------------------------------------------------------------------------
# One implementation, one seed: a child process
# --------------------------------------------------------------------------------------------------
def run_one(impl: str, seed: int, cfg: ManiSkillRun, args, result_path: str):
    """Train `impl` ("ours" or "lerobot"), evaluate its snapshots, write the outcome to result_path (JSON).
    args: the command line's, with the marks (args.marks_min) and episode count (args.num_episodes) resolved."""
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(cfg, seed=seed)
    lerobot = import_lerobot() if impl == "lerobot" else None
    seed_everything(seed)
    device = select_device(cfg.device, Distributed())
    action_type = infer_action_type(cfg.control_mode) if cfg.action_type == "auto" else cfg.action_type
    data = prepare_data(cfg, load_configured_demos(cfg, REPO_ROOT), action_type)
    loader = make_train_loader(data.train_set, cfg.batch_size, seed, num_workers=0)
    marks_s = [60 * m for m in args.marks_min]

    print(f"[{impl} seed {seed}] training for {args.minutes:g} min on {device}, {args.threads} thread(s)", flush=True)
    if impl == "ours":
        policy, step = train_ours(cfg, data, device)
        snapshots = train_for(step, policy, loader, marks_s, cfg.total_iters, device)
    else:
        policy, step, preprocessor, postprocessor = train_lerobot(lerobot, cfg, data, device, args.lerobot_min_std)
        snapshots = train_for(step, policy, loader, marks_s, None, device)
        # One policy per execution, with LeRobot's own config for it; the weights are the same.
        players = {}
        for execution in EXECUTIONS:
            config = lerobot_config(lerobot, cfg, data.shape_meta["state_dim"], data.shape_meta["action_dim"], device,
                                    temporal_ensemble=execution == "temporal ensemble")
            players[execution] = lerobot.ACTPolicy(config).to(device)

    env = ManiSkillEnv.from_config(cfg, cfg.num_eval_envs)
    evals = {execution: [] for execution in EXECUTIONS}
    for snapshot in snapshots:
        for execution in EXECUTIONS:
            started = time.time()
            if impl == "ours":
                policy.load_state_dict(snapshot["weights"])
                deployed = DeployedPolicy.from_config(policy, cfg, frame_stack=1, query_frequency=None,
                                                      temporal_ensemble=execution == "temporal ensemble")
                result = evaluate_controller(deployed, env, args.num_episodes, cfg.eval_seed)
            else:
                players[execution].load_state_dict(snapshot["weights"])
                controller = LeRobotController(players[execution].eval(), preprocessor, postprocessor)
                result = evaluate_controller(controller, env, args.num_episodes, cfg.eval_seed)
            summary = summarize(result["episodes"])
            evals[execution].append(summary)
            print(f"[eval] {impl} seed {seed}, {snapshot['minutes']:g} min ({snapshot['iterations']} iterations), "
                  f"{execution}: success_once {summary['success_once']:.0%}, at end {summary['success_at_end']:.0%} "
                  f"({time.time() - started:.0f}s)", flush=True)
    env.close()
    result = {"impl": impl, "seed": seed, "threads": args.threads, "device": str(device), "torch": torch.__version__,
              "lerobot_min_std": args.lerobot_min_std if impl == "lerobot" else None,
              "marks_min": args.marks_min, "iterations": [s["iterations"] for s in snapshots],
              "trained_s": [s["trained_s"] for s in snapshots], "evals": evals}
    Path(result_path).write_text(json.dumps(result, indent=1))


# --------------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------------
def check_comparable(cfg):
    """Settings one side has and the other lacks would make the comparison unequal: refuse them."""
    unequal = {"obs_mode": (cfg.obs_mode, "state"), "frame_stack": (cfg.frame_stack, 1),
               "ema_decay": (cfg.ema_decay, 0.0), "kl_warmup_iters": (cfg.kl_warmup_iters, 0),
               "action_normalization": (cfg.action_normalization, "mean_std")}
    for key, (value, needed) in unequal.items():
        if value != needed:
            raise UserInputError(f"{key}={value!r}: LeRobot's ACT has no equivalent here; this comparison needs "
                                 f"{key}={needed!r}")


def markdown(results: list[dict]) -> str:
    """Success (any step) at every mark, one row per implementation, execution and seed; iterations done below."""
    marks = results[0]["marks_min"]
    head = "| implementation | execution | seed | " + " | ".join(f"{m:g} min" for m in marks) + " | first >= 80% |"
    lines = [head, "|---|---|---:|" + "---:|" * len(marks) + "---|"]
    for r in results:
        for execution in EXECUTIONS:
            rates = [e["success_once"] for e in r["evals"][execution]]
            first = next((f"{m:g} min" for m, rate in zip(marks, rates) if rate >= 0.8), "not reached")
            lines.append(f"| {r['impl']} | {execution} | {r['seed']} | "
                         + " | ".join(f"{rate:.0%}" for rate in rates) + f" | {first} |")
    lines += ["", "| implementation | seed | " + " | ".join(f"iterations at {m:g} min" for m in marks) + " |",
              "|---|---:|" + "---:|" * len(marks)]
    for r in results:
        lines.append(f"| {r['impl']} | {r['seed']} | " + " | ".join(str(i) for i in r["iterations"]) + " |")
    return "\n".join(lines) + "\n"


def parse_marks(text: str) -> list[float]:
    try:
        marks = sorted(float(m) for m in text.split(","))
    except ValueError:
        raise UserInputError(f"--marks expects minutes separated by commas, like 2,5,10,15; got {text!r}") from None
    if marks[0] <= 0:
        raise UserInputError(f"--marks must be positive minutes; got {text!r}")
    return marks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=STATE_CONFIG, help=f"our YAML config (default: {STATE_CONFIG})")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per run (evaluation excluded)")
    parser.add_argument("--marks", default="2,5,10,15", help="minutes of training at which the weights are evaluated")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per implementation and seed")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides")
    parser.add_argument("--eval-episodes", type=int, default=None, help="default: the config's num_eval_episodes")
    parser.add_argument("--lerobot-min-std", type=float, default=0.0,
                        help="floor of LeRobot's normalisation std (ablation; 0 = as LeRobot, ours floors at 0.01)")
    parser.add_argument("--impls", nargs="+", choices=("ours", "lerobot"), default=["ours", "lerobot"])
    parser.add_argument("--out", default="ckpts/success_vs_lerobot.json", help="JSON of every run's results")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of our config, e.g. num_eval_envs=2")
    args = parser.parse_args()

    if args.minutes <= 0:
        raise UserInputError(f"--minutes must be positive, got {args.minutes:g}")
    args.marks_min = [m for m in parse_marks(args.marks) if m < args.minutes] + [args.minutes]
    if "lerobot" in args.impls and not (LEROBOT_SITE / "lerobot").is_dir():
        raise UserInputError(f"LeRobot is not installed in {LEROBOT_SITE}: run bash benchmarks/install_lerobot.sh")
    cfg = load_config(DEFAULT_CONFIG, args.config, args.overrides, task_defaults=task_recipe)
    check_comparable(cfg)
    args.num_episodes = args.eval_episodes or cfg.num_eval_episodes
    out = repo_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load_configured_demos(cfg, REPO_ROOT)  # makes the demos now if they are missing, before any clock starts

    results = []
    for index, seed in enumerate(args.seeds):
        # The order flips from seed to seed, so that a drift in the machine's speed does not favour one side.
        for impl in args.impls if index % 2 == 0 else args.impls[::-1]:
            result_path = out.with_name(f"{out.stem}-{impl}-seed{seed}.json")
            child = mp.get_context("spawn").Process(target=run_one,
                                                    args=(impl, seed, cfg, args, str(result_path)))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"the {impl} run with seed {seed} failed (exit status {child.exitcode})")
            results.append(json.loads(result_path.read_text()))
    out.write_text(json.dumps({"config": cfg.to_dict(), "episodes": args.num_episodes, "runs": results}, indent=1))
    print(f"\n{markdown(results)}\nevery run's figures: {out}")


if __name__ == "__main__":
    run_main(main)
