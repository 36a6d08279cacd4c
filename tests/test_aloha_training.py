"""ALOHA sim through its entry script, ACT_for_aloha.py: real scripted demos made by the run itself, real training,
real rollouts in the simulator. No mocks.

About 2 minutes on one core, most of it rendering the demo (400 top-camera frames at 480x640) and starting Python.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("gym_aloha", reason="gym-aloha is not installed: pip install -r requirements.txt")

from datasets.aloha_scripted import scripted_episode  # noqa: E402
from env.aloha_env import AlohaEnv  # noqa: E402
from utils.evaluation import evaluate_controller, summarize  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=32", "model.nhead=2", "model.dim_feedforward=64", "model.num_encoder_layers=1",
        "model.num_style_encoder_layers=1", "model.chunk_size=20", "model.pretrained_backbone=false",
        "image_size=[48,64]", "batch_size=8", "lr=1e-3", "lr_backbone=1e-3", "warmup_iters=0", "val_fraction=0",
        "wandb.mode=disabled", "num_eval_envs=1", "num_eval_episodes=1", "max_episode_steps=30",
        "num_video_episodes=1"]


def run_aloha(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "ACT_for_aloha.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"OMP_NUM_THREADS": "1", **os.environ})


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run that makes its own transfer_cube demo, trains 60 iterations, evaluates 1 short episode."""
    root = tmp_path_factory.mktemp("aloha_run")
    result = run_aloha(*TINY, "num_demos=1", "total_iters=60", "log_frequency=10",
                       "eval_frequency=60", "save_frequency=60", f"demo_dir={root / 'demos'}",
                       f"ckpt_dir={root / 'ckpts'}", f"video_dir={root / 'videos'}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (root / "ckpts").iterdir()
    return root, run_dir, result.stdout


def test_the_entry_script_makes_demos_trains_and_evaluates_with_stage_rates(trained):
    root, run_dir, stdout = trained
    assert run_dir.name.startswith("act_aloha-transfer_cube-")
    assert [path.name for path in (root / "demos" / "transfer_cube").iterdir()] == ["episode_0.hdf5"]
    losses = [m["train/loss"] for m in metrics_of(run_dir) if "train/loss" in m]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    (evaluation,) = [m for m in metrics_of(run_dir) if "eval/success_once" in m]
    for stage in ("touched", "lifted", "transferred"):  # the paper's Table I columns for Transfer Cube
        assert 0.0 <= evaluation[f"eval/stage/{stage}"] <= 1.0
        assert f" {stage} " in stdout  # in the evaluation's log line
    (episode,) = json.loads((run_dir / "episodes_iter0000060.json").read_text())
    assert 0 <= episode["max_reward"] <= 4 and {"stage/touched", "stage/lifted", "stage/transferred"} <= set(episode)
    assert episode["stage/transferred"] == episode["success_once"] == (episode["max_reward"] == 4)
    videos = list((root / "videos" / run_dir.name).glob("iter0000060_ep000_*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0


def test_no_evaluation_seed_is_a_demo_seed(trained, tmp_path):
    root, run_dir, _ = trained
    demo_seeds = set()
    for path in (root / "demos" / "transfer_cube").iterdir():
        with h5py.File(path, "r") as file:
            demo_seeds.add(int(file.attrs["seed"]))
    eval_seeds = {episode["seed"] for episode in json.loads((run_dir / "episodes_iter0000060.json").read_text())}
    assert demo_seeds == {0} and eval_seeds == {1000000}  # demos from 0 up, evaluation from eval_seed up
    # Evaluation seeds among the demos' stop the run in one line, before anything is written.
    result = run_aloha(*TINY, "num_demos=2", "eval_seed=1", f"demo_dir={tmp_path / 'demos'}",
                       f"ckpt_dir={tmp_path / 'ckpts'}", f"video_dir={tmp_path / 'videos'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: eval_seed=1: evaluation seeds 1-1 include demo")
    assert not list(tmp_path.iterdir())


def test_chunked_execution_evaluates_the_same_weights(trained, tmp_path):
    """Temporal ensembling vs open-loop chunks on one checkpoint: mode=eval with the two settings."""
    _, run_dir, _ = trained
    result = run_aloha("mode=eval", f"checkpoint={run_dir / 'last.pt'}", "temporal_ensemble=false",
                       "query_frequency=20", f"ckpt_dir={tmp_path / 'ckpts'}", f"video_dir={tmp_path / 'videos'}",
                       "capture_video=false")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (eval_dir,) = (tmp_path / "ckpts").iterdir()
    config = (eval_dir / "config.yaml").read_text()
    assert "temporal_ensemble: false" in config and "query_frequency: 20" in config
    (evaluation,) = [m for m in metrics_of(eval_dir) if "eval/success_once" in m]
    assert evaluation["eval/num_episodes"] == 1 and "eval/stage/lifted" in evaluation


@pytest.mark.parametrize("argument, message", [
    ("env_id=transfer_cub", "error: command line: key 'env_id' expects one of 'transfer_cube', 'insertion', got str "
                            "'transfer_cub'. Did you mean: transfer_cube?"),
    ("cameras=[top,wrist]", "error: unknown camera(s) wrist for ALOHA transfer_cube; its cameras are: "),
])
def test_bad_input_stops_in_one_line_before_anything_is_written(tmp_path, argument, message):
    result = run_aloha(argument, f"demo_dir={tmp_path / 'demos'}", f"ckpt_dir={tmp_path / 'ckpts'}",
                       f"video_dir={tmp_path / 'videos'}", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(message) and not any(line.startswith("error") for line in lines[:-1])
    assert not list(tmp_path.iterdir())


def test_stage_rates_count_the_highest_reward_of_each_episode():
    """Environment 0 replays seed 0's scripted demo (every stage reached), environment 1 holds its start pose (none):
    each stage's rate is 1/2, from the adapter's thresholds; no camera, so no rendering."""
    _, demo_actions, _, _ = scripted_episode("transfer_cube", 0, record_camera=False)

    class ReplayAndHold:
        def reset(self):
            self.step = 0

        def select_action(self, obs):
            self.step += 1
            return np.stack([demo_actions[self.step - 1], obs["state"][1]])

    env = AlohaEnv("transfer_cube", cameras=[], num_envs=2)
    try:
        episodes = evaluate_controller(ReplayAndHold(), env, num_episodes=2, seed=0)["episodes"]
    finally:
        env.close()
    assert [e["max_reward"] for e in episodes] == [4.0, 0.0]
    assert [e["stage/touched"] for e in episodes] == [True, False] and episodes[0]["stage/lifted"]
    summary = summarize(episodes)
    assert summary["stage/touched"] == summary["stage/lifted"] == summary["stage/transferred"] == 0.5
    assert summary["success_once"] == 0.5


def children_blocking_sigint(pid: int) -> tuple[int, int]:
    """(child processes of pid, how many of them block SIGINT), read from /proc."""
    children = blocking = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:  # gone meanwhile
            continue
        if int(fields["PPid"]) == pid:
            children += 1
            blocking += bool(int(fields["SigBlk"], 16) & 1 << (signal.SIGINT - 1))
    return children, blocking


def test_ctrl_c_while_demos_render_ends_the_run_at_once_in_one_line(tmp_path):
    """Ctrl-C reaches the whole foreground process group, the render workers included. The run ends within seconds,
    not after the renders in progress (about 40 s each), with one line and exit 130: no traceback from any worker,
    no process of the group left behind, no half-written demo file."""
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    process = subprocess.Popen([sys.executable, "ACT_for_aloha.py", *TINY, "num_demos=2", "demo_workers=2",
                                f"demo_dir={tmp_path / 'demos'}", f"ckpt_dir={tmp_path / 'ckpts'}"], cwd=REPO_ROOT,
                               stdout=open(stdout, "w"), stderr=open(stderr, "w"), start_new_session=True,
                               env={"OMP_NUM_THREADS": "1", **os.environ})
    deadline = time.time() + 300
    # Ctrl-C as soon as both workers exist: they are still importing the entry script (seconds), which is where an
    # unshielded worker prints its own traceback.
    while "rendering and writing" not in stdout.read_text() or children_blocking_sigint(process.pid)[1] < 2:
        assert process.poll() is None and time.time() < deadline, stderr.read_text()[-3000:]
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    sent = time.time()
    assert process.wait(timeout=60) == 130
    assert time.time() - sent < 20
    text = stderr.read_text()
    assert "Traceback" not in text and text.strip().splitlines()[-1].startswith(
        "stopped: SIGINT outside the training loop; nothing is half-written"), text[-3000:]
    deadline = time.time() + 10
    while True:  # until the group is empty: the workers are gone
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        left = subprocess.run(["ps", "-o", "pid,stat,etime,cmd", "-g", str(process.pid)], capture_output=True,
                              text=True)
        assert time.time() < deadline, f"still running 10 s after the run ended:\n{left.stdout}"
        time.sleep(0.2)
    assert not list((tmp_path / "demos" / "transfer_cube").glob("*.hdf5"))
