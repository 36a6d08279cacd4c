"""BiGym end to end: scripted demos recorded by BiGym's DemoRecorder -> DemoStore cache -> episodes -> ACT -> rollout.

Needs BiGym (scripts/install_bigym.sh); skipped without it. About two minutes on 2 CPU cores.
"""

import subprocess
import sys
from dataclasses import replace

import pytest

pytest.importorskip("bigym", reason="BiGym is not installed: run scripts/install_bigym.sh <bigym source>")

import imageio.v2 as imageio  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from datasets.bigym_demos import (import_recorded_demos, load_bigym_demos, make_scripted_demos,  # noqa: E402
                                  planned_labels, record_scripted_demo, scripted_store_root)
from datasets.bigym_planned_demo import read_plan  # noqa: E402
from datasets.bigym_solvers import SCRIPTED_TASKS, scripted_recipe  # noqa: E402
from datasets.chunk_dataset import ChunkDataset, compute_stats  # noqa: E402
from env.bigym_env import (DEFAULT_FLOATING_DOFS, BiGymEnv, make_bigym_env, resolve_task, sample_start,  # noqa: E402
                           start_rng, task_classes, to_snake_case)
from env.errors import UserInputError  # noqa: E402
from models.act import ACT  # noqa: E402
from models.policy import ACTPolicy, ChunkedActionExecutor  # noqa: E402
from utils.config import REPO_ROOT, load_config  # noqa: E402
from utils.schema import BiGymRun  # noqa: E402

TASK = "ReachTarget"  # the shortest scripted task (about 2 s): keeps rendering cheap
CAMERAS = ["head", "left_wrist", "right_wrist"]
IMAGE_SIZE = 64
CONTROL_FREQUENCY = 50  # 10 physics steps per action
NUM_DEMOS = 2  # made from seeds 0 and 1 (no failures expected; the solver is checked below)
CHUNK = 8


def demo_config(**fields) -> BiGymRun:
    """A BiGym run's config as load_bigym_demos takes it: absolute actions, no episode cache unless one is named."""
    return BiGymRun(**{"action_type": "absolute", "episode_cache_dir": None, **fields})


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigym")
    cfg = demo_config(env_id="reach_target", num_demos=NUM_DEMOS, cameras=CAMERAS, image_size=IMAGE_SIZE,
                      control_frequency=CONTROL_FREQUENCY, fast_rendering=True, demo_cache_root=str(root / "cache"),
                      episode_cache_dir=str(root / "episodes"), demo_source="scripted", demo_workers=2)
    episodes = load_bigym_demos(cfg, REPO_ROOT)  # makes the scripted demos first, then renders them in 2 workers
    return root, cfg, episodes


def test_demos_rendered_by_workers_equal_those_rendered_in_process(demo_setup, tmp_path):
    """The worker pool only spreads the re-rendering over processes: each episode is what this process renders from
    the same raw demo, image for image. States and labels agree to 1e-9 (not bit for bit: a worker simulates each
    demo in a new environment, this process reuses one, and MuJoCo's solver warm start leaves ~1e-12 behind)."""
    _, cfg, by_workers = demo_setup
    in_process = load_bigym_demos(replace(cfg, episode_cache_dir=str(tmp_path / "episodes"), demo_workers=1), REPO_ROOT)
    assert len(by_workers) == len(in_process) == NUM_DEMOS
    for episode, expected in zip(by_workers, in_process):
        assert episode.keys() == expected.keys() == {"state", "actions", "images"}
        np.testing.assert_array_equal(episode["images"], expected["images"])
        for key in ("state", "actions"):
            np.testing.assert_allclose(episode[key], expected[key], rtol=0, atol=1e-9, err_msg=key)


# --------------------------------------------------------------------------------------------------
# Scripted demonstrations
# --------------------------------------------------------------------------------------------------
WITH_PELVIS_Z = ("pelvis_x", "pelvis_y", "pelvis_z", "pelvis_rz")
SOLVER_FLOATING_DOFS = {"DishwasherClose": WITH_PELVIS_Z}  # the others run with BiGym's default base joints


@pytest.mark.parametrize("task", sorted(SCRIPTED_TASKS))
def test_solver_solves_perturbed_starts(task):
    """Each solver, from two perturbed starts, ends with BiGym's own success check true (no cameras, 500 Hz)."""
    from demonstrations.demo_recorder import DemoRecorder

    env = make_bigym_env(task, [], 1, "absolute", 500, False, SOLVER_FLOATING_DOFS.get(task, DEFAULT_FLOATING_DOFS))
    demos = [record_scripted_demo(env, SCRIPTED_TASKS[task].solve, seed, DemoRecorder()) for seed in (0, 1)]
    env.close()
    assert all(demo is not None for demo in demos), f"{task}: solver failed from a perturbed start"
    for demo, seed in zip(demos, (0, 1)):
        assert demo.seed == seed and np.any(demo.metadata.environment_data.reset_positions)
        assert len(demo.timesteps) > 100


def test_perturbed_starts_vary_within_bounds():
    """Perturbed starts move base, arms and the dishwasher within their stated ranges, differently per seed,
    and the same seed gives the same start; BiGym's own reset is identical every episode."""
    env = BiGymEnv("DishwasherClose", num_envs=1, cameras=[], image_size=1, action_mode="absolute",
                   control_frequency=25, max_episode_steps=1, perturbed_starts=True, floating_dofs=WITH_PELVIS_Z)
    raw = env.envs[0]
    starts = []
    for seed in (0, 1, 0):
        env.reset(seed=seed)
        starts.append(np.concatenate([raw.robot.qpos_actuated, raw.dishwasher.get_state()]))
    # For each prop joint a share of the starts has BiGym's own reset state (fully open), the rest partly closed.
    openings = np.array([sample_start(raw, start_rng(seed))[-3:] for seed in range(30)])  # (30, 3)
    env.close()
    assert ((openings == 1.0).sum(axis=0) >= 3).all() and ((openings < 1.0).sum(axis=0) >= 10).all()
    np.testing.assert_allclose(starts[0], starts[2], atol=1e-6)
    assert np.abs(starts[0] - starts[1]).max() > 0.01
    for start in starts:
        base_x, base_y, base_z, yaw = start[:4]  # BiGym's reset puts the pelvis at (0, -0.8), height 1, yaw 0
        assert abs(base_x) <= 0.05 and abs(base_y + 0.8) <= 0.05 and abs(yaw) <= 0.1 and base_z == pytest.approx(1.0)
        assert np.abs(start[4:14]).max() <= 0.1 + 1e-6  # arm joints around BiGym's all-zero pose
        door, bottom, middle = start[-3:]
        assert 0.8 - 1e-3 <= door <= 1 + 1e-3 and 0.6 - 1e-3 <= bottom <= 1 + 1e-3 and 0.6 - 1e-3 <= middle <= 1 + 1e-3


def test_scripted_recipe_applies_to_scripted_demos_unless_the_user_set_the_key(capsys):
    paper, cpu = "configs/ACT_bigym_config.yaml", "configs/ACT_bigym_cpu_config.yaml"
    # The CPU config sets none of the recipe's keys: naming the task is enough.
    for task, recipe in ((task, scripted.recipe) for task, scripted in SCRIPTED_TASKS.items()):
        cfg = load_config(paper, cpu, [f"env_id={task}"], task_defaults=scripted_recipe)
        for key, value in recipe.items():
            node = cfg
            for part in key.split("."):
                node = getattr(node, part)
            assert node == value, (task, key)
        log = capsys.readouterr().out
        assert f"{task} scripted-demo recipe" in log and "wins" not in log
    cfg = load_config(paper, cpu, ["env_id=DishwasherClose"], task_defaults=scripted_recipe)
    assert (cfg.cameras, cfg.proprioception, cfg.elapsed_time, cfg.model.chunk_size, cfg.temporal_ensemble,
            cfg.base_action, cfg.demo_noise, cfg.drop_unsolved_demos) == (
        ["head", "left_wrist"], False, True, 50, True, "absolute", 0.03, True)
    assert "proprioception=False" in capsys.readouterr().out  # the log names the values applied
    cfg = load_config(paper, cpu, ["env_id=reach_target"], task_defaults=scripted_recipe)
    assert (cfg.floating_dofs, cfg.control_frequency, cfg.max_episode_steps) == (
        ["pelvis_x", "pelvis_y", "pelvis_rz"], 25, 75)
    assert "ReachTarget scripted-demo recipe" in capsys.readouterr().out
    cfg = load_config(paper, cpu, [], task_defaults=scripted_recipe)  # the CPU config's task: DishwasherClose
    assert "pelvis_z" in cfg.floating_dofs and (cfg.control_frequency, cfg.max_episode_steps) == (50, 500)
    cfg = load_config(paper, cpu, ["env_id=DrawerTopOpen", "max_episode_steps=300"], task_defaults=scripted_recipe)
    assert (cfg.control_frequency, cfg.max_episode_steps) == (25, 300)  # the command line wins
    assert "your max_episode_steps=300 wins" in capsys.readouterr().out
    cfg = load_config(paper, None, ["env_id=ReachTarget"], task_defaults=scripted_recipe)  # human demos: no recipe
    assert (cfg.control_frequency, cfg.max_episode_steps) == (25, 150)


def test_dishwasher_solver_without_pelvis_height_says_so():
    from demonstrations.demo_recorder import DemoRecorder

    env = make_bigym_env("DishwasherClose", [], 1, "absolute", 500, False)  # base x, y, yaw only
    with pytest.raises(ValueError, match=r"floating_dofs=\[pelvis_x,pelvis_y,pelvis_z,pelvis_rz\]"):
        record_scripted_demo(env, SCRIPTED_TASKS["DishwasherClose"].solve, seed=0, recorder=DemoRecorder())
    env.close()


def test_non_solving_demo_is_rejected():
    from demonstrations.demo_recorder import DemoRecorder

    def stand_still(env, motion, rng):
        motion.hold(0.2)

    env = make_bigym_env("DishwasherClose", [], 1, "absolute", 500, False)
    assert record_scripted_demo(env, stand_still, seed=0, recorder=DemoRecorder()) is None
    env.close()


def test_physics_error_is_not_a_success():
    """A diverging simulation makes MuJoCo reset it: the dishwasher is then closed and BiGym's own success check
    says solved, but BiGym marks the episode unhealthy; the adapter reports failure for the rest of the episode."""
    env = BiGymEnv("DishwasherClose", num_envs=1, cameras=[], image_size=1, control_frequency=50)
    env.reset(seed=0)
    raw = env.envs[0]
    assert not raw.success  # BiGym's reset: everything open
    raw.mojo.data.qvel[:] = 1e12  # a physics blow-up, as a policy's contact can cause
    with pytest.warns(UserWarning, match="Physics error"):
        _, _, success = env.step(np.zeros((1, env.action_dim), np.float32))
    assert raw.success and not raw.is_healthy  # BiGym alone would count this episode as solved
    assert not success[0]
    _, _, success = env.step(np.zeros((1, env.action_dim), np.float32))
    assert not success[0]
    env.reset(seed=0)
    assert raw.is_healthy
    env.close()


def test_import_recorded_demos(tmp_path):
    """A DemoRecorder file from elsewhere joins a DemoStore cache and loads as a (human-source) demo."""
    from demonstrations.demo_recorder import DemoRecorder

    env = make_bigym_env(TASK, [], 1, "absolute", 500, False)
    recorder = DemoRecorder(tmp_path / "recorded")
    assert record_scripted_demo(env, SCRIPTED_TASKS[TASK].solve, seed=5, recorder=recorder) is not None
    recorder.save_demo()
    env.close()
    assert import_recorded_demos(tmp_path / "recorded", tmp_path / "cache") == 1
    episodes = load_bigym_demos(demo_config(env_id=TASK, num_demos=1, cameras=[], image_size=IMAGE_SIZE,
                                            control_frequency=25, fast_rendering=True,
                                            demo_cache_root=str(tmp_path / "cache")), REPO_ROOT)
    assert len(episodes) == 1 and "images" not in episodes[0]


def test_dart_demos_execute_noise_and_label_the_plan(tmp_path):
    """DART: from the same seed, a noisy demo follows the same plan as a noise-free one, but the executed actions
    (what BiGym's recorder stores and re-simulation replays) leave it, so the visited states differ; the episodes'
    labels are the plan in both, and the noisy demo still passes BiGym's success check."""
    from demonstrations.demo import Demo
    from demonstrations.demo_recorder import DemoRecorder

    env = make_bigym_env(TASK, [], 1, "absolute", 500, False)
    clean, noisy = (record_scripted_demo(env, SCRIPTED_TASKS[TASK].solve, 0, DemoRecorder(), noise) for noise in (0.0, 0.05))
    env.close()
    assert clean is not None and noisy is not None  # noisy: solved by BiGym's check despite the noise
    np.testing.assert_array_equal(clean.planned_targets, noisy.planned_targets)  # one plan for the seed
    executed = {name: np.array([step.executed_action for step in demo.timesteps])
                for name, demo in (("clean", clean), ("noisy", noisy))}
    np.testing.assert_allclose(executed["clean"][:, 3:], clean.planned_targets[:, 3:], atol=1e-6)  # arms, grippers
    arm_offset = executed["noisy"][:, 3:13] - noisy.planned_targets[:, 3:13]
    assert 0.015 < arm_offset.std() < 0.1  # the noise (std 0.05 rad, starting from zero) is what was executed

    # Saved and loaded back: the file is BiGym's (its own loader reads the executed actions) and carries the plan
    # and how it was made.
    for noise, name, demo in ((0.0, "clean", clean), (0.05, "noisy", noisy)):
        path = demo.save(tmp_path / f"{name}.safetensors")
        loaded = Demo.from_safetensors(path)
        np.testing.assert_array_equal([step.executed_action for step in loaded.timesteps], executed[name])
        planned, provenance = read_plan(path)
        np.testing.assert_array_equal(planned, demo.planned_targets)
        assert provenance == {"solver": "solve_reach_target", "solver_version": SCRIPTED_TASKS[TASK].version, "noise": noise}

    # Without noise the plan's labels are BiGym's own decimation of the executed actions (base as targets).
    from demonstrations.demo_converter import DemoConverter

    decimated = np.array([step.executed_action for step in DemoConverter.decimate(clean, 25).timesteps])
    labels = planned_labels(clean.planned_targets, 25, num_base=3)
    assert labels.shape == decimated.shape
    np.testing.assert_allclose(labels[:, 3:], decimated[:, 3:], atol=1e-5)
    start_base = clean.planned_targets[0, :3] - executed["clean"][0, :3]
    np.testing.assert_allclose(labels[:, :3], start_base + np.cumsum(decimated[:, :3], axis=0), atol=1e-5)


def test_dart_episodes_visit_other_states_with_the_same_labels(tmp_path):
    """Re-simulated at 25 Hz: noisy and noise-free demos of a seed give the same labels (absolute targets) in
    different states."""
    cfg = demo_config(env_id=TASK, num_demos=1, cameras=[], image_size=1, control_frequency=25, fast_rendering=True,
                      demo_cache_root=str(tmp_path), demo_source="scripted", base_action="absolute")
    clean, noisy = (load_bigym_demos(replace(cfg, demo_noise=noise), REPO_ROOT)[0] for noise in (0.0, 0.05))
    assert clean["actions"].shape == noisy["actions"].shape
    np.testing.assert_allclose(clean["actions"], noisy["actions"], atol=1e-5)
    assert np.abs(clean["state"][5:, :29] - noisy["state"][5:, :29]).max() > 0.03  # joint positions, rad


def test_scripted_demo_cache_is_keyed_by_solver_version_and_noise(tmp_path, monkeypatch):
    """Demos made with another noise level or solver version are never reused; a file that was made otherwise
    than asked for is refused by name."""
    assert make_scripted_demos(TASK, 1, tmp_path, noise=0.0)["attempted"] == 1
    assert make_scripted_demos(TASK, 1, tmp_path, noise=0.0)["attempted"] == 0  # the same: reused
    assert make_scripted_demos(TASK, 1, tmp_path, noise=0.05)["attempted"] >= 1
    version = SCRIPTED_TASKS[TASK].version
    monkeypatch.setattr(SCRIPTED_TASKS[TASK], "version", version + 1)
    assert make_scripted_demos(TASK, 1, tmp_path, noise=0.0)["attempted"] >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{TASK}_solver-v{version}_noise-0", f"{TASK}_solver-v{version}_noise-0.05", f"{TASK}_solver-v{version + 1}_noise-0"]
    # A demo of the old solver copied by hand into the current solver's store: its own record says what it is.
    current = next(scripted_store_root(tmp_path, TASK, 0.0).rglob("*.safetensors"))
    stale = next((tmp_path / f"{TASK}_solver-v{version}_noise-0").rglob("*.safetensors"))
    (current.parent / stale.name).write_bytes(stale.read_bytes())
    with pytest.raises(UserInputError, match=f"'solver_version': {version}, 'noise': 0.0.*remove it"):
        load_bigym_demos(demo_config(env_id=TASK, num_demos=2, cameras=[], image_size=1, control_frequency=25,
                                     fast_rendering=True, demo_cache_root=str(tmp_path), demo_source="scripted"),
                         REPO_ROOT)


def test_demo_noise_needs_scripted_absolute_demos(tmp_path):
    with pytest.raises(UserInputError, match="demo_noise=0.1 needs action_type=absolute"):
        load_bigym_demos(demo_config(env_id=TASK, num_demos=1, cameras=[], image_size=1, action_type="delta",
                                     control_frequency=25, fast_rendering=True, demo_cache_root=str(tmp_path),
                                     demo_source="scripted", demo_noise=0.1), REPO_ROOT)
    with pytest.raises(UserInputError, match="demo_noise=0.1 applies to scripted demos only"):
        load_bigym_demos(demo_config(env_id=TASK, num_demos=1, cameras=[], image_size=1, control_frequency=25,
                                     fast_rendering=True, demo_cache_root=str(tmp_path), demo_noise=0.1), REPO_ROOT)
    assert not any(tmp_path.iterdir())


def test_scripted_demos_resume(tmp_path):
    """A second call with more demos asked for keeps the first ones and continues with new seeds."""
    first = make_scripted_demos(TASK, 1, tmp_path)
    second = make_scripted_demos(TASK, 2, tmp_path)
    assert first["total"] == 1 and second["total"] == 2 and second["solved"] == 1
    assert make_scripted_demos(TASK, 2, tmp_path)["attempted"] == 0  # enough already: nothing to do
    with pytest.raises(ValueError, match="no scripted solver for BiGym task 'MovePlate'"):
        make_scripted_demos("move_plate", 1, tmp_path)


def test_demos_solved_by_workers_equal_those_solved_in_process(tmp_path):
    """Attempts spread over worker processes are taken in seed order: the same seeds give the demos, with the same
    executed actions and plans as one process makes (to 1e-9: a worker's environment has simulated other seeds
    before), and no attempt is counted or kept past the last demo needed."""
    from demonstrations.utils import Metadata
    from safetensors.numpy import load_file

    demos, summaries = [], []
    for workers in (2, 1):
        root = tmp_path / f"workers_{workers}"
        summaries.append(make_scripted_demos(TASK, 3, root, noise=0.05, workers=workers))
        paths = list(scripted_store_root(root, TASK, 0.05).rglob("*.safetensors"))
        demos.append({Metadata.from_safetensors(path).seed: load_file(path) for path in paths})
    (by_workers, in_process), (summary_workers, summary_in_process) = demos, summaries
    assert sorted(by_workers) == sorted(in_process) == [0, 1, 2]
    assert {key: summary_workers[key] for key in ("solved", "attempted", "total")} == {
        key: summary_in_process[key] for key in ("solved", "attempted", "total")} == {
        "solved": 3, "attempted": 3, "total": 3}
    for seed, tensors in in_process.items():
        assert by_workers[seed].keys() == tensors.keys()
        for key, expected in tensors.items():
            np.testing.assert_allclose(by_workers[seed][key], expected, rtol=0, atol=1e-9, err_msg=f"seed {seed} {key}")


# --------------------------------------------------------------------------------------------------
# Task names and errors
# --------------------------------------------------------------------------------------------------
def test_task_names():
    assert resolve_task("DishwasherClose") is resolve_task("dishwasher_close")
    assert to_snake_case("DishwasherUnloadCupsLong") == "dishwasher_unload_cups_long"
    tasks = task_classes()
    assert len(tasks) == 40 and "ReachTargetSingle" in tasks
    assert not any(name.startswith("_") for name in tasks)


def test_unknown_task_lists_close_matches():
    with pytest.raises(ValueError, match="Did you mean: dishwasher_close") as error:
        resolve_task("dishwasher_clos")
    assert "DishwasherClose" in str(error.value)  # the full list of valid names is there too


def test_missing_demos_offline_error(tmp_path, monkeypatch):
    import demonstrations.demo_store as demo_store

    def no_network(url, *args, **kwargs):
        raise OSError(f"simulated: no network for {url}")

    # The real DemoStore path runs; only the download itself is made to fail.
    monkeypatch.setattr(demo_store.wget, "download", no_network)
    with pytest.raises(UserInputError, match="To provide demos offline") as error:
        load_bigym_demos(demo_config(env_id="DishwasherClose", num_demos=1, cameras=CAMERAS, image_size=IMAGE_SIZE,
                                     control_frequency=CONTROL_FREQUENCY, fast_rendering=True,
                                     demo_cache_root=str(tmp_path)), REPO_ROOT)
    message = str(error.value)
    assert "demonstrations.zip" in message and "demo_source=scripted" in message and "demo_cache_root" in message


# --------------------------------------------------------------------------------------------------
# Demos -> episodes
# --------------------------------------------------------------------------------------------------
def test_episodes_format(demo_setup):
    root, cfg, episodes = demo_setup
    assert len(episodes) == NUM_DEMOS
    for ep in episodes:
        steps = len(ep["actions"])
        assert 50 < steps < 200  # about 2 s at 50 Hz
        assert ep["state"].shape == (steps, 66) and ep["state"].dtype == np.float32
        assert ep["actions"].shape == (steps, 15) and ep["actions"].dtype == np.float32
        assert ep["images"].shape == (steps, len(CAMERAS), 3, IMAGE_SIZE, IMAGE_SIZE)
        assert ep["images"].dtype == np.uint8 and ep["images"].std() > 0
        # Absolute joint targets of a reach: some arm joint's target sweeps > 0.2 rad over the episode (per-step
        # deltas, or a frozen plan, stay far below that).
        arm_targets = ep["actions"][:, 3:13]
        assert (arm_targets.max(axis=0) - arm_targets.min(axis=0)).max() > 0.2

    # A second load reads the converted-episode cache and gives the same arrays.
    again = load_bigym_demos(cfg, REPO_ROOT)
    for a, b in zip(episodes, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_unsolved_demos_are_dropped_only_when_asked(demo_setup, tmp_path):
    """The episode cache records whether each re-simulated demo solved the task; mark demo 0's as a failure (what a
    demo decimated to too low a control frequency gets) and drop_unsolved_demos trains on demo 1 alone."""
    import shutil

    root, cfg, episodes = demo_setup
    cache_dir = tmp_path / "episodes"
    shutil.copytree(root / "episodes", cache_dir)

    def caches_demo_0(path):  # demo 0's episode as this config caches it (with its images)
        with np.load(path) as data:
            return "images" in data and np.array_equal(data["actions"], episodes[0]["actions"])

    first = next(path for path in cache_dir.rglob("*.npz") if caches_demo_0(path))
    cache_files = sorted(first.parent.glob("*.npz"))
    assert len(cache_files) == NUM_DEMOS
    with np.load(first) as data:
        assert bool(data["success"])
        np.savez(first, **{**{key: data[key] for key in data.files}, "success": False})
    cfg = replace(cfg, episode_cache_dir=str(cache_dir))

    kept = load_bigym_demos(cfg, REPO_ROOT)
    assert len(kept) == NUM_DEMOS  # by default every demo is imitated as it is
    solved_only = load_bigym_demos(replace(cfg, drop_unsolved_demos=True), REPO_ROOT)
    assert len(solved_only) == 1
    np.testing.assert_array_equal(solved_only[0]["actions"], episodes[1]["actions"])

    for path in cache_files:
        with np.load(path) as data:
            np.savez(path, **{**{key: data[key] for key in data.files}, "success": False})
    with pytest.raises(UserInputError, match="none of the 2"):
        load_bigym_demos(replace(cfg, drop_unsolved_demos=True), REPO_ROOT)


def test_delta_actions_state_only(demo_setup):
    """Delta mode: arm deltas accumulate to the absolute targets; no cameras -> no "images" key."""
    _, cfg, absolute = demo_setup
    delta = load_bigym_demos(replace(cfg, action_type="delta", cameras=[]), REPO_ROOT)
    for abs_ep, delta_ep in zip(absolute, delta):
        assert "images" not in delta_ep and delta_ep["state"].shape == abs_ep["state"].shape
        # Converted at 500 Hz from zero, then summed per 10-step window: the running sum is the absolute target
        # at each window's end, while decimated absolute actions are window means, so compare loosely.
        targets = np.cumsum(delta_ep["actions"][:, 3:13], axis=0)
        np.testing.assert_allclose(targets, abs_ep["actions"][:, 3:13], atol=0.05)


def test_state_without_joint_velocities(demo_setup):
    """joint_velocities=False: demos and environment both leave out the 29 joint velocities and nothing else."""
    _, cfg, full = demo_setup
    positions_only = load_bigym_demos(replace(cfg, cameras=[], joint_velocities=False), REPO_ROOT)
    keep = np.r_[0:29, 58:66]  # joint positions | grippers, floating base, its accumulated actions
    for full_ep, ep in zip(full, positions_only):
        assert ep["state"].shape == (len(full_ep["state"]), 37)
        np.testing.assert_array_equal(ep["state"], full_ep["state"][:, keep])
    env_states = {}
    for joint_velocities in (True, False):
        env = BiGymEnv(TASK, num_envs=1, cameras=[], image_size=1, control_frequency=CONTROL_FREQUENCY,
                       joint_velocities=joint_velocities)
        env.reset(seed=0)
        env_states[joint_velocities] = env.step(np.zeros((1, env.action_dim), np.float32))[0]["state"][0]
        env.close()
    assert np.abs(env_states[True][29:58]).max() > 0  # the robot moves after a step: velocities are not zero
    np.testing.assert_array_equal(env_states[False], env_states[True][keep])


def test_elapsed_time_and_proprioception_switches_shape_the_state_alike(demo_setup):
    """elapsed_time appends step / max_episode_steps, proprioception=false keeps that alone: in the demos and in the
    environment, whose step counter restarts at every reset."""
    _, cfg, full = demo_setup
    horizon = 40
    with_time = load_bigym_demos(replace(cfg, elapsed_time=True, max_episode_steps=horizon), REPO_ROOT)
    time_only = load_bigym_demos(replace(cfg, elapsed_time=True, max_episode_steps=horizon, proprioception=False),
                                 REPO_ROOT)
    for full_ep, ep, alone in zip(full, with_time, time_only):
        clock = np.arange(len(full_ep["state"]), dtype=np.float32)[:, None] / horizon
        np.testing.assert_array_equal(ep["state"], np.concatenate([full_ep["state"], clock], axis=1))
        np.testing.assert_array_equal(alone["state"], clock)
        np.testing.assert_array_equal(alone["images"], full_ep["images"])  # the cameras stay
    env = BiGymEnv(TASK, num_envs=2, cameras=[], image_size=1, control_frequency=CONTROL_FREQUENCY,
                   max_episode_steps=horizon, elapsed_time=True, proprioception=False)
    for _ in range(2):  # the second reset starts the clock at 0 again
        states = [env.reset(seed=0)["state"]]
        states += [env.step(np.zeros((2, env.action_dim), np.float32))[0]["state"] for _ in range(3)]
        np.testing.assert_array_equal(np.stack(states), np.arange(4, dtype=np.float32)[:, None, None] / horizon
                                      * np.ones((1, 2, 1), np.float32))
    env.close()
    with pytest.raises(UserInputError, match="proprioception=false and elapsed_time=false leave the policy's state"):
        BiGymEnv(TASK, num_envs=1, cameras=[], image_size=1, proprioception=False)


@pytest.mark.parametrize("overrides, message", [
    (["env_id=DishwasherClose", "proprioception=false", "elapsed_time=false"],
     "error: proprioception=false and elapsed_time=false leave the policy's state empty: set one of them to true"),
    (["env_id=MovePlate"],
     "error: no scripted solver for BiGym task 'MovePlate'; solvers exist for "
     "['DishwasherClose', 'DrawerTopOpen', 'ReachTarget']"),
])
def test_a_run_that_cannot_start_stops_the_entry_script_before_it_writes_anything(tmp_path, overrides, message):
    result = subprocess.run([sys.executable, "ACT_for_bigym.py", "--config", "configs/ACT_bigym_cpu_config.yaml",
                             *overrides, f"ckpt_dir={tmp_path / 'ckpts'}", f"video_dir={tmp_path / 'videos'}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == message
    assert not list(tmp_path.iterdir())  # no run folder, no video folder


def test_absolute_base_actions_replay_the_demo(demo_setup):
    """base_action=absolute: the demo's base entries become target poses (their running sum of deltas from the
    start), and playing them through BiGymEnv(base_action="absolute") re-simulates the same episode."""
    _, cfg, _ = demo_setup
    cfg = replace(cfg, cameras=[])
    deltas = load_bigym_demos(cfg, REPO_ROOT)
    targets = load_bigym_demos(replace(cfg, base_action="absolute"), REPO_ROOT)
    env = BiGymEnv(TASK, num_envs=1, cameras=[], image_size=1, control_frequency=CONTROL_FREQUENCY,
                   perturbed_starts=True, base_action="absolute")
    starts = {seed: env.reset(seed=seed)["state"][0] for seed in range(NUM_DEMOS)}
    for delta_ep, target_ep in zip(deltas, targets):
        np.testing.assert_array_equal(delta_ep["state"], target_ep["state"])
        np.testing.assert_array_equal(delta_ep["actions"][:, 3:], target_ep["actions"][:, 3:])  # arms, grippers
        start_pose = delta_ep["state"][0, -6:-3]  # proprioception_floating_base: pelvis x, y, yaw
        np.testing.assert_allclose(target_ep["actions"][:, :3], start_pose + np.cumsum(delta_ep["actions"][:, :3], 0),
                                   atol=1e-5)
        seed = next(s for s, state in starts.items() if np.array_equal(state, target_ep["state"][0]))
        env.reset(seed=seed)
        for t, action in enumerate(target_ep["actions"][:-1]):
            obs, _, _ = env.step(action[None])
            np.testing.assert_allclose(obs["state"][0], target_ep["state"][t + 1], atol=1e-4)
    env.close()


def test_unknown_base_action_is_refused(tmp_path):
    """A typo in base_action stops the run before any demo is made, rather than training on delta actions."""
    with pytest.raises(UserInputError, match=r"base_action must be one of \('delta', 'absolute'\), got 'abs'"):
        load_bigym_demos(demo_config(env_id=TASK, num_demos=1, cameras=[], image_size=IMAGE_SIZE, control_frequency=25,
                                     fast_rendering=True, demo_cache_root=str(tmp_path), demo_source="scripted",
                                     base_action="abs"), REPO_ROOT)
    assert not any(tmp_path.iterdir())
    with pytest.raises(UserInputError, match="base_action must be one of"):
        BiGymEnv(TASK, num_envs=1, cameras=[], image_size=1, base_action="abs")


def test_demo_start_matches_env_reset(demo_setup):
    """Re-simulation re-applies the recorded perturbed start: the first frames equal the perturbed evaluation
    start of the same seed (shared reset, perturbation, observation and rendering code), and differ from
    BiGym's own reset."""
    _, _, episodes = demo_setup
    starts = {}
    for perturbed in (True, False):
        env = BiGymEnv(TASK, num_envs=1, cameras=CAMERAS, image_size=IMAGE_SIZE, action_mode="absolute",
                       control_frequency=CONTROL_FREQUENCY, max_episode_steps=5, fast_rendering=True,
                       perturbed_starts=perturbed)
        starts[perturbed] = [env.reset(seed=seed) for seed in range(NUM_DEMOS)]
        env.close()
    # Demo files are read in file-name (uuid) order, so match each episode to its seed by the first state.
    for ep in episodes:
        assert any(np.array_equal(ep["state"][0], s["state"][0]) and np.array_equal(ep["images"][0], s["images"][0])
                   for s in starts[True])
        assert not any(np.array_equal(ep["state"][0], s["state"][0]) for s in starts[False])


# --------------------------------------------------------------------------------------------------
# Train a tiny ACT and roll it out
# --------------------------------------------------------------------------------------------------
def test_train_and_rollout(demo_setup, tmp_path):
    _, _, episodes = demo_setup
    torch.manual_seed(0)
    dataset = ChunkDataset(episodes, chunk_size=CHUNK, action_type="absolute")
    model = ACT(state_dim=66, action_dim=15, num_cameras=len(CAMERAS), chunk_size=CHUNK, d_model=64, nhead=4,
                dim_feedforward=128, num_encoder_layers=1, num_decoder_layers=1, num_style_encoder_layers=1,
                pretrained_backbone=False)
    policy = ACTPolicy(model, compute_stats(episodes), kl_weight=10)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    losses = []
    for _ in range(4):
        batch = dataset[torch.randint(len(dataset), (8,))]
        out = policy(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert all(np.isfinite(losses))

    env = BiGymEnv("reach_target", num_envs=1, cameras=CAMERAS, image_size=IMAGE_SIZE, action_mode="absolute",
                   control_frequency=CONTROL_FREQUENCY, max_episode_steps=6, fast_rendering=True, video_size=96)
    policy.eval()
    executor = ChunkedActionExecutor(CHUNK, temporal_ensemble=True)
    obs = env.reset(seed=0)
    frames = [env.render()[0]]
    for _ in range(env.max_episode_steps):
        chunk = None
        if executor.needs_new_chunk():
            state = torch.from_numpy(obs["state"])[:, None]  # (E, 1, S)
            images = torch.from_numpy(obs["images"])[:, None]  # (E, 1, N, 3, H, W) uint8
            chunk = policy.predict_chunk(state, images)  # (E, K, A)
        obs, reward, success = env.step(executor.act(chunk).numpy())
        assert reward.shape == (1,) and success.dtype == bool
        frames.append(env.render()[0])
    env.close()
    assert frames[0].shape == (96, 3 * 96, 3)
    video = tmp_path / "rollout.mp4"
    imageio.mimsave(video, frames, fps=10)
    assert video.stat().st_size > 0
