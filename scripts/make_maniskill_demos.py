"""Make ManiSkill demonstrations locally: motion planning + trajectory replay, no download.

    python scripts/make_maniskill_demos.py --env-id PickCube-v1 --num-demos 100 --obs-mode state
    python scripts/make_maniskill_demos.py --env-id PickCube-v1 --num-demos 100 --obs-mode rgb

The file lands where the training configs look for it (demos/<env_id>/<N>demos.<obs_mode>.<control_mode>.h5);
re-running with the file present does nothing, and a killed run resumes from its finished chunks. The control
mode defaults to the task's recipe (env/maniskill_env.py). The training scripts call the same code automatically.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.maniskill_demos import SUPPORTED_OBS_MODES, TASK_RECIPES, default_demo_path, generate_demos  # noqa: E402
from utils.config import repo_path  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="PickCube-v1", choices=sorted(TASK_RECIPES))
    parser.add_argument("--num-demos", type=int, default=100)
    parser.add_argument("--obs-mode", default="state", choices=SUPPORTED_OBS_MODES)
    parser.add_argument("--control-mode", help="default: the task's recipe (e.g. pd_ee_delta_pose for LiftPegUpright)")
    parser.add_argument("--demo-dir", default="demos")
    parser.add_argument("--out", help="output .h5 path (default: the path the training configs expect)")
    parser.add_argument("--seed", type=int, default=0, help="first motion-planning seed")
    parser.add_argument("--workers", type=int, default=0, help="processes side by side (default 0: one per CPU core)")
    args = parser.parse_args()
    if args.control_mode is None:
        args.control_mode = TASK_RECIPES[args.env_id].control_mode
        print(f"[demos] control mode {args.control_mode}: the {args.env_id} recipe")
    out = Path(args.out) if args.out else repo_path(
        default_demo_path(args.demo_dir, args.env_id, args.obs_mode, args.control_mode, args.num_demos))
    started = time.time()
    generate_demos(args.env_id, args.num_demos, args.obs_mode, args.control_mode, out, seed=args.seed,
                   workers=args.workers)
    print(f"[demos] {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
