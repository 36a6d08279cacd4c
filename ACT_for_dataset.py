"""Train ACT from your own robot's recordings: a dataset folder, no simulator.

    python scripts/plot_dataset.py data.path=/data/my_task                          # look at an episode first
    python ACT_for_dataset.py data.path=/data/my_task                               # ALOHA HDF5 or LeRobot v3.0
    python ACT_for_dataset.py data.path=/data/my_task 'data.aloha_hdf5.cameras=[cam_high]' total_iters=5000
    python ACT_for_dataset.py resume=ckpts/<run>/last.pt                            # continue a run
    python ACT_for_dataset.py mode=eval checkpoint=ckpts/<run>/best.pt              # its validation L1 only
    torchrun --standalone --nproc_per_node=2 ACT_for_dataset.py data.path=...       # 2 processes (DDP)

The story: config -> episodes read from the folder (checked first, images resized to the training size as
they are read) -> chunk dataset -> ACT policy -> training loop (validation on held-out episodes: the deployed
policy's L1 picks best.pt; checkpoints, curves) -> run the checkpoint on the robot with utils/deploy.py.
"""

from datasets.own_data import read_dataset
from env.errors import UserInputError
from models.policy import build_policy
from utils.checkpoint import policy_from_checkpoint
from utils.config import parse_args, repo_path, run_main
from utils.distributed import init_distributed
from utils.evaluation import validate
from utils.run_setup import prepare_data, start_run
from utils.schema import DatasetRun
from utils.training import final_summary, train

DEFAULT_CONFIG = "configs/ACT_dataset_config.yaml"


def load_episodes(cfg: DatasetRun) -> tuple[list[dict], list[str]]:
    """The dataset's episodes and the cameras read, in order (every checkpoint records them, so that
    utils/deploy.py takes named camera frames in the trained order)."""
    if not cfg.data.path:
        raise UserInputError("data.path: not set; expected your dataset folder, e.g. data.path=/data/my_task")
    episodes, cameras, _ = read_dataset(cfg.data, repo_path(cfg.data.path))
    return episodes, cameras


def main():
    # 0. Processes: under torchrun join its process group (rank 0 reports and writes); plain python: one process.
    distributed = init_distributed()

    # 1. Config: YAML + key=value overrides; resume / eval start from the checkpoint's own config.
    cfg, checkpoint = parse_args(DEFAULT_CONFIG, __doc__)

    # 2. Data, read and checked before anything is written: a bad file stops here with one line.
    episodes, cameras = load_episodes(cfg)
    run = start_run(cfg, checkpoint, distributed, task=repo_path(cfg.data.path).name)
    data = prepare_data(cfg, episodes, cfg.action_type, cameras)
    if cfg.mode == "eval":
        if data.val_set is None:
            raise UserInputError("mode=eval reports the validation L1 and needs val_fraction > 0")
        policy = policy_from_checkpoint(cfg.model, cfg.frame_stack, checkpoint, run.device, cfg.checkpoint)
        metrics = validate(policy, data.val_set, cfg.batch_size, run.device, distributed)
        run.logger.log(metrics, checkpoint["iteration"])
        run.finish()
        print(f"[eval] {cfg.checkpoint}: {final_summary(metrics)} on {len(data.val_episodes)} held-out episodes")
        return

    # 3. Model: the ACT policy, sized by cfg.model, carrying the statistics.
    policy = build_policy(cfg.model, data.shape_meta, data.stats, cfg.frame_stack,
                          saved_meta=checkpoint and checkpoint["shape_meta"])

    # 4. Train: validation loss on held-out episodes picks best.pt; checkpoints and curves along the way.
    final = train(cfg, run, policy, data)
    print(f"[done] {run.name}: {final_summary(final)}; checkpoints and curves in {run.ckpt_dir}. Run it with "
          f"utils/deploy.py: DeployedPolicy.from_checkpoint('{run.ckpt_dir / 'best.pt'}')")


if __name__ == "__main__":
    run_main(main)
