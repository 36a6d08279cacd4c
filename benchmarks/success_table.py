"""Success-rate table of finished runs, as markdown.

    # collect every finished run under ckpts/ (or the run folders given) into a table
    python benchmarks/success_table.py [ckpts/<run> ...] [--out benchmarks/RESULTS.md]
    # train (state config, 100 motion-planning demos) and then collect, one task after another
    python benchmarks/success_table.py --train PickCube-v1 PushCube-v1 StackCube-v1 --out benchmarks/RESULTS.md

A row is one run: its final simulator evaluation (the last eval row of metrics.jsonl), the wall time from
start-up to that evaluation (demo generation, training and evaluations included) and the device.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
STATE_CONFIG = "configs/ACT_maniskill_state_config.yaml"


def train(env_id: str, extra: list[str]) -> None:
    """The project's own command; the task's recipe (env/maniskill_env.py) sets control mode and episode length."""
    command = [sys.executable, "ACT_for_Maniskill.py", "--config", STATE_CONFIG, f"env_id={env_id}", "exp_name=table",
               *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO_ROOT, check=True)


def table_row(run_dir: Path) -> dict | None:
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.exists():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    evals = [row for row in rows if "eval/success_once" in row]
    if not evals:
        return None
    final = evals[-1]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    info = json.loads((run_dir / "run_info.json").read_text()) if (run_dir / "run_info.json").exists() else {}
    minutes = final.get("time/elapsed_s", float("nan")) / 60
    return {
        "run": run_dir.name, "task": cfg["env_id"], "obs": cfg["obs_mode"], "control": cfg["control_mode"],
        "demos": cfg["num_demos"], "iterations": final["iteration"], "minutes": minutes,
        "device": info.get("device", "?"), "success_once": final["eval/success_once"],
        "success_at_end": final["eval/success_at_end"], "episodes": int(final["eval/num_episodes"]),
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| task | obs | control | demos | iterations | wall time | device | success (any step) | success (at end) | run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['obs']} | {r['control']} | {r['demos']} | {r['iterations']} | "
                     f"{r['minutes']:.0f} min | {r['device']} | **{r['success_once']:.0%}** of {r['episodes']} | "
                     f"{r['success_at_end']:.0%} | `{r['run']}` |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (default: every folder in ckpts/)")
    parser.add_argument("--train", nargs="*", default=[], metavar="ENV_ID", help="train these tasks first")
    parser.add_argument("--override", nargs="*", default=[], help="extra key=value overrides for --train runs")
    parser.add_argument("--out", type=Path, help="write the table to this markdown file as well")
    args = parser.parse_args()
    before = set((REPO_ROOT / "ckpts").glob("*"))
    for env_id in args.train:
        train(env_id, args.override)
    run_dirs = args.runs or (sorted(set((REPO_ROOT / "ckpts").glob("*")) - before) if args.train
                             else sorted((REPO_ROOT / "ckpts").glob("*")))
    rows = [row for row in map(table_row, run_dirs) if row is not None]
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
