"""The real entry script end to end on real demos: train, validate, evaluate, save, resume, eval-only."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from utils.checkpoint import load_checkpoint, load_exported_policy
from utils.config import REPO_ROOT


def run_script(*overrides):
    result = subprocess.run([sys.executable, "ACT_for_Maniskill.py", "--config",
                             "configs/ACT_maniskill_state_config.yaml", *overrides],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def tiny_run(pickcube_state_demos, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    common = [f"demo_path={pickcube_state_demos}", "num_demos=4", "val_fraction=0.25", f"ckpt_dir={out / 'ckpts'}",
              f"video_dir={out / 'videos'}", "wandb.mode=disabled", "batch_size=16", "warmup_iters=2",
              "model.d_model=32", "model.dim_feedforward=64", "model.chunk_size=8", "max_episode_steps=25",
              "log_frequency=10", "num_eval_envs=2", "num_eval_episodes=2"]
    log = run_script(*common, "exp_name=tiny", "total_iters=30", "val_frequency=30", "eval_frequency=30",
                     "save_frequency=20")
    (run_dir,) = (out / "ckpts").iterdir()
    return {"out": out, "run_dir": run_dir, "log": log, "common": common}


def test_run_writes_checkpoints_metrics_curves_and_video(tiny_run):
    run_dir = tiny_run["run_dir"]
    assert run_dir.name.startswith("tiny-PickCube-v1-1-")
    assert "layers: models/fast_cpu.py" in tiny_run["log"]  # the [model] line names the code that runs
    for name in ("config.yaml", "last.pt", "best.pt", "iter_0000020.pt", "iter_0000030.pt", "training_curves.png"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/l1" in row for row in rows) and any("train/l1" in row for row in rows)
    evals = [row for row in rows if "eval/success_once" in row]
    assert len(evals) == 1 and evals[0]["eval/num_episodes"] == 2
    # The logged rates are those of the per-episode outcomes saved beside them, on the test seeds (eval_seed on).
    episodes = json.loads((run_dir / "episodes_iter0000030.json").read_text())
    assert [(e["episode"], e["seed"]) for e in episodes] == [(0, 1_000_000), (1, 1_000_001)]
    assert evals[0]["eval/success_once"] == sum(e["success_once"] for e in episodes) / 2
    assert evals[0]["eval/success_at_end"] == sum(e["success_at_end"] for e in episodes) / 2
    assert all(e["success_once"] or not e["success_at_end"] for e in episodes)  # solved at the end: solved once
    tag = "success" if episodes[0]["success_once"] else "fail"
    videos = list((tiny_run["out"] / "videos" / run_dir.name).glob("iter0000030_ep000_*.mp4"))
    assert [v.name for v in videos] == [f"iter0000030_ep000_{tag}.mp4"] and videos[0].stat().st_size > 10_000


def test_train_and_validation_episodes_do_not_overlap(tiny_run):
    checkpoint = torch.load(tiny_run["run_dir"] / "last.pt", weights_only=True)
    split = checkpoint["split"]
    assert len(split["val"]) == 1 and len(split["train"]) == 3 and not set(split["train"]) & set(split["val"])
    assert checkpoint["iteration"] == 30 and "state_mean" in str(checkpoint["policy"].keys())


def test_resume_continues_at_the_saved_iteration(tiny_run):
    run_dir = tiny_run["run_dir"]
    log = run_script(*tiny_run["common"], f"resume={run_dir / 'iter_0000020.pt'}", "total_iters=40",
                     "num_eval_episodes=0")
    assert "[resume]" in log and "at iteration 20" in log
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert checkpoint["iteration"] == 40
    iterations = [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert iterations == sorted(iterations) and iterations[-1] == 40  # history rewritten from iteration 20 on


def test_eval_only_mode_reports_a_success_rate(tiny_run):
    best = tiny_run["run_dir"] / "best.pt"
    log = run_script(*tiny_run["common"], "mode=eval", f"checkpoint={best}", "capture_video=false")
    iteration = torch.load(best, weights_only=True)["iteration"]
    assert f"[eval @ {iteration}] success_once" in log and "over 2 episodes" in log


def test_an_exported_policy_evaluates_exactly_like_its_checkpoint(tiny_run, tmp_path):
    """scripts/export_policy.py writes safetensors + JSON (no pickle); mode=eval on the export gives the same
    rollouts as on the checkpoint, and the export cannot be resumed (it has no training state)."""
    best = tiny_run["run_dir"] / "best.pt"
    export = subprocess.run([sys.executable, "scripts/export_policy.py", str(best), str(tmp_path / "shared")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["policy.json", "policy.safetensors"]
    exported, saved = load_exported_policy(tmp_path / "shared"), load_checkpoint(best)
    assert exported["policy"].keys() == saved["policy"].keys() and "action_std" in exported["policy"]
    assert all(torch.equal(exported["policy"][k], saved["policy"][k]) for k in saved["policy"])
    assert exported["config"] == saved["config"] and exported["iteration"] == saved["iteration"]

    eval_lines = [next(line for line in run_script(*tiny_run["common"], "mode=eval", f"checkpoint={source}",
                                                   "capture_video=false").splitlines() if line.startswith("[eval @"))
                  for source in (best, tmp_path / "shared")]
    strip_seconds = lambda line: line.rsplit("(", 1)[0]  # noqa: E731
    assert strip_seconds(eval_lines[0]) == strip_seconds(eval_lines[1])
    resumed = subprocess.run([sys.executable, "ACT_for_Maniskill.py", *tiny_run["common"],
                              f"resume={tmp_path / 'shared'}"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 2 and "is an exported policy" in resumed.stderr.strip().splitlines()[-1]


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_run, tmp_path):
    """Resume a good run with an absurd learning rate: it must stop with one line naming the iteration and the last
    good checkpoint, not save NaN weights."""
    run_dir = tiny_run["run_dir"]
    good = (run_dir / "last.pt").read_bytes()
    good_iteration = torch.load(run_dir / "last.pt", weights_only=True)["iteration"]  # 40 after the resume test
    result = subprocess.run([sys.executable, "ACT_for_Maniskill.py", *tiny_run["common"],
                             f"resume={run_dir / 'last.pt'}", "lr=1e30", "total_iters=80", "num_eval_episodes=0"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert re.match(r"stopped: non-finite (training loss|weights) at iteration \d+", line), line
    assert (f"the last good checkpoint is {run_dir / 'last.pt'} (iteration {good_iteration}); continue with: python "
            f"ACT_for_Maniskill.py resume={run_dir / 'last.pt'} lr=<lower> or grad_clip=<lower>") in line
    assert (run_dir / "last.pt").read_bytes() == good


def test_killed_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one(pickcube_state_demos, tmp_path):
    """kill -9 a run after its first checkpoint, resume from last.pt: the final weights, optimizer state and
    logged losses equal those of the same run left alone. Evaluations in between must not shift the random
    stream either (the resumed run builds its simulator at a different point)."""
    common = [f"demo_path={pickcube_state_demos}", "num_demos=4", "val_fraction=0.25", "wandb.mode=disabled",
              "batch_size=16", "warmup_iters=5", "model.d_model=32", "model.dim_feedforward=64",
              "model.chunk_size=8", "max_episode_steps=10", "log_frequency=10", "num_eval_envs=1",
              "num_eval_episodes=1", "capture_video=false", "total_iters=60", "save_frequency=20",
              "val_frequency=20", "eval_frequency=20", "exp_name=exact"]
    run_script(*common, f"ckpt_dir={tmp_path / 'alone'}")
    killed = subprocess.Popen([sys.executable, "ACT_for_Maniskill.py", "--config", "configs/ACT_maniskill_state_config.yaml",
                               *common, f"ckpt_dir={tmp_path / 'killed'}"], cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "killed").glob("*/last.pt")) and killed.poll() is None:
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (killed_dir,) = (tmp_path / "killed").iterdir()
    resumed_from = torch.load(killed_dir / "last.pt", weights_only=True)["iteration"]
    assert resumed_from in (20, 40)  # killed after the first checkpoint, before the end
    log = run_script(*common, f"ckpt_dir={tmp_path / 'killed'}", f"resume={killed_dir / 'last.pt'}")
    assert f"at iteration {resumed_from}" in log

    (alone_dir,) = (tmp_path / "alone").iterdir()
    alone, resumed = (torch.load(d / "last.pt", weights_only=True) for d in (alone_dir, killed_dir))
    assert alone["iteration"] == resumed["iteration"] == 60
    for name, tensor in alone["policy"].items():
        assert torch.equal(tensor, resumed["policy"][name]), name
    for state_a, state_b in zip(alone["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    rows_a, rows_b = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
                      for d in (alone_dir, killed_dir))
    strip = lambda rows: [{k: v for k, v in row.items() if "/seconds" not in k and "_s" not in k} for row in rows]
    assert strip(rows_a) == strip(rows_b)
