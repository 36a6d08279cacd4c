"""Look at your data before training: one episode's state and action curves and a strip of camera frames, as a PNG.

    python scripts/plot_dataset.py /data/my_task                              # episode 0 -> my_task_episode0.png
    python scripts/plot_dataset.py /data/my_task --episode 3 --out ep3.png
    python scripts/plot_dataset.py /data/my_task 'data.aloha_hdf5.state=[observations/qpos,observations/qvel]'

The episode is read exactly as ACT_for_dataset.py reads it (same config keys, same checks over every episode,
frames at the training size data.image_size), so the picture shows what the policy will see.
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.own_data import read_dataset  # noqa: E402
from env.errors import UserInputError  # noqa: E402
from utils.config import load_config, run_main  # noqa: E402

NUM_FRAMES = 6  # frames per camera in the strip, evenly spread over the episode


def plot_episode(episode: dict, cameras: list[str], title: str, out: Path):
    num_rows = 2 + len(cameras)
    figure = plt.figure(figsize=(2.2 * NUM_FRAMES, 2.6 * num_rows), layout="constrained")
    grid = figure.add_gridspec(num_rows, NUM_FRAMES)
    for row, key in enumerate(("state", "actions")):
        axes = figure.add_subplot(grid[row, :])
        axes.plot(episode[key], linewidth=1)
        axes.set(xlabel="step", ylabel=key, xlim=(0, len(episode[key]) - 1),
                 title=f"{key}: {episode[key].shape[1]} dimensions (one line each)")
    steps = np.linspace(0, len(episode["actions"]) - 1, NUM_FRAMES).round().astype(int)
    for camera, name in enumerate(cameras):
        for column, step in enumerate(steps):
            axes = figure.add_subplot(grid[2 + camera, column])
            axes.imshow(episode["images"][step, camera].transpose(1, 2, 0))  # (3, H, W) -> (H, W, 3)
            axes.set_xticks([]), axes.set_yticks([])
            axes.set_title(f"step {step}", fontsize=8)
            if column == 0:
                axes.set_ylabel(name, fontsize=8)
    figure.suptitle(title)
    figure.savefig(out, dpi=80)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="the dataset folder")
    parser.add_argument("--episode", type=int, default=0, help="which episode (0 = the first)")
    parser.add_argument("--out", help="PNG to write (default: <folder name>_episode<i>.png here)")
    parser.add_argument("--config", default="configs/ACT_dataset_config.yaml", help="for the data.* keys")
    parser.add_argument("overrides", nargs="*", help="data.* key=value overrides, as for ACT_for_dataset.py")
    args = parser.parse_intermixed_args()  # overrides before or after --episode
    data = load_config("configs/ACT_dataset_config.yaml", args.config, [f"data.path={args.path}", *args.overrides]).data
    folder = Path(data.path)
    if args.episode < 0:
        raise UserInputError(f"--episode must be >= 0, got {args.episode}")
    episodes, cameras, data_format = read_dataset(data, folder, only=args.episode)
    out = Path(args.out or f"{folder.name}_episode{args.episode}.png")
    plot_episode(episodes[0], cameras, f"{folder} ({data_format}), episode {args.episode}: "
                                       f"{len(episodes[0]['actions'])} steps", out)
    print(f"[plot] {out}")


if __name__ == "__main__":
    run_main(main)
