#!/usr/bin/env bash
# Install BiGym (github.com/chernyadev/bigym, not on PyPI) into .venv, next to ManiSkill.
#
#   scripts/install_bigym.sh /path/to/bigym-source   # a local checkout/copy of BiGym's repository
#   scripts/install_bigym.sh                         # clones it from GitHub (needs internet)
#
# BiGym's setup.py pins two git-only dependencies (stepjam's Gymnasium fork and stepjam/mojo) and would
# replace this project's gymnasium 0.29.1. So BiGym is installed with --no-deps and its dependencies
# are installed explicitly at versions verified to work with torch 2.14.1 / mani_skill 3.0.1:
#   - numpy stays 1.26.4 (ManiSkill's planner segfaults with numpy 2; BiGym pins 1.26 too)
#   - gymnasium stays 0.29.1 (the fork 0.29.2 differs only in the on-screen viewer)
#   - mojo comes from PyPI's mojo-mujoco-wrapper 0.1.1, a repackaging that provides `import mojo`
# BiGym's VR extras (dearpygui, pyopenxr) are not needed. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "[bigym] $PY not found: run scripts/setup.sh first" >&2
  exit 1
fi

src=${1:-}
if [ -z "$src" ]; then
  src=$(mktemp -d)/bigym
  echo "[bigym] cloning https://github.com/chernyadev/bigym into $src"
  git clone --depth 1 https://github.com/chernyadev/bigym "$src"
fi
if [ ! -f "$src/setup.py" ] || [ ! -f "$src/bigym/bigym_env.py" ] || [ ! -f "$src/demonstrations/demo_store.py" ]; then
  echo "[bigym] '$src' is not a BiGym source tree (expected setup.py, bigym/bigym_env.py, demonstrations/demo_store.py)" >&2
  exit 1
fi

echo "[bigym] installing BiGym's dependencies"
"$PY" -m pip install -q "numpy==1.26.4" "gymnasium==0.29.1" "mujoco==3.1.5" "dm_control==1.0.19" \
  safetensors pyquaternion mujoco_utils wget numpy-quaternion imageio pyyaml
"$PY" -m pip install -q --no-deps "mojo-mujoco-wrapper==0.1.1"

echo "[bigym] installing BiGym from $src"
"$PY" -m pip install -q --no-deps "$src"

echo "[bigym] checking: build and step one task headless"
MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONPATH=. "$PY" - <<'PY'
import numpy as np
import torch, gymnasium, bigym
from env.bigym_env import BiGymEnv

env = BiGymEnv("DishwasherClose", num_envs=1, cameras=["head"], image_size=84, action_mode="absolute",
               control_frequency=50, max_episode_steps=1, fast_rendering=True)
obs = env.reset(seed=0)
obs, reward, success = env.step(np.zeros((1, env.action_dim), np.float32))
env.close()
print(f"  bigym {bigym.__version__}, numpy {np.__version__}, gymnasium {gymnasium.__version__}, torch {torch.__version__}")
print(f"  DishwasherClose: state {obs['state'].shape}, images {obs['images'].shape}, action_dim {env.action_dim}")
PY
echo "[bigym] done"
