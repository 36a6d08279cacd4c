"""Train and evaluate ACT on ALOHA sim, the ACT paper's benchmark: Transfer Cube and Bimanual Insertion.

    python ACT_for_aloha.py                                          # transfer_cube, the paper's setting (a GPU)
    python ACT_for_aloha.py env_id=insertion                         # the other task
    python ACT_for_aloha.py --config configs/ACT_aloha_cpu_config.yaml                    # sized for a 2-core CPU
    python ACT_for_aloha.py resume=ckpts/<run>/last.pt                                    # continue a run
    python ACT_for_aloha.py mode=eval checkpoint=ckpts/<run>/best.pt                      # evaluate only
    python ACT_for_aloha.py mode=eval checkpoint=ckpts/<run>/best.pt temporal_ensemble=false query_frequency=100
    torchrun --standalone --nproc_per_node=2 ACT_for_aloha.py ...                         # 2 processes (DDP)

The story: config -> scripted demonstrations (made on first use into <demo_dir>/<env_id>/, seeds 0, 1, ...; read
back through the own-data ALOHA HDF5 reader) -> chunk dataset -> ACT policy -> training loop (validation on held-out
demos, success and stage rates on 50 unseen starts from eval_seed, checkpoints, videos) -> final evaluation.
"""

from datasets.aloha_scripted import check_demo_cameras, demo_seeds_tried, load_configured_demos
from env.aloha_env import AlohaEnv, AlohaSim
from env.errors import UserInputError
from models.policy import build_policy
from utils.config import REPO_ROOT, parse_args, run_main
from utils.distributed import init_distributed, main_process_first
from utils.evaluation import evaluate_checkpoint
from utils.run_setup import prepare_data, start_run
from utils.schema import AlohaRun
from utils.training import final_summary, train

DEFAULT_CONFIG = "configs/ACT_aloha_config.yaml"


def check_eval_seeds(cfg: AlohaRun, demo_seeds: range | list[int]):
    """No evaluation episode may start from a scene a demo was made from."""
    evaluated = range(cfg.eval_seed, cfg.eval_seed + cfg.num_eval_episodes)
    shared = sorted(set(evaluated) & set(demo_seeds))
    if shared:
        raise UserInputError(f"eval_seed={cfg.eval_seed}: evaluation seeds {evaluated.start}-{evaluated.stop - 1} "
                             f"include demo seeds ({shared[0]}, ...); set eval_seed >= {max(demo_seeds) + 1} "
                             f"(default 1000000)")


def main():
    # 0. Processes: under torchrun join its process group (rank 0 reports and writes); plain python: one process.
    distributed = init_distributed()

    # 1. Config: YAML + key=value overrides (resume / eval start from the checkpoint's own config). A camera the
    #    scene or the demos lack, or evaluation seeds among the demos', stop here, before any file is written.
    cfg, checkpoint = parse_args(DEFAULT_CONFIG, __doc__)
    AlohaSim(cfg.env_id).check_cameras(cfg.cameras)
    if cfg.num_demos != -1:
        check_eval_seeds(cfg, range(demo_seeds_tried(cfg.num_demos)))
    if cfg.mode == "eval":
        run = start_run(cfg, checkpoint, distributed)
        evaluate_checkpoint(cfg, run, lambda n: AlohaEnv.from_config(cfg, n))
        return
    check_demo_cameras(cfg.cameras)

    # 2. Data: the scripted demos (made when the folder lacks them) -> train/validation chunk datasets + statistics.
    with main_process_first(distributed):  # under torchrun rank 0 makes missing demos, then the others read them
        episodes, demo_seeds = load_configured_demos(cfg, REPO_ROOT)  # made by the scripted policy if missing
    check_eval_seeds(cfg, demo_seeds)  # the seeds the files record, whoever made them
    run = start_run(cfg, checkpoint, distributed)
    data = prepare_data(cfg, episodes, cfg.action_type, cfg.cameras)

    # 3. Model: the ACT policy, sized by cfg.model, carrying the statistics.
    policy = build_policy(cfg.model, data.shape_meta, data.stats, cfg.frame_stack,
                          saved_meta=checkpoint and checkpoint["shape_meta"])

    # 4. Train: validation loss, success and stage rates in the simulator, checkpoints and videos along the way.
    final = train(cfg, run, policy, data, lambda n: AlohaEnv.from_config(cfg, n))
    stages = ", ".join(f"{key[11:]} {value:.1%}" for key, value in final.items() if key.startswith("eval/stage/"))
    print(f"[done] {run.name}: {final_summary(final)}" + (f" (stages: {stages})" if stages else "")
          + f"; checkpoints and curves in {run.ckpt_dir}")


if __name__ == "__main__":
    run_main(main)
