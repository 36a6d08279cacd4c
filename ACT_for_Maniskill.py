"""Train and evaluate ACT on a ManiSkill3 task.

    python ACT_for_Maniskill.py --config configs/ACT_maniskill_state_config.yaml      # CPU-friendly
    python ACT_for_Maniskill.py                                                       # RGB, for a GPU
    python ACT_for_Maniskill.py env_id=PushCube-v1 total_iters=5000                   # any key=value
    python ACT_for_Maniskill.py env_id=LiftPegUpright-v1         # the task's recipe: pd_ee_delta_pose, 250 steps
    python ACT_for_Maniskill.py resume=ckpts/<run>/last.pt                            # continue a run
    python ACT_for_Maniskill.py mode=eval checkpoint=ckpts/<run>/best.pt              # evaluate only
    torchrun --standalone --nproc_per_node=2 ACT_for_Maniskill.py ...                # 2 processes (DDP)

The story: config -> demonstrations -> replay buffer -> ACT policy -> training loop (validation on
held-out demos, success rate in the simulator, checkpoints, videos) -> final evaluation.
"""

from datasets.chunk_dataset import infer_action_type
from datasets.maniskill_demos import load_configured_demos, task_recipe
from env.maniskill_env import ManiSkillEnv, check_cameras, check_env_id
from models.policy import build_policy
from utils.config import REPO_ROOT, parse_args, run_main
from utils.distributed import init_distributed, main_process_first
from utils.evaluation import evaluate_checkpoint
from utils.run_setup import prepare_data, start_run
from utils.training import final_summary, train

DEFAULT_CONFIG = "configs/ACT_maniskill_config.yaml"


def main():
    # 0. Processes: under torchrun join its process group (rank 0 reports and writes); plain python: one process.
    distributed = init_distributed()

    # 1. Config: YAML + the task's recipe (control mode, episode length) + key=value overrides; resume / eval
    #    start from the checkpoint's own config.
    cfg, checkpoint = parse_args(DEFAULT_CONFIG, __doc__, task_defaults=task_recipe)
    check_env_id(cfg.env_id)
    check_cameras(cfg.env_id, cfg.obs_mode, cfg.cameras)  # before any demo is made
    run = start_run(cfg, checkpoint, distributed)
    if cfg.mode == "eval":
        evaluate_checkpoint(cfg, run, lambda n: ManiSkillEnv.from_config(cfg, n))
        return

    # 2. Data: demonstrations -> train/validation chunk datasets + normalisation statistics.
    action_type = infer_action_type(cfg.control_mode) if cfg.action_type == "auto" else cfg.action_type
    with main_process_first(distributed):  # under torchrun rank 0 makes missing demos, then the others load
        episodes = load_configured_demos(cfg, REPO_ROOT)  # generated with the motion planner if missing
    data = prepare_data(cfg, episodes, action_type)

    # 3. Model: the ACT policy, sized by cfg.model, carrying the statistics.
    policy = build_policy(cfg.model, data.shape_meta, data.stats, cfg.frame_stack,
                          saved_meta=checkpoint and checkpoint["shape_meta"])

    # 4. Train: validation loss, simulator success rate, checkpoints and videos along the way.
    final = train(cfg, run, policy, data, lambda n: ManiSkillEnv.from_config(cfg, n))
    print(f"[done] {run.name}: {final_summary(final)}; checkpoints and curves in {run.ckpt_dir}")


if __name__ == "__main__":
    run_main(main)
