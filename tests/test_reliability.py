"""What the README's "Reliability" section promises, each on real files, real processes and real disks:
checkpoints never run code, bad checkpoints / cameras / folders / batch sizes are one line before any work, a full
disk loses nothing, old checkpoints are pruned, runs never share a folder, and Ctrl-C, SIGTERM or a kill during an
evaluation lose nothing and resume exactly."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from utils.checkpoint import load_checkpoint, prune_checkpoints, restore_rng_state, rng_state, save_checkpoint
from utils.config import REPO_ROOT, load_config
from utils.run_setup import start_run


def run_script(*overrides):
    return subprocess.run([sys.executable, "ACT_for_Maniskill.py", "--config", "configs/ACT_maniskill_state_config.yaml",
                           "wandb.mode=disabled", *overrides], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


def assert_one_line_error(result, *expected):
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(text in last for text in expected), last


def tiny_training(demos, out, *overrides):
    """A real training run of a 70k-parameter ACT on 4 demos (about 1 MB per checkpoint), no simulator."""
    return run_script(f"demo_path={demos}", "num_demos=4", "val_fraction=0.25", f"ckpt_dir={out / 'ckpts'}",
                      f"video_dir={out / 'videos'}", "batch_size=16", "warmup_iters=2", "model.d_model=32",
                      "model.dim_feedforward=64", "model.chunk_size=8", "log_frequency=10", "val_frequency=10",
                      "num_eval_episodes=0", *overrides)


class CreatesAFile:
    """Unpickling this calls open(path, "w"): the file appears iff the loader ran code from the checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


# --------------------------------------------------------------------------------------------------
# Loading checkpoints
# --------------------------------------------------------------------------------------------------
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "created_by_the_checkpoint"
    crafted = tmp_path / "shared.pt"
    torch.save({"policy": CreatesAFile(marker), "config": {}, "shape_meta": {}, "iteration": 0, "run_name": "x"},
               crafted)
    result = run_script("mode=eval", f"checkpoint={crafted}")
    assert_one_line_error(result, str(crafted), "refused", "io.open")
    assert not marker.exists()


@pytest.mark.parametrize("mode, missing", [("mode=eval", "run_name"), ("resume", "optimizer, rng")])
def test_a_malformed_checkpoint_names_what_it_has_before_any_demo_is_made(tmp_path, mode, missing):
    """A checkpoint without run_name (or, to resume, without its training state) is one line naming the keys
    it does have; no demos are generated first."""
    config = load_config("configs/ACT_maniskill_config.yaml", "configs/ACT_maniskill_state_config.yaml").to_dict()
    incomplete = {"policy": {}, "ema": None, "config": config, "iteration": 5,
                  "shape_meta": {"state_dim": 42, "action_dim": 4, "num_cameras": 0, "image_channels": 3}}
    if mode == "resume":
        incomplete["run_name"] = "old-run"
    path = tmp_path / "incomplete.pt"
    torch.save(incomplete, path)
    source = f"checkpoint={path}" if mode == "mode=eval" else f"resume={path}"
    extra = ["mode=eval"] if mode == "mode=eval" else []
    result = run_script(*extra, source, f"demo_dir={tmp_path / 'demos'}", f"ckpt_dir={tmp_path / 'ckpts'}")
    assert_one_line_error(result, str(path), f"missing {missing}", "it has config, ema, iteration")
    assert not (tmp_path / "demos").exists() and not (tmp_path / "ckpts").exists()


def test_random_states_survive_a_weights_only_file_exactly(tmp_path):
    """The stored random states are tensors and plain values, and restoring them gives the same draws."""
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # numpy now holds a cached Gaussian, part of its state
    save_checkpoint(tmp_path / "rng.pt", {"rng": [rng_state()]})
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    state = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0]  # no allowlist: plain values only
    restore_rng_state(state)
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


def test_checkpoints_saved_before_this_format_still_load_without_running_code(tmp_path):
    """Older checkpoints hold numpy's random state (a numpy array); numpy arrays, and nothing more, are let in."""
    random.seed(1), np.random.seed(2)
    legacy_rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                  "cuda": None}
    expected = (random.random(), np.random.rand())
    meta = {"state_dim": 3, "action_dim": 2, "num_cameras": 0, "image_channels": 3}
    torch.save({"policy": {}, "config": {}, "shape_meta": meta, "iteration": 7, "run_name": "old", "optimizer": {},
                "rng": legacy_rng}, tmp_path / "old.pt")
    checkpoint = load_checkpoint(tmp_path / "old.pt", for_resume=True)
    restore_rng_state(checkpoint["rng"])
    assert (random.random(), np.random.rand()) == expected and checkpoint["ema"] is None


# --------------------------------------------------------------------------------------------------
# Checks before work starts
# --------------------------------------------------------------------------------------------------
def test_an_unknown_camera_names_the_tasks_cameras_before_any_demo_is_made(tmp_path):
    result = run_script("obs_mode=rgb", "cameras=[wrist_cam]", "num_demos=1", f"demo_dir={tmp_path / 'demos'}",
                        f"ckpt_dir={tmp_path / 'ckpts'}")
    assert_one_line_error(result, "wrist_cam", "PickCube-v1", "its cameras are: base_camera")
    assert not (tmp_path / "demos").exists() and not (tmp_path / "ckpts").exists()


@pytest.mark.parametrize("key", ["ckpt_dir", "video_dir"])
def test_an_unwritable_folder_stops_the_run_before_any_work(pickcube_state_demos, tmp_path, key):
    """A folder below a regular file cannot be made, even by root (who ignores permission bits)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    folders = {"ckpt_dir": tmp_path / "ckpts", "video_dir": tmp_path / "videos", key: blocker / "sub"}
    result = run_script(f"demo_path={pickcube_state_demos}", "num_demos=4", "total_iters=10", "save_frequency=10",
                        "model.d_model=32", "model.dim_feedforward=64", "max_episode_steps=5", "num_eval_envs=1",
                        "num_eval_episodes=1", *(f"{k}={v}" for k, v in folders.items()))
    assert_one_line_error(result, f"{key}={blocker / 'sub'} is not writable")
    assert "[data]" not in result.stdout  # stopped before loading demos


def test_runs_started_in_the_same_second_never_share_a_folder(tmp_path, monkeypatch):
    cfg = load_config("configs/ACT_maniskill_config.yaml", "configs/ACT_maniskill_state_config.yaml",
                      [f"ckpt_dir={tmp_path / 'ckpts'}", f"video_dir={tmp_path / 'videos'}", "wandb.mode=disabled"])
    monkeypatch.setattr(time, "strftime", lambda *args: "20260101-120000")  # both start in this second
    first, second = start_run(cfg, None), start_run(cfg, None)
    assert first.ckpt_dir != second.ckpt_dir and first.video_dir != second.video_dir
    assert second.name == first.name + "-2"
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == sorted([first.name, second.name])


# --------------------------------------------------------------------------------------------------
# Saving: pruning, full disks
# --------------------------------------------------------------------------------------------------
def test_keep_checkpoints_removes_older_iterations_but_never_best_or_last(pickcube_state_demos, tmp_path):
    result = tiny_training(pickcube_state_demos, tmp_path, "total_iters=40", "save_frequency=10", "keep_checkpoints=2")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "ckpts").iterdir()
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "iter_0000030.pt", "iter_0000040.pt", "last.pt"]
    assert load_checkpoint(run_dir / "best.pt")["iteration"] in (10, 20, 30, 40)


def test_pruning_after_a_resume_from_an_earlier_iteration_keeps_the_new_files(tmp_path):
    """Resumed from iter 20 of a run that had reached 50: the files this run writes are the ones kept."""
    for iteration in (10, 20, 40, 50):
        (tmp_path / f"iter_{iteration:07d}.pt").write_bytes(b"old")
    (tmp_path / "iter_0000030.pt").write_bytes(b"new")
    prune_checkpoints(tmp_path, keep=2, iteration=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"iter_{i:07d}.pt" for i in (20, 30, 40, 50)]


@contextlib.contextmanager
def small_disk(path, size: str):
    """A real filesystem of `size` (tmpfs); skips where mounting is not allowed."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_good_checkpoint(pickcube_state_demos, tmp_path):
    """About 2.6 checkpoints fit: the first save (iter_10 + last) succeeds, iter_20 runs out of space. Validation
    (and so best.pt) waits for the end, so that the saves come in a known order."""
    with small_disk(tmp_path / "disk", "2400k") as disk:
        result = tiny_training(pickcube_state_demos, disk, "total_iters=40", "save_frequency=10", "keep_checkpoints=0",
                               "val_frequency=40")
        (run_dir,) = (disk / "ckpts").iterdir()
        assert_one_line_error(result, f"could not write {run_dir / 'iter_0000020.pt'}", "No space left on device",
                              "MiB free", "last good checkpoint is kept")
        assert sorted(p.name for p in run_dir.iterdir() if p.suffix in (".pt", ".tmp")) == ["iter_0000010.pt", "last.pt"]
        assert load_checkpoint(run_dir / "last.pt", for_resume=True)["iteration"] == 10


def test_a_disk_too_small_for_one_save_stops_before_training(pickcube_state_demos, tmp_path):
    with small_disk(tmp_path / "disk", "1200k") as disk:
        result = tiny_training(pickcube_state_demos, disk, "total_iters=40", "save_frequency=10")
        assert_one_line_error(result, "MiB free; one save writes two checkpoints of about", "(iter_*.pt and last.pt)")
        assert "train:" not in result.stderr  # no training step was taken


# --------------------------------------------------------------------------------------------------
# Stopping on purpose (Ctrl-C, SIGTERM), kills during an evaluation, runs that cannot start
# --------------------------------------------------------------------------------------------------
# One thread per training process: two OpenMP threads waiting for a busy core ran a step 20x slower here, and the
# runs compared bit for bit must use the same thread count anyway.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def stoppable_run(demos, ckpt_dir, *overrides):
    """tiny_training's run with simulator evaluations at 20, 40 and 60 and saves at 20, 40, 60; logs every 15
    iterations, so that a stop between two logs leaves losses summed but not yet logged."""
    return [sys.executable, "ACT_for_Maniskill.py", "--config", "configs/ACT_maniskill_state_config.yaml",
            "wandb.mode=disabled", f"demo_path={demos}", "num_demos=4", "val_fraction=0.25", f"ckpt_dir={ckpt_dir}",
            "batch_size=16", "warmup_iters=5", "model.d_model=32", "model.dim_feedforward=64", "model.chunk_size=8",
            "max_episode_steps=25", "num_eval_envs=1", "num_eval_episodes=1", "capture_video=false",
            "total_iters=60", "save_frequency=20", "val_frequency=20", "eval_frequency=20", "log_frequency=15",
            "exp_name=stop", *overrides]


@pytest.fixture(scope="module")
def uninterrupted(pickcube_state_demos, tmp_path_factory):
    ckpt_dir = tmp_path_factory.mktemp("uninterrupted")
    result = subprocess.run(stoppable_run(pickcube_state_demos, ckpt_dir), cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = ckpt_dir.iterdir()
    return run_dir


def start_stoppable_run(demos, tmp_path):
    """The run started in the background, stderr to a file; returns the process, its ckpt_dir and stderr's path."""
    stderr = tmp_path / "stderr.txt"
    process = subprocess.Popen(stoppable_run(demos, tmp_path / "ckpts"), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=open(stderr, "w"), env=ONE_THREAD)
    return process, tmp_path / "ckpts", stderr


def wait_for_file(pattern: str, folder, process):
    deadline = time.time() + 600
    while not list(folder.glob(pattern)):
        assert process.poll() is None and time.time() < deadline, f"no {pattern} in {folder}"
        time.sleep(0.02)
    return next(folder.glob(pattern))


def last_line(stderr_path) -> str:
    text = stderr_path.read_text()
    assert "Traceback" not in text, text[-3000:]
    return text.strip().splitlines()[-1]


def assert_same_training(alone_dir, resumed_dir):
    """Weights, optimizer moments and every logged figure (wall-clock times aside) equal bit for bit."""
    alone, resumed = (torch.load(d / "last.pt", weights_only=True) for d in (alone_dir, resumed_dir))
    assert alone["iteration"] == resumed["iteration"] and not resumed["evaluation_pending"]
    for name, tensor in alone["policy"].items():
        assert torch.equal(tensor, resumed["policy"][name]), name
    for state_a, state_b in zip(alone["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    rows_alone, rows_resumed = ([{k: v for k, v in json.loads(line).items() if "seconds" not in k and k[-2:] != "_s"}
                                 for line in (d / "metrics.jsonl").read_text().splitlines()]
                                for d in (alone_dir, resumed_dir))
    assert rows_alone == rows_resumed


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_the_run_after_its_step_with_last_pt_saved_and_resume_matches(
        pickcube_state_demos, uninterrupted, tmp_path, stop_signal):
    """Ctrl-C or SIGTERM while training (after the first save, between two logs): the step finishes, last.pt holds
    it, the run ends with one line and 128 + the signal's number; the command that line gives continues the run to
    the same weights, optimizer state and logged losses as the run left alone."""
    process, ckpt_dir, stderr = start_stoppable_run(pickcube_state_demos, tmp_path)
    run_dir = wait_for_file("*/training_curves.png", ckpt_dir, process).parent  # drawn after the save at 20
    process.send_signal(stop_signal)
    assert process.wait(timeout=600) == 128 + stop_signal
    stopped_at = torch.load(run_dir / "last.pt", weights_only=True)["iteration"]
    assert 20 <= stopped_at < 40
    line = last_line(stderr)
    assert line == (f"stopped: {stop_signal.name} during iteration {stopped_at} of 60: stopped after it; the last good "
                    f"checkpoint is {run_dir / 'last.pt'} (iteration {stopped_at}); continue with: python "
                    f"ACT_for_Maniskill.py resume={run_dir / 'last.pt'}")
    command = line.split("continue with: ")[1].split()
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=600, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(uninterrupted, run_dir)


def test_a_second_signal_stops_at_once_and_the_last_save_stays_good(pickcube_state_demos, tmp_path):
    """Two stop signals in one step (delivered together while the process is paused, so they reach it in the same
    step): no further save; last.pt is the save of iteration 20, whole and resumable."""
    process, ckpt_dir, stderr = start_stoppable_run(pickcube_state_demos, tmp_path)
    run_dir = wait_for_file("*/training_curves.png", ckpt_dir, process).parent
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    assert process.wait(timeout=600) == 128 + signal.SIGTERM
    assert "[stop] SIGINT: stopping after this step" in stderr.read_text()
    assert last_line(stderr).startswith(f"stopped: SIGTERM again: stopped at once, without the step in progress; the "
                                        f"last good checkpoint is {run_dir / 'last.pt'} (iteration 20); continue with")
    saved = load_checkpoint(run_dir / "last.pt", for_resume=True)
    assert saved["iteration"] == 20 and not saved["evaluation_pending"]


def test_sigterm_to_the_whole_process_group_leaves_the_loader_workers_to_the_main_process(pickcube_state_demos,
                                                                                          tmp_path):
    """A scheduler's SIGTERM reaches every process of the job, DataLoader workers included. They ignore it, so the
    main process finishes its step and saves last.pt (a killed worker used to fail the run at once, in a traceback)."""
    stderr = tmp_path / "stderr.txt"
    process = subprocess.Popen(stoppable_run(pickcube_state_demos, tmp_path / "ckpts", "num_workers=1"),
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=open(stderr, "w"), env=ONE_THREAD,
                               start_new_session=True)
    run_dir = wait_for_file("*/training_curves.png", tmp_path / "ckpts", process).parent
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=600) == 128 + signal.SIGTERM
    stopped_at = torch.load(run_dir / "last.pt", weights_only=True)["iteration"]
    assert 20 <= stopped_at < 40
    assert last_line(stderr).startswith(f"stopped: SIGTERM during iteration {stopped_at} of 60: stopped after it")


def test_a_run_stopped_during_an_evaluation_resumes_by_running_it_and_matches(pickcube_state_demos, uninterrupted,
                                                                              tmp_path):
    """last.pt is saved before every simulator evaluation, marked pending: SIGTERM during the evaluation at 20
    stops at once without losing its 20 iterations, and the resumed run evaluates iteration 20 first (the same
    episodes as the run left alone) and ends bit-identical to it."""
    process, ckpt_dir, stderr = start_stoppable_run(pickcube_state_demos, tmp_path)
    run_dir = wait_for_file("*/last.pt", ckpt_dir, process).parent  # the first last.pt: before the evaluation at 20
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=600) == 128 + signal.SIGTERM
    assert "during the simulator evaluation: stopped at once" in last_line(stderr) or \
        "before the simulator evaluation" in last_line(stderr)
    assert "(iteration 20, its validation and evaluation still to run: resume runs them first)" in last_line(stderr)
    assert not (run_dir / "episodes_iter0000020.json").exists()
    resumed = subprocess.run(stoppable_run(pickcube_state_demos, ckpt_dir, f"resume={run_dir / 'last.pt'}"),
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at iteration 20, whose validation or evaluation was cut short: running them first" in resumed.stdout
    assert resumed.stdout.index("[eval @ 20]") < resumed.stdout.index("[val @ 40]")
    assert_same_training(uninterrupted, run_dir)
    assert ((run_dir / "episodes_iter0000020.json").read_text()
            == (uninterrupted / "episodes_iter0000020.json").read_text())


def test_a_stop_signal_during_validation_cuts_the_pass_short_and_the_resumed_run_validates_first(
        pickcube_state_demos, tmp_path):
    """Validation after every iteration, so that SIGTERM lands in a step or in a pass; either way that iteration's
    pass stops between two batches (a pass over a large held-out set takes minutes), last.pt holds the iteration with
    its validation pending, and the resumed run validates it first and ends bit-identical to the run left alone."""
    every_iteration = ["val_frequency=1", "total_iters=40", "eval_frequency=40"]
    alone = subprocess.run(stoppable_run(pickcube_state_demos, tmp_path / "alone", *every_iteration), cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert alone.returncode == 0, alone.stderr[-3000:]
    stderr = tmp_path / "stderr.txt"
    ckpt_dir = tmp_path / "ckpts"
    process = subprocess.Popen(stoppable_run(pickcube_state_demos, ckpt_dir, *every_iteration), cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=open(stderr, "w"), env=ONE_THREAD)
    run_dir = wait_for_file("*/metrics.jsonl", ckpt_dir, process).parent
    deadline = time.time() + 600
    while not any(row.get("iteration", 0) >= 22 and "val/l1" in row for row in map(json.loads, (
            run_dir / "metrics.jsonl").read_text().splitlines())):  # past the save at 20: only steps and passes now
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=600) == 128 + signal.SIGTERM
    saved = load_checkpoint(run_dir / "last.pt", for_resume=True)
    assert saved["evaluation_pending"] and 22 <= saved["iteration"] < 40
    assert last_line(stderr).startswith(f"stopped: SIGTERM during the validation after iteration {saved['iteration']}"
                                        f" of 40: stopped without its figures; the last good checkpoint is "
                                        f"{run_dir / 'last.pt'} (iteration {saved['iteration']}, its validation and "
                                        f"evaluation still to run: resume runs them first)")
    resumed = subprocess.run(stoppable_run(pickcube_state_demos, ckpt_dir, *every_iteration,
                                           f"resume={run_dir / 'last.pt'}"),
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.index(f"[val @ {saved['iteration']}]") < resumed.stdout.index(
        f"[val @ {saved['iteration'] + 1}]")
    (alone_dir,) = (tmp_path / "alone").iterdir()
    assert_same_training(alone_dir, run_dir)


def test_a_batch_that_cannot_fit_in_memory_stops_before_any_step(pickcube_state_demos, tmp_path):
    """batch_size=100000000 used to run until the kernel's OOM killer ended it (23 GB): now one line first."""
    result = tiny_training(pickcube_state_demos, tmp_path, "total_iters=10", "batch_size=100000000")
    assert_one_line_error(result, "batch_size=100000000 needs at least", "GiB for one training step", "cannot fit")
    assert "train:" not in result.stderr  # no step was taken
