#!/usr/bin/env bash
# Installs LeRobot's ACT code (the peer of benchmarks/train_throughput.py) into benchmarks/.lerobot_site,
# away from the project's environment: the benchmark puts that folder on sys.path of the peer only.
#
# lerobot 0.4.4 pins torch<2.11 / torchvision<0.26, older than ours, so it is installed WITHOUT its
# dependencies and runs on the project's torch build (same kernels on both sides of the comparison).
# Its modeling_act.py needs only torch/torchvision/einops, but importing it goes through lerobot's
# config, optimiser and dataset modules, so their import-time dependencies are installed as well,
# each pinned to what lerobot 0.4.4 asks for and to releases that still work with numpy 1.26.
# The README's test command runs it (about 1 min the first time, from PyPI): the tests that read a dataset LeRobot
# wrote and the LeRobot race need it. Re-running it skips the install while this script is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
TARGET=benchmarks/.lerobot_site
STAMP="$TARGET/.install_lerobot.sha256"

want=$(sha256sum "$0" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
    echo "[lerobot] the pinned copy is installed in $TARGET"
    exit 0
fi
echo "[lerobot] installing LeRobot 0.4.4's pinned copy into $TARGET (about 1 min from PyPI)"
rm -rf "$TARGET"
"$PYTHON" -m pip install --quiet --no-deps --target "$TARGET" \
    "lerobot==0.4.4" \
    "einops>=0.8,<0.9" "draccus==0.10.0" mergedeep typing_inspect mypy_extensions pyyaml-include toml \
    "huggingface_hub>=0.34.2,<0.36" safetensors \
    "datasets>=4.0,<5.0" dill multiprocess xxhash "fsspec<=2025.9.0" \
    "pandas<2.3" pytz python-dateutil tzdata "pyarrow==19.0.1" \
    "accelerate>=1.10,<2.0" "diffusers>=0.27.2,<0.36" \
    "deepdiff>=7.0.1,<9.0" orderly_set "av>=15,<16" "pyserial>=3.5,<4.0" "termcolor>=2.4,<4.0"

# Run from outside the repository: our own `datasets` package would shadow Hugging Face's there.
(cd /tmp && PYTHONPATH="$OLDPWD/$TARGET" "$OLDPWD/$PYTHON" -c \
    "import lerobot, lerobot.policies.act.modeling_act; print('lerobot', lerobot.__version__, 'ACT import ok')")
echo "$want" >"$STAMP"
