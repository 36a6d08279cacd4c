"""Train ACT from your own robot's recordings: a dataset folder, no simulator.

    python scripts/plot_dataset.py data.path=/data/my_task                          # look at an episode first
    python ACT_for_dataset.py data.path=/data/my_task                               # ALOHA HDF5 or LeRobot v3.0
    python ACT_for_dataset.py data.path=/data/my_task 'data.aloha_hdf5.cameras=[cam_high]' total_iters=5000
    python ACT_for_dataset.py resume=ckpts/<run>/last.pt                            # continue a run
    python ACT_for_dataset.py mode=eval checkpoint=ckpts/<run>/best.pt              # its validation L1 only
    torchrun --standalone --nproc_per_node=2 ACT_for_dataset.py data.path=...       # 2 processes (DDP)

The story: config -> episodes read from the folder (checked first, images resized to the training size as
they are read) -> replay buffer -> ACT policy -> training loop (validation on held-out episodes: the deployed
policy's L1 picks best.pt; checkpoints, curves) -> run the checkpoint on the robot with utils/deploy.py.
"""

from datasets.own_data import detect_format, load_own_episodes
from env.errors import UserInputError
from utils.config import parse_args, repo_path, run_main
from utils.distributed import init_distributed
from utils.training import build_policy, final_summary, policy_from_checkpoint, prepare_data, start_run, train, validate

DEFAULT_CONFIG = "configs/ACT_dataset_config.yaml"


def load_episodes(cfg):
    """The dataset's episodes; the format and cameras found are written into cfg, so that config.yaml and every
    checkpoint record what was trained on (utils/deploy.py reads the camera order from there)."""
    data = cfg.data
    if not data.path:
        raise UserInputError("data.path: not set; expected your dataset folder, e.g. data.path=/data/my_task")
    if data.action_type not in ("absolute", "delta"):
        raise UserInputError(f"data.action_type must be 'absolute' or 'delta', got {data.action_type!r}")
    data.format = detect_format(repo_path(data.path), data.format)
    keys = data[data.format]
    episodes, cameras = load_own_episodes(repo_path(data.path), data.format, keys.state, keys.action, keys.cameras,
                                          data.image_size, data.num_episodes, data.aloha_hdf5.shift_real_actions)
    keys.cameras = cameras
    return episodes


def main():
    # 0. Processes: under torchrun join its process group (rank 0 reports and writes); plain python: one process.
    distributed = init_distributed()

    # 1. Config: YAML + key=value overrides; resume / eval start from the checkpoint's own config.
    cfg, checkpoint = parse_args(DEFAULT_CONFIG, __doc__)
    cfg.num_eval_episodes = 0  # the shared loop's simulator switch: there is none, best.pt follows val/l1

    # 2. Data, read and checked before anything is written: a bad file stops here with one line.
    episodes = load_episodes(cfg)
    run = start_run(cfg, checkpoint, distributed, task=repo_path(cfg.data.path).name)
    data = prepare_data(cfg, episodes, cfg.data.action_type)
    if cfg.mode == "eval":
        if data.val_set is None:
            raise UserInputError("mode=eval reports the validation L1 and needs val_fraction > 0")
        policy = policy_from_checkpoint(cfg, checkpoint, run.device, cfg.checkpoint)
        metrics = validate(policy, data.val_set, cfg.batch_size, run.device, distributed)
        run.logger.log(metrics, checkpoint["iteration"])
        run.finish()
        print(f"[eval] {cfg.checkpoint}: {final_summary(metrics)} on {len(data.val_episodes)} held-out episodes")
        return

    # 3. Model: the ACT policy, sized by cfg.model, carrying the statistics.
    policy = build_policy(cfg, data.shape_meta, data.stats, checkpoint)

    # 4. Train: validation loss on held-out episodes picks best.pt; checkpoints and curves along the way.
    final = train(cfg, run, policy, data, make_env=None)
    print(f"[done] {run.name}: {final_summary(final)}; checkpoints and curves in {run.ckpt_dir}. Run it with "
          f"utils/deploy.py: DeployedPolicy.from_checkpoint('{run.ckpt_dir / 'best.pt'}')")


if __name__ == "__main__":
    run_main(main)
