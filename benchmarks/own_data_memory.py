"""Peak RAM and training speed of ACT_for_dataset.py on an ALOHA-sized recording.

    PYTHONPATH=. .venv/bin/python benchmarks/own_data_memory.py                     # 50 x 400 steps x 4 cameras
    PYTHONPATH=. .venv/bin/python benchmarks/own_data_memory.py --episodes 5 --iters 10   # a quick look
    PYTHONPATH=. .venv/bin/python benchmarks/own_data_memory.py --run data.frames=ram --run data.frames=disk \
        --run 'data.frames=disk num_workers=1'         # the frame paths side by side, on the same dataset
    PYTHONPATH=. .venv/bin/python benchmarks/own_data_memory.py --episodes 500     # data.frames=auto: on the fly

1. Writes a synthetic dataset in the ALOHA layout as its recorder does with compression: episodes of 400 steps,
   4 cameras (cam_high, cam_low, cam_left_wrist, cam_right_wrist) at 480x640, JPEG rows with compress_len,
   14-d qpos/qvel/action (datasets/aloha_hdf5.py's write_episode). Frames are a textured background per camera
   with objects moving over it, so the JPEGs have realistic sizes (see write_dataset).
2. Runs the real entry script on it (default config: images resized to 120x160 when read, the ManiSkill-RGB sized
   model, batch 16) for --iters iterations in a child process, once per --run (its extra key=value overrides,
   e.g. the frame path data.frames=ram|disk|auto and num_workers), and reports per run: the training process's
   peak RSS (wait4's ru_maxrss), the peak PSS of the whole process tree (the training process and its DataLoader
   workers, sampled every 0.5 s; PSS splits the pages a forked worker shares with its parent, so the sum is the
   RAM they take together), the time until training started, samples/s from its metrics.jsonl, and the CPU time
   per sample between the first and the last logged training row (the whole tree, and the training process
   alone). On a machine shared with other jobs samples/s follows their load; CPU time per sample much less so.
3. Deletes the dataset (unless --keep).
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
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


def process_tree(root: int) -> tuple[int, float, float]:
    """(PSS in bytes, CPU seconds) summed over `root` and its descendants, and `root`'s own CPU seconds, read from
    /proc (a process gone meanwhile counts 0)."""
    parents, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, grew = {root}, True
    while grew:  # add children of the tree until none is left out
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    pss = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        pss += next(int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:"))
    return pss, sum(cpu.get(pid, 0.0) for pid in tree), cpu.get(root, 0.0)


def run_training(command: list[str], ckpt_dir: Path) -> tuple[subprocess.CompletedProcess, int, int, dict]:
    """Run the entry script; returns (its result, its peak RSS in bytes, the process tree's peak PSS in bytes, the
    CPU seconds the tree and the training process spent between the first and the last logged training row, with
    the iterations in between). Every 0.5 s the tree is sampled and the run's metrics.jsonl counted."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True)
        peak_pss, window, done = 0, {}, threading.Event()

        def sample():
            nonlocal peak_pss
            while not done.wait(0.5):
                pss, tree_cpu, main_cpu = process_tree(child.pid)
                peak_pss = max(peak_pss, pss)
                metrics = next(ckpt_dir.glob("*/metrics.jsonl"), None)
                rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics else []
                iterations = [row["iteration"] for row in rows if "train/iters_per_s" in row]
                if iterations:
                    window.setdefault("first", (iterations[0], tree_cpu, main_cpu))
                    window["last"] = (iterations[-1], tree_cpu, main_cpu)

        sampler = threading.Thread(target=sample)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        done.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), out.read(), err.read())
    (first, tree_first, main_first), (last, tree_last, main_last) = window["first"], window["last"]
    cpu = {"iterations": last - first, "tree_s": tree_last - tree_first, "main_s": main_last - main_first}
    return result, usage.ru_maxrss * 1024, peak_pss, cpu  # ru_maxrss: kB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--iters", type=int, default=30, help="training iterations to time")
    parser.add_argument("--run", action="append", default=None, help="one training run's extra overrides, e.g. "
                        "'data.frames=disk num_workers=1'; repeat to compare runs on the same dataset (default: one "
                        "run with none)")
    parser.add_argument("--dir", default=None, help="where to write the dataset (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the dataset afterwards")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for ACT_for_dataset.py (every run)")
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
        table = []
        for number, run in enumerate(args.run or [""]):
            ckpt_dir = root / f"ckpts_{number}"
            command = [sys.executable, "ACT_for_dataset.py", f"data.path={folder}", f"ckpt_dir={ckpt_dir}",
                       "wandb.mode=disabled", f"total_iters={args.iters}", "log_frequency=5", "warmup_iters=5",
                       f"val_frequency={args.iters}", f"save_frequency={args.iters}", *args.overrides,
                       *shlex.split(run)]
            print(f"[bench] run {number}: {run or '(no extra overrides)'}", flush=True)
            started = time.time()
            result, peak_rss, peak_pss, cpu = run_training(command, ckpt_dir)
            wall = time.time() - started
            if result.returncode != 0:
                sys.exit(f"[bench] the run failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
            (run_dir,) = ckpt_dir.iterdir()
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            speeds = [row["train/iters_per_s"] for row in rows if "train/iters_per_s" in row][1:]  # first: warm-up
            batch_size = yaml.safe_load((run_dir / "config.yaml").read_text())["batch_size"]
            train_seconds = args.iters / np.mean([row["train/iters_per_s"] for row in rows
                                                  if "train/iters_per_s" in row])
            samples_per_s = np.median(speeds) * batch_size
            samples = cpu["iterations"] * batch_size
            tree_ms, main_ms = (1000 * cpu[key] / samples if samples else np.nan for key in ("tree_s", "main_s"))
            print(f"[bench] peak RSS {peak_rss / 2**30:.2f} GiB (training process), peak PSS {peak_pss / 2**30:.2f} "
                  f"GiB (with its workers); reading + set-up {wall - train_seconds:.0f} s; training "
                  f"{samples_per_s:.1f} samples/s (batch {batch_size}, median of {len(speeds)} windows of 5 "
                  f"iterations); CPU per sample {tree_ms:.0f} ms ({main_ms:.0f} ms in the training process, over "
                  f"{cpu['iterations']} iterations); whole run {wall:.0f} s")
            for line in result.stdout.splitlines():
                if line.startswith(("[data]", "[model]")):
                    print("       " + line)
            table.append(f"| {run or '(default)'} | {peak_rss / 2**30:.2f} | {peak_pss / 2**30:.2f} | "
                         f"{wall - train_seconds:.0f} | {samples_per_s:.2f} | {tree_ms:.0f} ({main_ms:.0f}) |")
        print(f"\n{args.episodes} episodes x {args.steps} steps x {len(CAMERAS)} cameras, {args.iters} iterations each\n"
              "| run | peak RSS, GiB | peak PSS with workers, GiB | reading + set-up, s | samples/s | CPU ms per sample "
              "(training process) |\n|---|---:|---:|---:|---:|---:|\n" + "\n".join(table))
    finally:
        if not args.keep:
            shutil.rmtree(root)
            print(f"[bench] deleted {root}")


if __name__ == "__main__":
    main()
