"""Real ManiSkill demonstrations made inside the test with the motion planner + replay tool."""

import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from datasets.maniskill_demos import (TASK_RECIPES, _next_wave, default_demo_path, generate_demos,
                                      load_maniskill_demos, task_recipe)
from datasets.chunk_dataset import ChunkDataset
from env.errors import UserInputError
from utils.config import REPO_ROOT, load_config

DEFAULT = "configs/ACT_maniskill_config.yaml"


def test_state_demos_load_with_expected_shapes(pickcube_state_demos):
    episodes = load_maniskill_demos(pickcube_state_demos, 4, "state", "pd_ee_delta_pos")
    assert len(episodes) == 4
    for episode in episodes:
        steps = len(episode["actions"])
        assert 20 < steps < 200
        assert episode["state"].shape == (steps, 42) and episode["actions"].shape == (steps, 4)
        assert np.abs(episode["actions"][:, :3]).max() <= 1.0  # pd_ee_delta_pos targets are normalised
    meta = json.loads(pickcube_state_demos.with_suffix(".json").read_text())
    assert all(ep["success"] for ep in meta["episodes"])


def test_rgb_demos_load_with_images(pickcube_rgb_demos):
    episodes = load_maniskill_demos(pickcube_rgb_demos, 2, "rgb", "pd_ee_delta_pos", cameras=["base_camera"])
    steps = len(episodes[0]["actions"])
    assert episodes[0]["images"].shape == (steps, 1, 3, 128, 128) and episodes[0]["images"].dtype == np.uint8
    assert episodes[0]["images"].std() > 10  # a rendered scene, not a blank frame
    batch = ChunkDataset(episodes, chunk_size=8, action_type="delta")[np.array([0, steps - 1])]
    assert batch["images"].shape == (2, 1, 1, 3, 128, 128) and batch["images"].dtype == torch.uint8
    assert batch["is_pad"][1].tolist() == [False] + [True] * 7


def test_generation_is_idempotent(pickcube_state_demos, capsys):
    before = pickcube_state_demos.stat().st_mtime_ns
    generate_demos("PickCube-v1", 4, "state", "pd_ee_delta_pos", pickcube_state_demos)
    assert pickcube_state_demos.stat().st_mtime_ns == before
    assert "nothing to do" in capsys.readouterr().out


def test_worker_processes_keep_the_same_episodes_as_one_process(pickcube_state_demos, tmp_path):
    # 6 demos need chunks beyond the 5-seed probe; two workers plan two chunks side by side
    out = generate_demos("PickCube-v1", 6, "state", "pd_ee_delta_pos", tmp_path / "six.h5", workers=2)
    parallel = load_maniskill_demos(out, 6, "state", "pd_ee_delta_pos")
    serial = load_maniskill_demos(pickcube_state_demos, 4, "state", "pd_ee_delta_pos")
    for one, other in zip(serial, parallel[:4]):  # the first four in seed order, whoever planned them
        np.testing.assert_array_equal(one["actions"], other["actions"])
        np.testing.assert_array_equal(one["state"], other["state"])
    assert not (tmp_path / ".work_six").exists()


def test_waves_after_the_probe_are_sized_to_finish_in_one_go():
    # all 5 probe seeds converted, 95 demos missing: two workers get 50 seeds each (the cap), not 20 + 20 + ...
    assert _next_wave(5, 95, 1.0, 2) == [(5, 55), (55, 105)]
    assert _next_wave(5, 1, 1.0, 2) == [(5, 6), (6, 7)]  # a few missing: a few seeds, one per worker
    # half the seeds became demos: twice the seeds, +10%; the yield is floored where generation would stop anyway
    assert _next_wave(40, 10, 0.5, 1) == [(40, 62)]
    assert _next_wave(40, 10, 0.0, 1) == [(40, 84)]


def test_mismatched_control_mode_names_file_and_modes(pickcube_state_demos):
    with pytest.raises(ValueError, match=r"control_mode='pd_ee_delta_pos'.*'pd_joint_pos'") as info:
        load_maniskill_demos(pickcube_state_demos, 4, "state", "pd_joint_pos")
    assert str(pickcube_state_demos) in str(info.value)


def test_too_few_episodes_is_an_error(pickcube_state_demos):
    with pytest.raises(ValueError, match="holds 4 episodes.*num_demos=10"):
        load_maniskill_demos(pickcube_state_demos, 10, "state", "pd_ee_delta_pos")


def test_num_demos_minus_one_loads_every_episode_and_cannot_generate(pickcube_state_demos, tmp_path):
    assert len(load_maniskill_demos(pickcube_state_demos, -1, "state", "pd_ee_delta_pos")) == 4
    with pytest.raises(UserInputError, match="num_demos=-1 .*needs demo_path"):
        default_demo_path(tmp_path, "PickCube-v1", "state", "pd_ee_delta_pos", -1)
    with pytest.raises(UserInputError, match="num_demos=-1: generating demos needs a number >= 1"):
        generate_demos("PickCube-v1", -1, "state", "pd_ee_delta_pos", tmp_path / "all.h5")
    assert list(tmp_path.iterdir()) == []  # nothing planned, nothing written


def test_corrupt_file_names_the_file(pickcube_state_demos, tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not an hdf5 file")
    broken.with_suffix(".json").write_text(pickcube_state_demos.with_suffix(".json").read_text())
    with pytest.raises(UserInputError, match="broken.h5.*not a readable HDF5"):
        load_maniskill_demos(broken, 1, "state", "pd_ee_delta_pos")
    with h5py.File(tmp_path / "empty.h5", "w") as h5:
        h5.create_group("traj_0")
    (tmp_path / "empty.json").write_text(pickcube_state_demos.with_suffix(".json").read_text())
    with pytest.raises(UserInputError, match="empty.h5.*missing dataset"):
        load_maniskill_demos(tmp_path / "empty.h5", 1, "state", "pd_ee_delta_pos")


def test_task_recipe_applies_unless_the_user_set_the_key(tmp_path, capsys):
    state = "configs/ACT_maniskill_state_config.yaml"
    cfg = load_config(DEFAULT, state, ["env_id=LiftPegUpright-v1"], task_defaults=task_recipe)
    assert (cfg.control_mode, cfg.max_episode_steps) == ("pd_ee_delta_pose", 250)
    assert "LiftPegUpright-v1 recipe" in capsys.readouterr().out
    cfg = load_config(DEFAULT, state, ["env_id=PegInsertionSide-v1", "control_mode=pd_joint_pos"],
                      task_defaults=task_recipe)
    assert (cfg.control_mode, cfg.max_episode_steps) == ("pd_joint_pos", 300)  # the command line wins
    assert "your control_mode='pd_joint_pos' wins" in capsys.readouterr().out
    mine = tmp_path / "mine.yaml"
    mine.write_text("env_id: StackCube-v1\nmax_episode_steps: 150\n")
    cfg = load_config(DEFAULT, mine, [], task_defaults=task_recipe)
    assert (cfg.control_mode, cfg.max_episode_steps) == ("pd_ee_delta_pos", 150)  # so does a config file
    cfg = load_config(DEFAULT, state, ["env_id=PushT-v1"], task_defaults=task_recipe)
    assert (cfg.control_mode, cfg.max_episode_steps) == ("pd_ee_delta_pos", 100)  # no recipe: the config's
    assert "no recipe for PushT-v1" in capsys.readouterr().out


def test_state_budget_comes_from_the_task_recipe_only_for_state_observations():
    state, rgb_cpu = "configs/ACT_maniskill_state_config.yaml", "configs/ACT_maniskill_rgb_cpu_config.yaml"
    for task in ("PickCube-v1", "PushCube-v1", "StackCube-v1"):
        cfg = load_config(DEFAULT, state, [f"env_id={task}"], task_defaults=task_recipe)
        assert cfg.total_iters == TASK_RECIPES[task].state_iters
        assert load_config(DEFAULT, state, [f"env_id={task}", "total_iters=7"], task_defaults=task_recipe).total_iters == 7
        assert load_config(DEFAULT, rgb_cpu, [f"env_id={task}"], task_defaults=task_recipe).total_iters == 6000
        assert load_config(DEFAULT, None, [f"env_id={task}"], task_defaults=task_recipe).total_iters == 30000  # rgb


def test_the_number_of_demos_comes_from_the_recipe_of_the_observation_mode():
    state, rgb_cpu = "configs/ACT_maniskill_state_config.yaml", "configs/ACT_maniskill_rgb_cpu_config.yaml"
    assert load_config(DEFAULT, state, ["env_id=StackCube-v1"], task_defaults=task_recipe).num_demos == 200
    assert load_config(DEFAULT, state, ["env_id=StackCube-v1", "num_demos=50"],
                       task_defaults=task_recipe).num_demos == 50  # the command line wins
    assert load_config(DEFAULT, state, ["env_id=PickCube-v1"], task_defaults=task_recipe).num_demos == 100
    assert load_config(DEFAULT, rgb_cpu, ["env_id=StackCube-v1"], task_defaults=task_recipe).num_demos == 100
    assert load_config(DEFAULT, state, ["env_id=PushCube-v1"], task_defaults=task_recipe).num_demos == 100
    assert load_config(DEFAULT, rgb_cpu, ["env_id=PushCube-v1"], task_defaults=task_recipe).num_demos == 200
    assert load_config(DEFAULT, rgb_cpu, ["env_id=PushCube-v1", "num_demos=100"],
                       task_defaults=task_recipe).num_demos == 100


def test_push_cube_plays_its_chunks_open_loop_from_state_and_from_the_camera():
    state, rgb_cpu = "configs/ACT_maniskill_state_config.yaml", "configs/ACT_maniskill_rgb_cpu_config.yaml"
    for config in (state, rgb_cpu):
        cfg = load_config(DEFAULT, config, ["env_id=PushCube-v1"], task_defaults=task_recipe)
        assert (cfg.temporal_ensemble, cfg.query_frequency) == (False, 5)
    cfg = load_config(DEFAULT, state, ["env_id=PushCube-v1", "temporal_ensemble=true"], task_defaults=task_recipe)
    assert cfg.temporal_ensemble  # the user's choice wins (query_frequency is then unused)
    for config in (state, rgb_cpu):  # PickCube ensembles
        cfg = load_config(DEFAULT, config, ["env_id=PickCube-v1"], task_defaults=task_recipe)
        assert (cfg.temporal_ensemble, cfg.query_frequency) == (True, None)


def test_conversion_that_cannot_succeed_stops_after_the_probe_and_resumes(tmp_path):
    """LiftPegUpright turns the peg: pd_ee_delta_pos cannot follow, so generation stops after the first seeds
    with a message naming the mode that works; a second run reuses the planned chunk instead of planning again."""
    out = tmp_path / "LiftPegUpright-v1" / "20demos.state.pd_ee_delta_pos.h5"
    started = time.time()
    with pytest.raises(UserInputError, match=r"only 0 of the first 5 .*control_mode=pd_ee_delta_pos.*"
                                           r"set control_mode=pd_ee_delta_pose \(the recipe for LiftPegUpright-v1\)"):
        generate_demos("LiftPegUpright-v1", 20, "state", "pd_ee_delta_pos", out)
    first_run = time.time() - started
    chunks = sorted(p.name for p in (tmp_path / "LiftPegUpright-v1" / f".work_{out.stem}").iterdir())
    assert chunks == ["seeds_000000-000004"] and not out.exists()  # only the probe was planned
    started = time.time()
    with pytest.raises(UserInputError, match="only 0 of the first 5"):
        generate_demos("LiftPegUpright-v1", 20, "state", "pd_ee_delta_pos", out)
    assert time.time() - started < first_run / 3  # nothing planned or replayed again


def test_generation_killed_while_planning_resumes(tmp_path):
    out = tmp_path / "PickCube-v1" / "4demos.state.pd_ee_delta_pos.h5"
    code = f"from datasets.maniskill_demos import generate_demos; " \
           f"generate_demos('PickCube-v1', 4, 'state', 'pd_ee_delta_pos', {str(out)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    planning = out.parent / f".work_{out.stem}" / "seeds_000000-000004.planning"
    deadline = time.time() + 120
    while not (planning / "motionplanning.h5").exists() and time.time() < deadline:
        time.sleep(0.2)
    child.kill()
    child.wait()
    assert planning.exists() and not out.exists()
    generate_demos("PickCube-v1", 4, "state", "pd_ee_delta_pos", out)  # starts the interrupted chunk afresh
    assert len(load_maniskill_demos(out, 4, "state", "pd_ee_delta_pos")) == 4
    assert {p.name for p in out.parent.iterdir()} == {out.name, out.with_suffix(".json").name}  # work dir gone
