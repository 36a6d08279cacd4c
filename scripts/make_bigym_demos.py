"""Make scripted BiGym demonstrations offline with this project's solvers (datasets/bigym_solvers.py).

    python scripts/make_bigym_demos.py --env-id DishwasherClose --num-demos 100
    python scripts/make_bigym_demos.py --env-id ReachTarget --num-demos 100 --cache-root /data/bigym_scripted
    python scripts/make_bigym_demos.py --env-id ReachTarget --num-demos 20 --noise 0.1   # DART recovery demos

Each attempt starts from a perturbed start (seeded; robot base and arms, the task's door/drawer), the solver
moves the robot from the simulator's state while BiGym's DemoRecorder records (500 Hz, absolute joint
positions, floating base), and only demos BiGym's success check calls solved are kept. With --noise the robot
is driven off the plan by DART noise while the plan is kept as the label. They land in a DemoStore cache per solver
version and noise level (under demos/bigym_scripted), where `ACT_for_bigym.py demo_source=scripted` reads them;
the training script also makes them itself when fewer than num_demos exist. A killed run resumes. Attempts run in
one worker process per core (--workers), kept in seed order: any number of workers keeps the same seeds' demos.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.bigym_demos import SCRIPTED_DEMO_ROOT, make_scripted_demos  # noqa: E402
from datasets.bigym_solvers import SCRIPTED_TASKS  # noqa: E402
from env.bigym_env import PELVIS_DOFS  # noqa: E402
from utils.config import repo_path  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="DishwasherClose", choices=sorted(SCRIPTED_TASKS))
    parser.add_argument("--num-demos", type=int, default=100, help="how many solved demos the cache should hold")
    parser.add_argument("--cache-root", default=SCRIPTED_DEMO_ROOT, help="DemoStore root (relative to the repo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first attempt (then +1 per attempt)")
    parser.add_argument("--floating-dofs", nargs="+", choices=PELVIS_DOFS,
                        help="floating-base joints in the action (default: the task's recipe, as training uses)")
    parser.add_argument("--noise", type=float,
                        help="DART noise, rad on the arm joints (default: the task's recipe demo_noise, as training uses)")
    parser.add_argument("--workers", type=int, default=0, help="processes attempting demos side by side (0: one per core)")
    args = parser.parse_args()
    recipe = SCRIPTED_TASKS[args.env_id].recipe
    floating_dofs = args.floating_dofs or recipe["floating_dofs"]
    noise = recipe["demo_noise"] if args.noise is None else args.noise
    if noise < 0:
        parser.error(f"--noise must be >= 0, got {noise}")
    make_scripted_demos(args.env_id, args.num_demos, repo_path(args.cache_root), first_seed=args.seed,
                        floating_dofs=floating_dofs, noise=noise, workers=args.workers or os.cpu_count() or 1)


if __name__ == "__main__":
    main()
