"""torchrun with the gloo backend on this CPU: real processes, 2 ranks (no GPU needed)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datasets.chunk_dataset import make_train_loader
from ddp_gradient_worker import GLOBAL_BATCH, small_policy_and_data
from utils.config import REPO_ROOT

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run(command, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_ddp_step_on_two_ranks_gives_the_single_process_gradients(pickcube_state_demos, tmp_path):
    run([*TORCHRUN, "tests/ddp_gradient_worker.py", str(pickcube_state_demos), str(tmp_path / "grads.pt")])
    ddp_grads = torch.load(tmp_path / "grads.pt")

    policy, data = small_policy_and_data(pickcube_state_demos)
    batch = next(iter(make_train_loader(data, GLOBAL_BATCH, seed=0, num_workers=0)))  # the whole global batch
    policy.eval()
    policy(batch)["loss"].backward()
    for name, param in policy.named_parameters():
        assert torch.allclose(ddp_grads[name], param.grad, rtol=1e-4, atol=1e-6), name


def entry(*overrides, launcher=TORCHRUN):
    return [*launcher, "ACT_for_Maniskill.py", "--config", "configs/ACT_maniskill_state_config.yaml", *overrides]


@pytest.fixture(scope="module")
def ddp_run(pickcube_state_demos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    common = [f"demo_path={pickcube_state_demos}", "num_demos=4", "val_fraction=0.25", "wandb.mode=disabled",
              "batch_size=16", "warmup_iters=2", "model.d_model=32", "model.dim_feedforward=64", "model.chunk_size=8",
              "max_episode_steps=15", "log_frequency=10", "num_eval_envs=2", "num_eval_episodes=6",
              "num_video_episodes=1", f"ckpt_dir={out / 'ckpts'}", f"video_dir={out / 'videos'}", "exp_name=ddp"]
    log = run(entry(*common, "total_iters=40", "save_frequency=20", "val_frequency=20", "eval_frequency=40"))
    return {"out": out, "common": common, "log": log}


def test_torchrun_training_writes_one_run_folder_from_rank_0(ddp_run):
    out = ddp_run["out"]
    (run_dir,) = (out / "ckpts").iterdir()
    (video_dir,) = (out / "videos").iterdir()
    assert len(list(video_dir.glob("*.mp4"))) == 1
    assert ddp_run["log"].count("[run] ") == 1 and "x 2 processes (torchrun)" in ddp_run["log"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows if "train/l1" in row] == [10, 20, 30, 40]  # once, not once per rank
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2


def test_torchrun_resume_with_the_same_world_size_continues_exactly(ddp_run):
    (run_dir,) = (ddp_run["out"] / "ckpts").iterdir()
    uninterrupted = torch.load(run_dir / "last.pt", weights_only=True)
    log = run(entry(*ddp_run["common"], f"resume={run_dir / 'iter_0000020.pt'}", "num_eval_episodes=0"))
    assert "at iteration 20" in log and "random draws" not in log
    resumed = torch.load(run_dir / "last.pt", weights_only=True)
    assert resumed["iteration"] == 40
    for name, tensor in uninterrupted["policy"].items():
        assert torch.equal(tensor, resumed["policy"][name]), name


def test_resume_with_another_world_size_says_the_stream_differs(ddp_run, tmp_path):
    (run_dir,) = (ddp_run["out"] / "ckpts").iterdir()
    log = run(entry(*ddp_run["common"], f"resume={run_dir / 'iter_0000020.pt'}", "num_eval_episodes=0",
                    "total_iters=30", launcher=[sys.executable]))
    assert "trained by 2 process(es), this run has 1" in log


def test_two_rank_evaluation_gives_the_one_rank_per_episode_results(ddp_run):
    (run_dir,) = (ddp_run["out"] / "ckpts").iterdir()
    outcomes = {}
    for name, launcher in (("one", [sys.executable]), ("two", TORCHRUN)):
        ckpt_dir = ddp_run["out"] / f"eval_{name}"
        run(entry(*ddp_run["common"], "mode=eval", f"checkpoint={run_dir / 'last.pt'}", "capture_video=false",
                  f"ckpt_dir={ckpt_dir}", launcher=launcher))
        (eval_dir,) = ckpt_dir.iterdir()
        outcomes[name] = json.loads((eval_dir / "episodes_eval.json").read_text())
    assert [e["episode"] for e in outcomes["one"]] == list(range(6))
    assert outcomes["two"] == outcomes["one"]


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started, read from their environment in /proc."""
    ranks = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if int((environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[1]) != launcher_pid:
                continue
            variables = dict(item.split("=", 1) for item in environ.read_text().split("\0") if "=" in item)
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if "RANK" in variables:
            ranks[int(variables["RANK"])] = int(environ.parent.name)
    return ranks


def test_a_stop_signal_to_one_rank_stops_every_rank_after_the_same_step_and_resume_matches(ddp_run, tmp_path):
    """The ranks agree every step on whether to stop (the signal number all-reduced over them). SIGTERM to rank 1
    alone (paused first, so that the run cannot end before the signal lands) ends both ranks after the same
    iteration; rank 0 saves last.pt and says so in one line; continued under torchrun, the run ends with the weights
    of the run left alone (ddp_run's)."""
    ckpt_dir, stderr = tmp_path / "ckpts", tmp_path / "stderr.txt"
    stoppable = [*ddp_run["common"], "total_iters=40", "save_frequency=20", "val_frequency=20", "num_eval_episodes=0",
                 f"ckpt_dir={ckpt_dir}"]
    launcher = subprocess.Popen(entry(*stoppable), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=open(stderr, "w"),
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 600
    while not list(ckpt_dir.glob("*/iter_0000020.pt")):
        assert launcher.poll() is None and time.time() < deadline, stderr.read_text()[-3000:]
        time.sleep(0.02)
    rank_1 = rank_pids(launcher.pid)[1]
    for signum in (signal.SIGSTOP, signal.SIGTERM, signal.SIGCONT):
        os.kill(rank_1, signum)
    assert launcher.wait(timeout=600) != 0  # torchrun reports its workers' exit status 143 as a failure
    (run_dir,) = ckpt_dir.iterdir()
    stopped = torch.load(run_dir / "last.pt", weights_only=True)
    assert 20 <= stopped["iteration"] < 40 and stopped["world_size"] == 2
    text = stderr.read_text()
    assert text.count("stopped: SIGTERM") == 1 and "RunStopped" not in text  # rank 0 speaks for both
    assert (f"stopped: SIGTERM during iteration {stopped['iteration']} of 40: stopped after it; the last good "
            f"checkpoint is {run_dir / 'last.pt'} (iteration {stopped['iteration']}); continue with: torchrun "
            f"--nproc_per_node=2 ACT_for_Maniskill.py resume={run_dir / 'last.pt'}") in text
    run(entry(*stoppable, f"resume={run_dir / 'last.pt'}"))
    (alone_dir,) = (ddp_run["out"] / "ckpts").iterdir()  # its last.pt may be another test's resume by now
    alone = torch.load(alone_dir / "iter_0000040.pt", weights_only=True)
    resumed = torch.load(run_dir / "last.pt", weights_only=True)
    assert alone["iteration"] == resumed["iteration"] == 40
    for name, tensor in alone["policy"].items():
        assert torch.equal(tensor, resumed["policy"][name]), name
