"""Export a checkpoint's policy for sharing: safetensors weights + JSON, nothing that can run code when loaded.

    python scripts/export_policy.py ckpts/<run>/best.pt                         # -> ckpts/<run>/best_policy/
    python scripts/export_policy.py ckpts/<run>/best.pt exports/pickcube_state  # any folder
    python ACT_for_Maniskill.py mode=eval checkpoint=ckpts/<run>/best_policy    # evaluate the export

The folder holds policy.safetensors (the weights the run evaluates with, the EMA copy when it kept one, and the
normalisation statistics) and policy.json (the run's config, shape metadata, iteration and run name). It has
no optimizer or random state, so it evaluates and deploys but does not resume training.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoint import EXPORT_WEIGHTS, export_policy, load_checkpoint  # noqa: E402
from utils.config import repo_path, run_main  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a training checkpoint, e.g. ckpts/<run>/best.pt")
    parser.add_argument("out", nargs="?", help="output folder (default: <checkpoint>_policy beside the checkpoint)")
    args = parser.parse_args()
    source = repo_path(args.checkpoint)
    out = Path(args.out) if args.out else source.with_name(f"{source.stem}_policy")
    checkpoint = load_checkpoint(source)
    export_policy(checkpoint, out)
    size = (out / EXPORT_WEIGHTS).stat().st_size
    print(f"[export] {checkpoint['run_name']} at iteration {checkpoint['iteration']} -> {out} "
          f"({size / 2**20:.1f} MiB of weights; the checkpoint was {source.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    run_main(main)
