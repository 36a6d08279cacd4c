"""Train and evaluate ACT on a BiGym task (Unitree H1, bimanual mobile manipulation).

    bash scripts/install_bigym.sh [/path/to/bigym-source]                            # once
    python ACT_for_bigym.py                                                          # DishwasherClose, paper setting
    python ACT_for_bigym.py env_id=move_plate total_iters=5000                       # any key=value
    python ACT_for_bigym.py demo_cache_root=/data/bigym                              # demos unpacked offline
    python ACT_for_bigym.py --config configs/ACT_bigym_cpu_config.yaml               # scripted demos, CPU-sized
    python ACT_for_bigym.py --config configs/ACT_bigym_cpu_config.yaml env_id=ReachTarget  # + the task's recipe
    python ACT_for_bigym.py resume=ckpts/<run>/last.pt                               # continue a run
    python ACT_for_bigym.py mode=eval checkpoint=ckpts/<run>/best.pt                 # evaluate only
    torchrun --standalone --nproc_per_node=2 ACT_for_bigym.py ...                    # 2 processes (DDP)

The story: config -> demonstrations (BiGym's DemoStore: human demos, or scripted ones made here; re-rendered for
the configured cameras) -> chunk dataset -> ACT policy -> training loop (validation on held-out demos, success
rate in the simulator, checkpoints, videos) -> final evaluation.
"""

from datasets.bigym_demos import load_bigym_demos
from datasets.bigym_solvers import scripted_recipe
from env.bigym_env import BiGymEnv, check_state_contents, resolve_task
from models.policy import build_policy
from utils.config import REPO_ROOT, parse_args, run_main
from utils.distributed import init_distributed, main_process_first
from utils.evaluation import evaluate_checkpoint
from utils.run_setup import prepare_data, start_run
from utils.training import final_summary, train

DEFAULT_CONFIG = "configs/ACT_bigym_config.yaml"


def main():
    # 0. Processes: under torchrun join its process group (rank 0 reports and writes); plain python: one process.
    distributed = init_distributed()

    # 1. Config: YAML + (scripted demos) the task's recipe + key=value overrides (resume / eval start from the
    #    checkpoint's own config).
    cfg, checkpoint = parse_args(DEFAULT_CONFIG, __doc__, task_defaults=scripted_recipe)
    resolve_task(cfg.env_id)  # a wrong task name or state stops here, before the run's folders are made
    check_state_contents(cfg.proprioception, cfg.elapsed_time, cfg.max_episode_steps)
    run = start_run(cfg, checkpoint, distributed)
    if cfg.mode == "eval":
        evaluate_checkpoint(cfg, run, lambda n: BiGymEnv.from_config(cfg, n))
        return

    # 2. Data: demonstrations -> train/validation chunk datasets + normalisation statistics.
    with main_process_first(distributed):  # under torchrun rank 0 makes missing demos and caches first
        episodes = load_bigym_demos(cfg, REPO_ROOT)  # scripted demos are made first when missing
    data = prepare_data(cfg, episodes, cfg.action_type)

    # 3. Model: the ACT policy, sized by cfg.model, carrying the statistics.
    policy = build_policy(cfg.model, data.shape_meta, data.stats, cfg.frame_stack,
                          saved_meta=checkpoint and checkpoint["shape_meta"])

    # 4. Train: validation loss, simulator success rate, checkpoints and videos along the way.
    final = train(cfg, run, policy, data, lambda n: BiGymEnv.from_config(cfg, n))
    starts = "held-out perturbed starts" if cfg.perturbed_starts else "BiGym's own reset"
    print(f"[done] {run.name} ({cfg.demo_source} demos, evaluated on {starts}): {final_summary(final)}; "
          f"checkpoints and curves in {run.ckpt_dir}")


if __name__ == "__main__":
    run_main(main)
