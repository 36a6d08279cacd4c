"""Peak RAM and training speed of ACT_for_dataset.py on an ALOHA-sized recording.

    PYTHONPATH=. .venv/bin/python benchmarks/own_data_memory.py                     # 50 x 400 steps x 4 cameras
    PYTHONPATH=. .venv/bin/python benchmarks/own_data_memory.py --episodes 5 --iters 10   # a quick look

1. Writes a synthetic dataset in the ALOHA layout as its recorder does with compression: episodes of 400 steps,
   4 cameras (cam_high, cam_low, cam_left_wrist, cam_right_wrist) at 480x640, JPEG rows with compress_len,
   14-d qpos/qvel/action (datasets/aloha_hdf5.py's write_episode). Frames are a textured background per camera
   with objects moving over it, so the JPEGs have realistic sizes (see write_dataset).
2. Runs the real entry script on it (default config: images resized to 120x160 when read, the ManiSkill-RGB sized
   model, batch 16) for --iters iterations in a child process, and reports the child's peak RSS
   (getrusage's ru_maxrss), the time until training started, and samples/s from its metrics.jsonl.
3. Deletes the dataset (unless --keep).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from datasets.aloha_hdf5 import write_episode

CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")
REPO = Path(__file__).resolve().parents[1]


def synthetic_frames(rng: np.random.Generator, steps: int, height: int, width: int) -> np.ndarray:
    """(steps, H, W, 3) uint8: a smooth random texture with two boxes gliding over it and a little sensor noise."""
    coarse = rng.integers(0, 256, (height // 40, width // 40, 3)).astype(np.float32)
    background = np.kron(coarse, np.ones((40, 40, 1)))  # 40-pixel blocks ...
    background = (background + np.roll(background, 20, axis=0) + np.roll(background, 20, axis=1)) / 3  # ... softened
    frames = np.repeat(background[None].astype(np.uint8), steps, axis=0)
    for step in range(steps):
        x = int((width - 120) * (0.5 + 0.5 * np.sin(step / 6)))
        y = int((height - 120) * (0.5 + 0.5 * np.cos(step / 4.5)))
        frames[step, y:y + 120, x:x + 90] = (200, 40, 40)
        frames[step, height - y - 80:height - y, width - x - 60:width - x] = (30, 160, 220)
    return frames + rng.integers(0, 6, (height, width, 3), dtype=np.uint8)  # one noise field: per frame is slow


def write_dataset(folder: Path, episodes: int, steps: int, height: int, width: int):
    """Episode 0 is written (each camera cycling through 40 distinct frames, about 50 KB per JPEG); the others are
    hard links to it. The reader decodes and resizes every step of every file all the same, so RAM and time are
    those of distinct episodes, at the disk cost of one (and the CPU cost of encoding one)."""
    rng = np.random.default_rng(0)
    t = np.arange(steps)[:, None] / steps
    qpos = np.sin(2 * np.pi * t + rng.uniform(0, 2 * np.pi, 14)).astype(np.float32)
    frames = {name: synthetic_frames(rng, 40, height, width)[np.arange(steps) % 40] for name in CAMERAS}
    first = folder / "episode_0.hdf5"
    write_episode(first, qpos, np.roll(qpos, -1, axis=0), frames, qvel=np.gradient(qpos, axis=0), sim=True,
                  jpeg_quality=90)
    for episode in range(1, episodes):
        os.link(first, folder / f"episode_{episode}.hdf5")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--iters", type=int, default=30, help="training iterations to time")
    parser.add_argument("--dir", default=None, help="where to write the dataset (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the dataset afterwards")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for ACT_for_dataset.py")
    args = parser.parse_args()

    root = Path(args.dir or tempfile.mkdtemp(prefix="act_own_data_"))
    folder = root / "aloha_synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.time()
        write_dataset(folder, args.episodes, args.steps, 480, 640)
        size = (folder / "episode_0.hdf5").stat().st_size
        print(f"[bench] {args.episodes} episodes x {args.steps} steps x {len(CAMERAS)} cameras at 480x640: "
              f"{size / 2**20:.0f} MiB per episode file ({args.episodes * size / 2**30:.2f} GiB as distinct files), "
              f"written in {time.time() - started:.0f} s")
        command = [sys.executable, "ACT_for_dataset.py", f"data.path={folder}", f"ckpt_dir={root / 'ckpts'}",
                   "wandb.mode=disabled", f"total_iters={args.iters}", "log_frequency=5", "warmup_iters=5",
                   f"val_frequency={args.iters}", f"save_frequency={args.iters}", *args.overrides]
        started = time.time()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        wall = time.time() - started
        if result.returncode != 0:
            sys.exit(f"[bench] the run failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
        (run_dir,) = (root / "ckpts").iterdir()
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        speeds = [row["train/iters_per_s"] for row in rows if "train/iters_per_s" in row][1:]  # first: warm-up
        batch_size = yaml.safe_load((run_dir / "config.yaml").read_text())["batch_size"]
        train_seconds = args.iters / np.mean([row["train/iters_per_s"] for row in rows if "train/iters_per_s" in row])
        print(f"[bench] peak RSS {peak_rss / 2**30:.2f} GiB; reading + set-up {wall - train_seconds:.0f} s; "
              f"training {np.median(speeds) * batch_size:.1f} samples/s (batch {batch_size}, median of "
              f"{len(speeds)} windows of 5 iterations); whole run {wall:.0f} s")
        for line in result.stdout.splitlines():
            if line.startswith(("[data]", "[model]")):
                print("       " + line)
    finally:
        if not args.keep:
            shutil.rmtree(root)
            print(f"[bench] deleted {root}")


if __name__ == "__main__":
    main()
