"""Training throughput with torchrun (DistributedDataParallel, gloo on CPU): samples/s at 1 and N processes.

    .venv/bin/python benchmarks/ddp_scaling.py                      # state config, 1 and 2 processes
    .venv/bin/python benchmarks/ddp_scaling.py --config configs/ACT_maniskill_config.yaml --batch-size 32

Every setting runs the real entry script (ManiSkill PickCube-v1 from its demos, made on first use; no
validation, no simulator evaluation) for --iters iterations at the same global batch, and reads back the
iterations/s the run logs (train/iters_per_s, averaged over the log windows after the first, so start-up is
not counted). samples/s = iterations/s x global batch. The settings:

    1 process  x 1 thread     python ACT_for_Maniskill.py, OMP_NUM_THREADS=1   (the reference)
    1 process  x N threads    python ACT_for_Maniskill.py, OMP_NUM_THREADS=N
    N processes x 1 thread    torchrun --standalone --nproc_per_node=N, OMP_NUM_THREADS=1 each

Ratios are against the reference measured in the same run. Run it on an otherwise idle machine.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def measure(launcher: list[str], threads: int, args, out: Path) -> float:
    """Mean logged iterations/s of one short training run."""
    ckpt_dir = out / f"run{len(list(out.glob('run*')))}"
    command = [*launcher, "ACT_for_Maniskill.py", "--config", args.config, f"total_iters={args.iters}",
               f"batch_size={args.batch_size}", "num_eval_episodes=0", f"val_frequency={args.iters}",
               f"save_frequency={args.iters}", "log_frequency=25", f"num_demos={args.num_demos}",
               f"ckpt_dir={ckpt_dir}", f"video_dir={out / 'videos'}", "wandb.mode=disabled", "exp_name=scaling"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    (run_dir,) = ckpt_dir.iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [row["train/iters_per_s"] for row in rows if "train/iters_per_s" in row][1:]
    return sum(speeds) / len(speeds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ACT_maniskill_state_config.yaml")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (split over processes)")
    parser.add_argument("--num-demos", type=int, default=10, help="demos to train on (made on first use)")
    args = parser.parse_args()
    n = args.processes
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    settings = [("1 process x 1 thread", [sys.executable], 1), (f"1 process x {n} threads", [sys.executable], n),
                (f"{n} processes x 1 thread (torchrun, gloo)", torchrun, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        results = [(name, measure(launcher, threads, args, Path(tmp))) for name, launcher, threads in settings]
    reference = results[0][1] * args.batch_size
    print(f"\n{args.config}, global batch {args.batch_size}, {args.iters} iterations per setting, "
          f"{os.cpu_count()} CPU cores\n")
    print("| setting | samples/s | vs 1 process x 1 thread |\n|---|---|---|")
    for name, iters_per_s in results:
        samples = iters_per_s * args.batch_size
        print(f"| {name} | {samples:.0f} | {samples / reference:.2f}x |")


if __name__ == "__main__":
    main()
