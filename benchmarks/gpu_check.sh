#!/usr/bin/env bash
# The checks only a CUDA machine can make, as one prepared script for a lent GPU: the project's own machines have
# none, so without it every CUDA path is unverified. It installs nothing and needs no internet: python3 with torch,
# torchvision, h5py, pyyaml, tqdm, matplotlib and imageio (what the lent H200 image holds; no simulator).
#
#   bash benchmarks/gpu_check.sh [out_dir]      # the log and the table land in out_dir (default /tmp/gpu_check)
#   PY=.venv/bin/python ITERS=40 PIPE_ITERS=30 EXTRA="data.image_size=[32,32] model.d_model=32" bash ...  # on a CPU
#
# 1. Training on CUDA: ACT_for_dataset.py on a synthetic ALOHA HDF5 dataset made here (2 cameras at 120x160, the
#    dataset config's model, lr 1e-4). Checked: the run says cuda and fp32 (precision=auto's choice on CUDA), the
#    training L1 falls by a third, and a resume from last.pt continues to the end.
# 2. The CUDA input pipeline: training it/s at batch 8 / 64 / 256, batches sampled on the training thread
#    (num_workers=0) against 4 DataLoader workers with pinned memory (num_workers=4).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-/tmp/gpu_check}
PY=${PY:-python3}
ITERS=${ITERS:-300}
PIPE_ITERS=${PIPE_ITERS:-200}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
LOG="$OUT_DIR/gpu_check.log"
DATA="$OUT_DIR/synthetic_aloha"

"$PY" - "$DATA" <<'EOF' 2>&1 | tee "$LOG"
import sys
from pathlib import Path

import numpy as np
import torch

from datasets.aloha_hdf5 import write_episode

print(f"[gpu_check] torch {torch.__version__}, cuda {torch.version.cuda}, device "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE: this is not a CUDA machine'}")
folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
steps = 200
for episode in range(20):  # smooth joint paths; the action is the next state, so there is something to learn
    phase = rng.uniform(0, 2 * np.pi, size=14)
    qpos = np.sin(np.linspace(0, 3, steps + 1)[:, None] + phase).astype(np.float32)
    shade = (qpos[:-1, :1, None, None] * 100 + 128).astype(np.uint8)  # (T, 1, 1, 1): the images follow the state
    frames = np.broadcast_to(shade, (steps, 120, 160, 3)).copy()
    write_episode(folder / f"episode_{episode}.hdf5", qpos[:-1], qpos[1:], {"top": frames, "left_wrist": frames})
print(f"[gpu_check] 20 synthetic episodes in {folder}")
EOF

# EXTRA: more key=value overrides, e.g. a small model to try the script out on a CPU
common=(data.path="$DATA" val_fraction=0.1 wandb.mode=disabled ckpt_dir="$OUT_DIR/ckpts" save_frequency=100
        val_frequency=100 log_frequency=20 warmup_iters=50 ${EXTRA:-})
"$PY" ACT_for_dataset.py "${common[@]}" exp_name=train total_iters="$ITERS" lr=1e-4 2>&1 | tee -a "$LOG"
run=$(ls -d "$OUT_DIR"/ckpts/train-* | tail -1)
"$PY" ACT_for_dataset.py resume="$run/last.pt" total_iters=$((ITERS + 100)) 2>&1 | tee -a "$LOG"
for batch in 8 64 256; do
    for workers in 0 4; do
        "$PY" ACT_for_dataset.py "${common[@]}" exp_name="pipe_b${batch}_w${workers}" total_iters="$PIPE_ITERS" \
            batch_size="$batch" num_workers="$workers" save_frequency=1000 val_frequency=1000 2>&1 | tee -a "$LOG"
    done
done

"$PY" - "$OUT_DIR" "$LOG" "$ITERS" <<'EOF' | tee "$OUT_DIR/gpu_check_table.md"
import json
import statistics
import sys
from pathlib import Path

out_dir, log, iters = Path(sys.argv[1]), Path(sys.argv[2]).read_text(), int(sys.argv[3])


def metrics(prefix):
    run = sorted((out_dir / "ckpts").glob(f"{prefix}-*"))[-1]
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


checks = {"[run] ... on cuda": " on cuda" in log, "[precision] fp32 (auto on CUDA)": "precision=auto on CUDA" in log}
train = [row for row in metrics("train") if "train/l1" in row]
checks["training L1 falls by a third"] = train[-1]["train/l1"] < 2 / 3 * train[0]["train/l1"]
checks["the resumed run reached its end"] = max(row["iteration"] for row in train) == iters + 100
for name, ok in checks.items():
    print(f"{'ok  ' if ok else 'FAIL'} {name}")
print("\n| batch | it/s, sampled on the training thread | it/s, 4 DataLoader workers, pinned memory |\n|---:|---:|---:|")
for batch in (8, 64, 256):
    speeds = []
    for workers in (0, 4):
        rows = [row["train/iters_per_s"] for row in metrics(f"pipe_b{batch}_w{workers}") if "train/iters_per_s" in row]
        speeds.append(statistics.median(rows[1:] or rows))  # the first row holds the start-up
    print(f"| {batch} | {speeds[0]:.1f} | {speeds[1]:.1f} |")
sys.exit(0 if all(checks.values()) else 1)
EOF
