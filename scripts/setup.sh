#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment in .venv with requirements.txt, plus a working
# Vulkan device for ManiSkill/SAPIEN (software Vulkan on GPU-less Debian 12). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Re-install only when requirements.txt changed since the last successful install.
stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements.txt (first time: several minutes, ~6 GB with torch's CUDA libraries)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  echo "$want" >"$stamp"
fi

# SAPIEN needs a Vulkan device even for state observations.
vulkan_ok() { "$VENV/bin/python" -c "import sapien; sapien.render.RenderSystem()" >/dev/null 2>&1; }
if ! vulkan_ok; then
  if grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null && [ "$(id -u)" = 0 ]; then
    # Debian 12's own Mesa (22.x) lacks VK_KHR_external_semaphore_fd; backports' Mesa 25 has it.
    echo "[setup] no Vulkan device found: installing software Vulkan (Mesa lavapipe) from bookworm-backports"
    cat >/etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    cat <<'MSG'
[setup] ERROR: SAPIEN (ManiSkill's simulator) found no Vulkan device.
  - With an NVIDIA GPU: install the NVIDIA driver with its Vulkan ICD (nvidia_icd.json) and libvulkan1.
  - Without a GPU: install Mesa's software Vulkan (lavapipe), Mesa >= 24.3, e.g. on Debian/Ubuntu
    `apt-get install mesa-vulkan-drivers libvulkan1` from a release or backports that ships Mesa >= 24.3.
  Check with: .venv/bin/python -c "import sapien; print(sapien.render.get_device_summary())"
MSG
    exit 1
  fi
fi

echo "[setup] checking the installation"
"$VENV/bin/python" - <<'PY'
import sys
failed = []
def check(name, fn):
    try:
        print(f"  {name:<12} ok   {fn()}")
    except Exception as exc:  # report every broken piece, not only the first
        print(f"  {name:<12} FAIL {type(exc).__name__}: {exc}")
        failed.append(name)
check("torch", lambda: __import__("torch").__version__)
check("torchvision", lambda: __import__("torchvision").__version__)
check("mani_skill", lambda: __import__("mani_skill").__version__)
def render_device():
    import sapien
    sapien.render.RenderSystem()
    return sapien.render.get_device_summary().strip().splitlines()[0]
check("sapien/vulkan", render_device)
sys.exit(f"[setup] broken: {', '.join(failed)}" if failed else 0)
PY
echo "[setup] done. Activate with: source .venv/bin/activate"
