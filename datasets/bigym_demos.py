"""BiGym demonstrations -> episodes, with BiGym's own demo tools.

Pipeline for one task:
  1. `DemoStore(cache_root)` provides the raw human demos: on first use it downloads BiGym's demo release and
     unpacks it into <cache_root>/demonstrations/<DEMO_VERSION>/ (default cache_root: ~/.bigym). These are
     "lightweight" demos: the 500 Hz action sequence plus the seed that laid out the scene.
  2. delta action mode only: `DemoConverter.absolute_to_delta`, at 500 Hz (its clipping assumes one physics
     step per action, so it must run before decimation).
  3. `DemoConverter.decimate` to the control frequency (absolute arm targets averaged over the window,
     floating-base deltas summed, gripper command taken from the window's last step).
  4. Re-simulation from the demo's seed in an environment built by env.bigym_env.make_bigym_env, i.e. with
     the configured cameras, image size and fast-rendering switch, pairing each observation with the action
     taken FROM it (BiGym's own DemoConverter.create_demo_in_new_env stores the observation AFTER each action
     and cannot apply our renderer settings, so step 4 is done here with the same functions evaluation uses).
  5. Optionally cached as one .npz per demo under `episode_cache_dir`, keyed by every setting that changes
     the result, so re-rendering happens once; with a cache, steps 3-5 run in one worker process per core
     (`demo_workers`), as rendering two cameras costs up to a minute per demo.

Output: a list of {"state": (T, S) float32, "actions": (T, A) float32, "images": (T, N, 3, H, W) uint8 (when
cameras are set)}, the format datasets.chunk_dataset.ChunkDataset takes.

Two demo sources, one loading path (steps 1-5 are the same for both):
  - human (BiGym's release, above). Offline: unpack the release zip into <dir>/demonstrations/<DEMO_VERSION>/
    and pass cache_root=<dir>.
  - scripted (`make_scripted_demos`): our solvers (datasets/bigym_solvers.py) drive the robot from perturbed
    starts while BiGym's DemoRecorder records, 500 Hz absolute joint positions with the floating base like the
    human demos, in one worker process per core (`demo_workers`); only demos BiGym's success check calls solved are kept, in a DemoStore cache of their own per
    solver version and DART noise level (scripted_store_root, under demos/bigym_scripted by default). Each stores
    its start in `reset_positions`, which step 4 re-applies, and the solver's plan (datasets/bigym_planned_demo.py):
    step 4 replays the executed actions and labels each step with the plan's targets, so with DART noise the
    policy learns to return to the plan from the states the noise led to.
Demos recorded by other means with DemoRecorder are added to a cache with `import_recorded_demos`.
"""

import collections
import functools
import os
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.bigym_solvers import SCRIPTED_TASKS, ScriptedMotion, scripted_task
from datasets.frame_store import report_frames_in_ram
from datasets.worker_pool import demo_worker_pool
from env.bigym_env import (DEFAULT_FLOATING_DOFS, DEMO_FREQUENCY, absolute_base_action, apply_start, base_deltas,
                           bigym_camera_images, bigym_state_vector, check_base_action, check_state_contents,
                           make_bigym_env, policy_state, read_observation, reset_perturbed, resolve_task, solved)
from env.errors import UserInputError

SCRIPTED_DEMO_ROOT = "demos/bigym_scripted"  # default root of the scripted demos' DemoStores (relative to the repo)
NUM_GRIPPERS = 2  # the H1's; the last entries of every action


def demo_url() -> str:
    from bigym.const import DEMO_RELEASES, DEMO_VERSION

    return f"{DEMO_RELEASES}/v{DEMO_VERSION}/demonstrations.zip"


def demo_cache_path(cache_root) -> Path:
    """Where DemoStore keeps the unpacked demo release: <cache_root>/demonstrations/<DEMO_VERSION>/."""
    from bigym.const import CACHE_PATH, DEMO_VERSION

    return Path(cache_root if cache_root is not None else CACHE_PATH) / "demonstrations" / DEMO_VERSION


def _lightweight_metadata(task_cls, floating_dofs):
    """Metadata naming the cache folder of the task's raw demos (always recorded in absolute joint positions;
    BiGym keeps demos of each floating-base DOF set apart)."""
    from bigym.action_modes import JointPositionActionMode, PelvisDof
    from demonstrations.utils import Metadata, ObservationMode

    return Metadata.from_env_cls(task_cls, JointPositionActionMode, floating_base=True,
                                 floating_dofs=[PelvisDof(dof) for dof in floating_dofs],
                                 obs_mode=ObservationMode.Lightweight, action_mode_absolute=True)


def _open_store(cache_root, download: bool = True):
    """DemoStore rooted at cache_root (None: BiGym's default ~/.bigym), with its demos downloaded if needed.

    download=False (scripted demos): the cache is all there is; nothing is fetched.
    """
    from demonstrations.demo_store import DemoStore

    store = DemoStore(Path(cache_root) if cache_root is not None else None)
    cache_path = demo_cache_path(cache_root)
    has_local_demos = next(cache_path.rglob("*.safetensors"), None) is not None
    if cache_root is not None and has_local_demos and not store.cached:
        # An unpacked copy placed by hand lacks DemoStore's ".lock" marker; without it DemoStore would try
        # to download the release over it.
        store.cached = True
    if not download:
        return store
    store.pull_demos()  # no-op when cached; logs (does not raise) when the download fails
    if not store.cached:
        raise UserInputError(
            f"BiGym demos are not available: downloading {demo_url()} failed (see the error logged above) and "
            f"{cache_path} holds no demos.\n"
            "  To provide demos offline, either\n"
            f"  - download that zip elsewhere, unzip it into <DIR>/demonstrations/{cache_path.name}/ and pass "
            "demo_cache_root=<DIR>, or\n"
            "  - train on scripted demos made here by this project's solvers: demo_source=scripted (ReachTarget, "
            "DishwasherClose, DrawerTopOpen; see scripts/make_bigym_demos.py), or\n"
            "  - record demos with BiGym's demonstrations.demo_recorder.DemoRecorder (500 Hz, absolute joint "
            "positions) and add them with datasets.bigym_demos.import_recorded_demos(<recorded dir>, <DIR>)."
        )
    return store


def import_recorded_demos(recorded_dir, cache_root) -> int:
    """Add DemoRecorder files (*.safetensors) to the DemoStore cache at cache_root. Returns how many were added.

    They must be recorded at 500 Hz (control_frequency=500, BiGym's default) in
    JointPositionActionMode(floating_base=True, absolute=True), like BiGym's own demos.
    """
    from demonstrations.demo import Demo
    from demonstrations.demo_store import DemoStore

    files = sorted(Path(recorded_dir).glob("*.safetensors"))
    if not files:
        raise UserInputError(f"{recorded_dir}: no *.safetensors demo files (DemoRecorder.save_demo writes them)")
    store = DemoStore(Path(cache_root))
    for path in files:
        demo = Demo.from_safetensors(path)
        env_data = demo.metadata.environment_data
        if env_data.action_mode_name != "JointPositionActionMode" or not env_data.action_mode_absolute:
            raise UserInputError(f"{path}: recorded with {env_data.action_mode_description}; "
                             "expected JointPositionActionMode with absolute=True")
        store.cache_demo(demo)  # stores the lightweight (actions-only) version next to the full one
    store.cached = True  # the cache is complete as it is: nothing to download
    return len(files)


def scripted_store_root(cache_root, task: str, noise: float) -> Path:
    """The DemoStore root of `task`'s scripted demos made by its current solver with DART noise `noise`: one root
    per (solver version, noise level), so a changed solver or noise level never reuses stale demos."""
    return Path(cache_root) / f"{task}_solver-v{SCRIPTED_TASKS[task].version}_noise-{noise:g}"


def record_scripted_demo(env, solver, seed: int, recorder, noise: float = 0.0):
    """One scripted demo from the perturbed start of `seed`, recorded by BiGym's DemoRecorder.

    env: a raw BiGym env at 500 Hz in absolute joint positions. noise: DART noise (datasets/bigym_solvers.py);
    the recorder records the executed (noisy) actions, the plan is kept beside them. Returns a PlannedDemo if
    BiGym's own success check says the task is solved at the end, else None (the attempt is dropped).
    """
    from datasets.bigym_planned_demo import PlannedDemo

    start = reset_perturbed(env, seed)  # the recorder stores the seed: re-simulation lays the scene out the same way
    recorder.record(env, lightweight_demo=True)  # actions only, like BiGym's release; observations re-rendered later
    recorder.demo.metadata.environment_data.reset_positions = start.tolist()
    planned = []

    def step(action, planned_target):
        recorder.add_timestep(env.step(action), action)
        planned.append(planned_target)

    motion = ScriptedMotion(env, step, np.random.default_rng([seed, 1]), noise=noise)
    solver(env, motion, motion.rng)
    recorder.stop()
    if not solved(env):
        return None
    provenance = {"solver": solver.__name__, "solver_version": (SCRIPTED_TASKS[env.task_name].version if env.task_name in SCRIPTED_TASKS else None), "noise": noise}
    return PlannedDemo(recorder.demo, planned, provenance)


def _recorded_seeds(store, task_cls, floating_dofs) -> list[int]:
    """Seeds of the demos already in the cache (read from their metadata headers)."""
    from demonstrations.utils import Metadata

    with warnings.catch_warnings():  # an empty cache is expected here; DemoStore warns about it
        warnings.simplefilter("ignore", UserWarning)
        paths = [p for p in store.list_demo_paths(_lightweight_metadata(task_cls, floating_dofs))
                 if p.suffix == ".safetensors"]
    return [Metadata.from_safetensors(p).seed for p in paths]


def _solver_env(task: str, floating_dofs):
    """The environment scripted demos are made in: 500 Hz absolute joint positions, no cameras."""
    return make_bigym_env(task, cameras=[], image_size=1, action_mode="absolute", control_frequency=DEMO_FREQUENCY,
                          fast_rendering=False, floating_dofs=floating_dofs)


@functools.lru_cache(maxsize=1)
def _worker_solver_env(task: str, floating_dofs: tuple):
    """A worker process's solver environment and recorder: made at its first attempt, kept for the next ones
    (making one costs seconds, an attempt 5-10 s)."""
    from demonstrations.demo_recorder import DemoRecorder

    return _solver_env(task, floating_dofs), DemoRecorder()


def _attempt_in_worker(task: str, seed: int, noise: float, floating_dofs: tuple):
    """One attempt in a worker process: the recorded PlannedDemo, or None if the task was not solved."""
    env, recorder = _worker_solver_env(task, floating_dofs)
    return record_scripted_demo(env, SCRIPTED_TASKS[task].solve, seed, recorder, noise)


def _scripted_attempts(task: str, seeds: range, noise: float, floating_dofs, workers: int):
    """(seed, PlannedDemo or None) for each seed, in seed order. workers > 1: the attempts run in that many worker
    processes, 2 per worker queued ahead, so that a slow attempt does not leave the others idle; when the caller
    stops early (the generator is closed) the attempts still queued or running are dropped with their workers.
    Otherwise they run here, one after the other in one environment."""
    if workers <= 1:
        from demonstrations.demo_recorder import DemoRecorder

        env, recorder = _solver_env(task, floating_dofs), DemoRecorder()
        try:
            for seed in seeds:
                yield seed, record_scripted_demo(env, SCRIPTED_TASKS[task].solve, seed, recorder, noise)
        finally:
            env.close()
        return
    with demo_worker_pool(workers) as pool:
        queued = collections.deque()
        for seed in seeds:
            queued.append((seed, pool.submit(_attempt_in_worker, task, seed, noise, tuple(floating_dofs))))
            if len(queued) == 2 * workers:
                seed, attempt = queued.popleft()
                yield seed, attempt.result()
        while queued:
            seed, attempt = queued.popleft()
            yield seed, attempt.result()


def make_scripted_demos(task: str, num_demos: int, cache_root, first_seed: int = 0,
                        max_attempts: int | None = None, floating_dofs=DEFAULT_FLOATING_DOFS, noise: float = 0.0,
                        workers: int = 1) -> dict:
    """Make scripted demos of `task` with DART noise `noise` until their DemoStore (scripted_store_root under
    cache_root) holds num_demos of them (resumes after a kill).

    Attempt i uses seed first_seed + i (BiGym's scene seed and the start perturbation's); evaluation seeds
    (eval_seed, 1,000,000 and up by default) never meet them. Attempts run in `workers` processes but are kept in
    seed order, so any number of workers keeps the same seeds' demos. Each solved demo is written to the DemoStore
    cache as soon as it and every attempt before it are done. Returns {"solved", "attempted", "seconds", "total"}.
    """
    from demonstrations.demo_store import DemoStore

    task = scripted_task(task)
    task_cls = resolve_task(task)
    store_root = scripted_store_root(cache_root, task, noise)
    store = DemoStore(store_root)
    done = _recorded_seeds(store, task_cls, floating_dofs)
    seed = max(done, default=first_seed - 1) + 1
    max_attempts = max_attempts or 2 * num_demos + 10
    summary = {"solved": 0, "attempted": 0, "seconds": 0.0, "total": len(done)}
    if len(done) >= num_demos:
        return summary
    started = time.time()
    bar = tqdm(total=num_demos, initial=len(done), desc=f"scripted {task} demos (noise {noise:g}, {workers} worker(s))",
               dynamic_ncols=True)
    attempts = _scripted_attempts(task, range(seed, seed + max_attempts), noise, floating_dofs, workers)
    for _, demo in attempts:
        summary["attempted"] += 1
        if demo is not None:
            store.cache_demo(demo)
            summary["solved"] += 1
            summary["total"] += 1
            bar.update(1)
        bar.set_postfix(solved=f"{summary['solved']}/{summary['attempted']}")
        if summary["total"] == num_demos:
            break
    attempts.close()
    bar.close()
    summary["seconds"] = time.time() - started
    print(f"[scripted demos] {task} (noise {noise:g}): {summary['solved']} solved of {summary['attempted']} attempted "
          f"in {summary['seconds']:.0f}s with {workers} worker(s); {summary['total']} in {demo_cache_path(store_root)}")
    if summary["total"] < num_demos:
        raise RuntimeError(f"only {summary['total']} of {num_demos} scripted {task} demos after {max_attempts} "
                           f"attempts: the solver fails too often (see the summary above)")
    return summary


def _raw_demo_paths(store, cache_root, task_cls, num_demos: int, floating_dofs) -> list[Path]:
    """The first num_demos (by file name, so a fixed selection; -1: all) 500 Hz lightweight demo files of the task."""
    metadata = _lightweight_metadata(task_cls, floating_dofs)
    paths = sorted(p for p in store.list_demo_paths(metadata) if p.suffix == ".safetensors")
    if len(paths) < max(num_demos, 1):
        raise UserInputError(f"{demo_cache_path(cache_root)}: {len(paths)} lightweight {task_cls.__name__} demos found "
                         f"({metadata.environment_data.action_mode_description}), num_demos={num_demos} requested")
    return paths if num_demos < 0 else paths[:num_demos]


def _load_plan(path: Path, task: str, noise: float) -> np.ndarray:
    """The solver's plan (T, A) stored in a scripted demo file, after checking the file was made as asked."""
    from datasets.bigym_planned_demo import read_plan

    planned, provenance = read_plan(path)
    expected = {"solver_version": SCRIPTED_TASKS[task].version, "noise": noise}
    if planned is None or provenance is None or any(provenance.get(k) != v for k, v in expected.items()):
        raise UserInputError(f"{path}: a scripted demo made with {provenance} (or without a plan) where "
                             f"{expected} was asked for; remove it, it is not a demo of the current solver")
    return planned


def planned_labels(planned: np.ndarray, control_frequency: int, num_base: int) -> np.ndarray:
    """Step 3 for the plan: (T, A) 500 Hz planned targets -> (T', A) at the control frequency, windowed as BiGym's
    DemoConverter.decimate windows the executed actions (T' equal): arm targets averaged over the window, base
    targets and gripper commands where the plan is at the window's end."""
    rate = DEMO_FREQUENCY // control_frequency
    padding = -len(planned) % rate  # decimate repeats the last step to fill the last window
    planned = np.concatenate([planned, np.repeat(planned[-1:], padding, axis=0)])
    windows = planned.reshape(-1, rate, planned.shape[1])  # (T', rate, A)
    labels = windows.mean(axis=1)
    labels[:, :num_base] = windows[:, -1, :num_base]
    labels[:, -NUM_GRIPPERS:] = windows[:, -1, -NUM_GRIPPERS:]
    return labels


def _convert_actions(demo, action_mode: str, control_frequency: int, robot):
    """Steps 2-3: 500 Hz absolute actions -> the configured action mode and frequency.

    robot: a Robot in the target action mode, built once (decimate would otherwise build one per demo, slowly).
    """
    from demonstrations.demo_converter import DemoConverter

    if action_mode == "delta":
        demo = DemoConverter.absolute_to_delta(demo)
    return DemoConverter.decimate(demo, control_frequency, DEMO_FREQUENCY, robot=robot)


def _label(env, executed: np.ndarray, planned: np.ndarray | None, base_action: str) -> np.ndarray:
    """The action the policy learns at one step, before `executed` is stepped. planned: the plan's targets (base
    absolute) or None (a demo without a plan: the executed action is the label)."""
    if planned is not None:
        executed = base_deltas(env, planned)  # BiGym's deltas from the base targets now to the plan's
    return absolute_base_action(env, executed) if base_action == "absolute" else executed.astype(np.float32)


def replay_demo(env, demo, cameras: list[str], joint_velocities: bool = True,
                base_action: str = "delta", planned: np.ndarray | None = None) -> tuple[dict, bool]:
    """Step 4: re-simulate `demo` in `env`; returns (episode, success at the end).

    base_action="absolute" records the base targets each step's deltas lead to (env.bigym_env.absolute_base_action).
    planned: (T, A) labels at the control frequency (planned_labels), or None to learn the executed actions.
    """
    env.reset(seed=demo.seed)
    start = demo.metadata.environment_data.reset_positions  # all zeros in human demos: BiGym's own reset
    if np.any(start):
        apply_start(env, start)
    obs = read_observation(env)  # the same reset observation evaluation starts from
    states, images, actions = [], [], []
    for step, timestep in enumerate(demo.timesteps):
        action = timestep.executed_action  # (A,) float64, already clipped to the env's action space
        states.append(bigym_state_vector(obs, joint_velocities))
        if cameras:
            images.append(bigym_camera_images(obs, cameras))
        actions.append(_label(env, action, None if planned is None else planned[step], base_action))
        obs, *_ = env.step(action)
    episode = {"state": np.stack(states), "actions": np.stack(actions)}  # (T, S), (T, A)
    if cameras:
        episode["images"] = np.stack(images)  # (T, N, 3, H, W)
    return episode, solved(env)


def _episode_cache_file(episode_cache_dir, task: str, uuid: str, cameras, image_size, action_mode,
                        control_frequency, fast_rendering, joint_velocities, base_action) -> Path:
    view = f"{'-'.join(cameras)}_{image_size}px_{'fast' if fast_rendering else 'full'}" if cameras else "state"
    view += ("" if joint_velocities else "_novel") + ("_absbase" if base_action == "absolute" else "")
    return Path(episode_cache_dir) / task / f"{action_mode}_{control_frequency}hz_{view}" / f"{uuid}.npz"


def _replay_raw_demo(env, path: Path, cfg) -> tuple[dict, bool]:
    """Steps 3-4 for one raw demo file: its actions converted to the run's action type and rate, re-simulated."""
    from demonstrations.demo import Demo

    demo = Demo.from_safetensors(path)
    task = resolve_task(cfg.env_id).__name__
    # The plan labels absolute arm targets; delta-mode demos (noise-free, see above) learn BiGym's conversion.
    plan = _load_plan(path, task, cfg.demo_noise) if cfg.demo_source == "scripted" else None
    planned = None
    if plan is not None and cfg.action_type == "absolute":
        planned = planned_labels(plan, cfg.control_frequency, len(env.robot.floating_base.all_actuators))
    actions = _convert_actions(demo, cfg.action_type, cfg.control_frequency, env.robot)
    return replay_demo(env, actions, cfg.cameras, cfg.joint_velocities, cfg.base_action, planned)


def _write_episode(cache_file: Path, episode: dict, success: bool):
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp.npz")
    np.savez(tmp, success=success, **episode)
    os.replace(tmp, cache_file)  # appears only once complete


def _replay_to_cache_file(path: Path, cache_file: Path, cfg):
    """A demo worker's job: one raw demo re-simulated in an environment of its own and written to its cache file."""
    env = make_bigym_env(resolve_task(cfg.env_id).__name__, cfg.cameras, cfg.image_size, cfg.action_type,
                         cfg.control_frequency, cfg.fast_rendering, cfg.floating_dofs)
    try:
        _write_episode(cache_file, *_replay_raw_demo(env, path, cfg))
    finally:
        env.close()


def load_bigym_demos(cfg, repo_root: Path) -> list[dict]:
    """The demos a BiGym run's config names (utils/schema.py's BiGymRun) as episodes (see the module docstring).

    cfg.num_demos demos (-1: all) of cfg.env_id from cfg.demo_source: "human" (BiGym's release) or "scripted" (made
    here first when fewer than num_demos exist), re-simulated with the run's cameras, image size, action type,
    control frequency and rendering. Relative paths (demo_cache_root, episode_cache_dir) are relative to repo_root.
    demo_cache_root: the DemoStore cache root (None: ~/.bigym for human demos, downloading the release on first use;
        SCRIPTED_DEMO_ROOT for scripted ones, the folder holding one DemoStore per solver version and noise level).
    episode_cache_dir: where converted episodes are kept (None: convert every time).
    joint_velocities: keep the joint velocities in the state (env.bigym_env.bigym_state_vector).
    base_action: "delta" (BiGym's) or "absolute" floating-base actions (see replay_demo).
    demo_noise: scripted demos only: the DART noise they are made with (datasets/bigym_solvers.py); each step is
        labelled with the solver's plan (with action_type=absolute).
    elapsed_time, proprioception: what the policy's state holds, as the environment builds it (policy_state);
        applied after the episode cache, so cached episodes serve every setting.
    drop_unsolved_demos: keep only the episodes that end in success after re-simulation (the cache records it).
    """
    from demonstrations.demo import Demo

    task_cls = resolve_task(cfg.env_id)
    task = task_cls.__name__
    check_base_action(cfg.base_action)  # before any demo is made or cached: a typo must not train on delta actions
    check_state_contents(cfg.proprioception, cfg.elapsed_time, cfg.max_episode_steps)
    cache_root = cfg.demo_cache_root or (SCRIPTED_DEMO_ROOT if cfg.demo_source == "scripted" else None)
    cache_root = None if cache_root is None else repo_root / cache_root  # an absolute path stays as it is
    episode_cache_dir = None if cfg.episode_cache_dir is None else repo_root / cfg.episode_cache_dir
    if cfg.demo_source == "scripted":
        if cfg.num_demos < 1:
            raise UserInputError(f"demo_source=scripted needs num_demos >= 1 (how many to make), got {cfg.num_demos}")
        if cfg.demo_noise > 0 and cfg.action_type != "absolute":
            raise UserInputError(f"demo_noise={cfg.demo_noise} needs action_type=absolute: the labels are the "
                                 f"solver's planned joint targets, got action_type={cfg.action_type}")
        make_scripted_demos(task, cfg.num_demos, cache_root, floating_dofs=cfg.floating_dofs, noise=cfg.demo_noise,
                            workers=cfg.demo_workers or os.cpu_count() or 1)
        cache_root = scripted_store_root(cache_root, task, cfg.demo_noise)
    elif cfg.demo_source == "human":
        if cfg.demo_noise:
            raise UserInputError(f"demo_noise={cfg.demo_noise} applies to scripted demos only (demo_source=scripted); "
                                 "human demos are recorded as they are")
    else:
        raise UserInputError(f"demo_source must be 'human' or 'scripted', got '{cfg.demo_source}'")
    store = _open_store(cache_root, download=cfg.demo_source == "human")
    paths = _raw_demo_paths(store, cache_root, task_cls, cfg.num_demos, cfg.floating_dofs)

    cache_files = [None] * len(paths)
    if episode_cache_dir is not None:
        cache_files = [_episode_cache_file(episode_cache_dir, task, Demo.from_safetensors(path).uuid, cfg.cameras,
                                           cfg.image_size, cfg.action_type, cfg.control_frequency, cfg.fast_rendering,
                                           cfg.joint_velocities, cfg.base_action) for path in paths]
        jobs = [(path, cache_file) for path, cache_file in zip(paths, cache_files) if not cache_file.exists()]
        workers = min(cfg.demo_workers or os.cpu_count() or 1, len(jobs))
        if workers > 1:  # re-rendering costs up to a minute per demo with cameras: one worker per core
            with demo_worker_pool(workers) as pool:
                converted = pool.map(_replay_to_cache_file, *zip(*jobs), [cfg] * len(jobs))
                list(tqdm(converted, total=len(jobs), desc=f"BiGym {task} demos -> episodes ({workers} workers)"))

    episodes, solved_flags, env = [], [], None
    for path, cache_file in zip(tqdm(paths, desc=f"BiGym {task} demos -> episodes"), cache_files):
        if cache_file is not None and cache_file.exists():
            with np.load(cache_file) as data:
                episodes.append({key: data[key] for key in data.files if key != "success"})
                solved_flags.append(bool(data["success"]))
            continue
        if env is None:
            env = make_bigym_env(task, cfg.cameras, cfg.image_size, cfg.action_type, cfg.control_frequency,
                                 cfg.fast_rendering, cfg.floating_dofs)
        episode, success = _replay_raw_demo(env, path, cfg)
        episodes.append(episode)
        solved_flags.append(success)
        if cache_file is not None:
            _write_episode(cache_file, episode, success)
    if env is not None:
        env.close()
    successes = sum(solved_flags)
    for episode in episodes:
        episode["state"] = policy_state(episode["state"], np.arange(len(episode["state"])), cfg.max_episode_steps,
                                        cfg.proprioception, cfg.elapsed_time)
    # Decimated human demos replayed at a lower rate do not always reproduce success; report it.
    print(f"[bigym demos] {task} ({cfg.demo_source} demos): {len(episodes)} episodes, {successes} end in success "
          f"after re-simulation at {cfg.control_frequency} Hz")
    if cfg.drop_unsolved_demos:
        if successes == 0:
            raise UserInputError(f"drop_unsolved_demos=true, but none of the {len(episodes)} {task} demos solves the "
                                 f"task after re-simulation at {cfg.control_frequency} Hz: nothing to train on")
        print(f"[bigym demos] drop_unsolved_demos=true: training on the {successes} that end in success")
        episodes = [episode for episode, solved in zip(episodes, solved_flags) if solved]
    elif successes < 0.9 * len(episodes) and cfg.control_frequency < DEMO_FREQUENCY:
        higher = next(rate for rate in range(cfg.control_frequency + 1, DEMO_FREQUENCY + 1)
                      if DEMO_FREQUENCY % rate == 0)
        print(f"[bigym demos] WARNING: at {cfg.control_frequency} Hz the decimated actions of "
              f"{len(episodes) - successes} demos no longer solve {task}; the policy imitates them as they are. "
              f"A higher control_frequency "
              f"(e.g. {higher}) keeps more of the recorded motion; drop_unsolved_demos=true trains on the others only.")
    report_frames_in_ram(episodes, "BiGym")
    return episodes
