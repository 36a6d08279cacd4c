"""Make scripted ALOHA sim demonstrations (datasets/aloha_scripted.py) in the ALOHA HDF5 layout.

    python scripts/make_aloha_demos.py --task transfer_cube --num-demos 50 --out demos/aloha_transfer_cube
    python scripts/make_aloha_demos.py --task insertion --num-demos 50 --out demos/aloha_insertion --workers 2

Each demo: a waypoint policy in gym-aloha's mocap task, replayed as joint commands in the joint-space task with the
top camera recorded at 480x640 (JPEG rows), 400 steps; only episodes reaching reward 4 are kept. Prints how many
were made of how many tried. A killed run resumes (episode files already written are kept).
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.aloha_scripted import make_scripted_demos  # noqa: E402
from env.aloha_env import TASKS  # noqa: E402
from env.errors import UserInputError  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--num-demos", type=int, default=50, help="how many successful demos to write (paper: 50)")
    parser.add_argument("--out", required=True, help="folder for episode_<i>.hdf5")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes rendering and writing demos (default: one per CPU core)")
    args = parser.parse_args()
    try:
        report = make_scripted_demos(args.task, args.num_demos, args.out, max(args.workers, 1))
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"made {report['made']} of {report['attempted']} attempted, {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
