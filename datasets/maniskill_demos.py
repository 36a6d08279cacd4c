"""ManiSkill demonstrations: make them locally (no download) and load them as episodes.

Making demos is two steps, both with ManiSkill's own tools:
  1. run ManiSkill's motion-planning solution for the task in `pd_joint_pos`, keeping successful episodes
     (RecordEpisode writes `<dir>/motionplanning.h5` + `.json`);
  2. replay them with `mani_skill.trajectory.replay_trajectory` into the wanted observation mode and
     controller (e.g. state / rgb, pd_ee_delta_pos), keeping the episodes that still succeed.
Both run on chunks of seeds (a killed run resumes from its finished chunks), several chunks at a time in worker
processes when asked; the first chunk is small, so a controller that cannot follow the planner's motion stops the
run within a minute.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from datasets.frame_store import report_frames_in_ram
from datasets.worker_pool import demo_worker_pool
from env.errors import UserInputError
from env.maniskill_env import check_env_id, maniskill_camera_images, maniskill_state_vector

SUPPORTED_OBS_MODES = ("state", "rgb", "rgbd")


@dataclass(frozen=True)
class TaskRecipe:
    solution: str  # ManiSkill's motion-planning solution (mani_skill.examples.motionplanning.panda.solutions),
    #                which plans the demos in pd_joint_pos; by name, so that only making demos imports the planner
    control_mode: str  # the controller the planned demos are replayed into, and the policy trains and acts in
    max_episode_steps: int
    state_iters: int = 5000  # total_iters from state observations (the state config leaves it to the task)
    state_demos: int | None = None  # num_demos from state observations, where the schema's 100 were too few
    camera_demos: int | None = None  # num_demos from camera observations (rgb, rgbd), likewise
    # Play each chunk's first query_frequency actions open loop instead of temporal ensembling (None: ensemble),
    # where that was measured to work better, from state and from the camera alike (benchmarks/HISTORY.md).
    query_frequency: int | None = None

    def config_defaults(self, obs_mode: str) -> dict:
        defaults = {"control_mode": self.control_mode, "max_episode_steps": self.max_episode_steps}
        if obs_mode == "state":
            defaults["total_iters"] = self.state_iters
            if self.state_demos:
                defaults["num_demos"] = self.state_demos
        elif self.camera_demos:
            defaults["num_demos"] = self.camera_demos
        if self.query_frequency:
            defaults.update(temporal_ensemble=False, query_frequency=self.query_frequency)
        return defaults


# Every task we can make demos for, with the config defaults that training on them needs, applied when the user
# names only env_id; a key set in a config file or on the command line wins. The demos are planned in joint space
# and replayed into control_mode, which must be able to follow the planner's motion: pd_ee_delta_pos holds the
# gripper's orientation, which only the cube tasks tolerate (0-40% of the other tasks' demos survive it), so the
# others turn the gripper with pd_ee_delta_pose, or, for PlugCharger, move the joints (pd_ee_delta_pose loses a
# quarter of its demos and stretches some to 3x their length). max_episode_steps leaves room beyond the longest
# demo (ManiSkill registers most of these tasks with 50 steps, sized for RL). With state observations the recipe also
# sets the training budget, total_iters (and for StackCube the number of demos), to what the task was measured to
# need; from the camera, where the config file sets the budget, it sets the number of demos for PushCube. For
# PushCube the recipe also sets how chunks are executed, from state and from the camera: its temporally ensembled
# policy stops short of the goal (benchmarks/HISTORY.md).
TASK_RECIPES = {
    # ManiSkill's own ACT baseline (examples/baselines/act/examples.sh)
    "PickCube-v1": TaskRecipe("solvePickCube", "pd_ee_delta_pos", max_episode_steps=100, state_iters=1000),
    "PushCube-v1": TaskRecipe("solvePushCube", "pd_ee_delta_pos", max_episode_steps=100, state_iters=3000,
                              camera_demos=200,  # rgb, every 1500 its: 54/84/96/96% (100 demos: 96/74/88/76%)
                              query_frequency=5),  # open loop vs ensembled, same weights: state 90/68%, rgb 86/56%
    "StackCube-v1": TaskRecipe("solveStackCube", "pd_ee_delta_pos", max_episode_steps=200, state_iters=3000,
                               state_demos=200),  # 88-90% (100 demos: 70%)
    "PegInsertionSide-v1": TaskRecipe("solvePegInsertionSide", "pd_ee_delta_pose", max_episode_steps=300),
    # No ManiSkill baseline: the controller the planner's demos were measured to convert into (README), and
    # about 1.5x the longest of those demos.
    "PullCube-v1": TaskRecipe("solvePullCube", "pd_ee_delta_pos", max_episode_steps=120),
    "LiftPegUpright-v1": TaskRecipe("solveLiftPegUpright", "pd_ee_delta_pose", max_episode_steps=250),
    "PlugCharger-v1": TaskRecipe("solvePlugCharger", "pd_joint_delta_pos", max_episode_steps=350),
    "PlaceSphere-v1": TaskRecipe("solvePlaceSphere", "pd_ee_delta_pose", max_episode_steps=200),
}


def task_recipe(cfg) -> tuple[str, dict]:
    """utils.config's task_defaults hook: the recipe of cfg.env_id, or nothing for a task without one."""
    check_env_id(cfg.env_id)
    if cfg.env_id not in TASK_RECIPES:
        print(f"[config] no recipe for {cfg.env_id}: control_mode={cfg.control_mode}, "
              f"max_episode_steps={cfg.max_episode_steps} as configured")
        return "", {}
    return (f"{cfg.env_id} recipe (TASK_RECIPES in datasets/maniskill_demos.py)",
            TASK_RECIPES[cfg.env_id].config_defaults(cfg.obs_mode))


def default_demo_path(demo_dir: str, env_id: str, obs_mode: str, control_mode: str, num_demos: int) -> Path:
    if num_demos < 1:  # -1 ("all") names no file: generated demos come in a fixed number
        raise UserInputError(f"num_demos={num_demos} (all the episodes of a file) needs demo_path=<a .h5 file>; "
                             f"without one the demos are generated and num_demos says how many")
    return Path(demo_dir) / env_id / f"{num_demos}demos.{obs_mode}.{control_mode}.h5"


# Demos are made in chunks of consecutive planner seeds, each kept in the work folder once converted, so a
# killed run resumes where it stopped. The first chunk is small: it tells quickly whether the episodes survive
# conversion into the wanted controller, before minutes go into planning the rest. After it, each wave of chunks
# (one per worker) is sized from the demos still missing and the share of seeds that became demos so far, so that
# one wave usually finishes the job: every chunk costs a start-up of ManiSkill's replay tool (seconds), and
# PickCube's 100 demos take 2 waves instead of 4 with 2 workers.
PROBE_SEEDS = 5
MAX_CHUNK_SEEDS = 50  # a kill loses at most this many seeds' work per worker
MIN_CONVERSION_RATE = 0.25  # below this share of planned episodes surviving replay, the control mode is wrong


def _next_wave(start: int, missing: int, yield_rate: float, workers: int) -> list[tuple[int, int]]:
    """(first, end) seed ranges for the next `workers` chunks: enough seeds for `missing` demos at the yield seen so
    far, plus 10%. The same finished chunks give the same next ranges, so a resumed run finds its chunks again."""
    seeds_needed = int(np.ceil(1.1 * missing / max(yield_rate, MIN_CONVERSION_RATE)))
    size = int(np.clip(np.ceil(seeds_needed / workers), 1, MAX_CHUNK_SEEDS))
    return [(start + index * size, start + (index + 1) * size) for index in range(workers)]


def _plan_seeds(env_id: str, seeds: range, out_dir: Path) -> int:
    """Step 1: ManiSkill's motion-planning solution on each seed in pd_joint_pos, keeping the successful
    episodes (RecordEpisode writes `<out_dir>/motionplanning.h5` + `.json`). Returns how many were kept."""
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401  (registers the environments)
    from mani_skill.utils.wrappers.record import RecordEpisode

    from mani_skill.examples.motionplanning.panda import solutions

    solve = getattr(solutions, TASK_RECIPES[env_id].solution)
    env = gym.make(env_id, obs_mode="none", control_mode="pd_joint_pos", render_mode="rgb_array",
                   sim_backend="physx_cpu", render_backend="cpu")
    env = RecordEpisode(env, output_dir=str(out_dir), trajectory_name="motionplanning", save_video=False,
                        source_type="motionplanning", record_reward=False, save_on_reset=False)
    kept = 0
    for seed in tqdm(seeds, desc=f"motion planning {env_id} seeds {seeds.start}-{seeds.stop - 1}"):
        try:
            result = solve(env, seed=seed, debug=False, vis=False)
            success = result != -1 and bool(result[-1]["success"].item())
        except Exception as exc:  # the planner raises on unreachable goals; such seeds are skipped
            print(f"  seed {seed}: planner failed ({exc})")
            success = False
        env.flush_trajectory(save=success)
        kept += success
    env.close()
    return kept


def _replay(raw_path: Path, obs_mode: str, control_mode: str) -> Path:
    """Step 2: ManiSkill's replay tool re-simulates the episodes with observations and the target controller;
    only the episodes that still succeed are written."""
    cmd = [sys.executable, "-m", "mani_skill.trajectory.replay_trajectory", "--traj-path", str(raw_path),
           "-o", obs_mode, "-c", control_mode, "-b", "physx_cpu", "--save-traj", "--use-first-env-state"]
    print("  $", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return raw_path.with_name(f"{raw_path.stem}.{obs_mode}.{control_mode}.physx_cpu.h5")


def _episode_count(h5_path: Path) -> int:
    return len(json.loads(h5_path.with_suffix(".json").read_text())["episodes"])


def _make_chunk(env_id: str, seeds: range, obs_mode: str, control_mode: str, work_dir: Path) -> dict:
    """Plan and convert one seed range; returns {"planned", "converted", "file"}. A finished chunk (done.json)
    is read back; a chunk killed while planning is planned again, one killed while converting is converted again."""
    chunk_dir = work_dir / f"seeds_{seeds.start:06d}-{seeds.stop - 1:06d}"
    done = chunk_dir / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    if not chunk_dir.exists():
        planning_dir = chunk_dir.with_suffix(".planning")
        shutil.rmtree(planning_dir, ignore_errors=True)
        _plan_seeds(env_id, seeds, planning_dir)
        planning_dir.rename(chunk_dir)  # the planned episodes now survive a kill
    raw = chunk_dir / "motionplanning.h5"
    summary = {"planned": _episode_count(raw), "converted": 0, "file": None}
    if summary["planned"]:
        converted = _replay(raw, obs_mode, control_mode)
        summary.update(converted=_episode_count(converted), file=converted.name)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary))
    tmp.rename(done)
    return summary


def _conversion_error(env_id: str, control_mode: str, converted: int, planned: int) -> str:
    recipe_mode = TASK_RECIPES[env_id].control_mode if env_id in TASK_RECIPES else None
    if recipe_mode and recipe_mode != control_mode:
        hint = f"set control_mode={recipe_mode} (the recipe for {env_id})"
    else:
        others = [mode for mode in ("pd_ee_delta_pose", "pd_joint_pos") if mode != control_mode]
        hint = f"try control_mode={' or '.join(others)} (pd_joint_pos is the planner's own, which always converts)"
    return (f"{env_id}: only {converted} of the first {planned} motion-planned episodes still succeed when replayed "
            f"with control_mode={control_mode}; stopped before planning more. This controller cannot follow the "
            f"planner's motion for this task: {hint}.")


def generate_demos(env_id: str, num_demos: int, obs_mode: str, control_mode: str, out_path, seed: int = 0,
                   workers: int = 1) -> Path:
    """Make `num_demos` successful demos at `out_path` (.h5 + .json). Does nothing if the file exists;
    resumes from the finished chunks of a killed run.

    workers > 1 plans and converts that many seed chunks at a time in worker processes (0: one per CPU core). The
    episodes kept are the same as with one worker: the first num_demos in seed order.
    """
    workers = workers or os.cpu_count() or 1
    if num_demos < 1:
        raise UserInputError(f"num_demos={num_demos}: generating demos needs a number >= 1")
    out_path = Path(out_path)
    if out_path.exists():
        print(f"[demos] {out_path} exists, nothing to do")
        return out_path
    if obs_mode not in SUPPORTED_OBS_MODES:
        raise UserInputError(f"obs_mode must be one of {SUPPORTED_OBS_MODES}, got '{obs_mode}'")
    if env_id not in TASK_RECIPES:
        raise UserInputError(f"No ManiSkill motion-planning solution for env_id '{env_id}'; "
                             f"available: {sorted(TASK_RECIPES)}")
    work_dir = out_path.parent / f".work_{out_path.stem}"
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"[demos] generating {num_demos} {env_id} demos ({obs_mode}, {control_mode}) -> {out_path} "
          f"with {workers} worker process(es) (finished chunks are kept in {work_dir}: a killed run resumes)")
    planned = converted = 0
    files = []
    wave = [(seed, seed + PROBE_SEEDS)]  # the probe alone: a controller that cannot follow the planner stops early
    with demo_worker_pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        while True:
            if wave[0][0] - seed >= 3 * num_demos + 20:  # the planner itself fails on most seeds
                raise RuntimeError(f"{env_id}: after {wave[0][0] - seed} planner seeds only {planned} plans succeeded "
                                   f"and {converted} survived replay with control_mode={control_mode}; {num_demos} needed")
            jobs = [(env_id, range(start, end), obs_mode, control_mode, work_dir) for start, end in wave]
            summaries = pool.map(_make_chunk, *zip(*jobs)) if pool else [_make_chunk(*job) for job in jobs]
            for (start, end), chunk in zip(wave, summaries):
                planned, converted = planned + chunk["planned"], converted + chunk["converted"]
                print(f"[demos] seeds {start}-{end - 1}: {chunk['planned']} planned, {chunk['converted']} survived "
                      f"replay with {control_mode} ({converted} so far, {num_demos} needed)")
                if chunk["file"]:
                    files.append(work_dir / f"seeds_{start:06d}-{end - 1:06d}" / chunk["file"])
                if planned >= 4 and converted < MIN_CONVERSION_RATE * planned:  # 4+ episodes: a rate worth judging
                    raise UserInputError(_conversion_error(env_id, control_mode, converted, planned))
            if converted >= num_demos:
                break
            next_seed = wave[-1][1]
            wave = _next_wave(next_seed, num_demos - converted, converted / (next_seed - seed), workers)
    _keep_first_successful(files, out_path, num_demos)
    shutil.rmtree(work_dir)
    print(f"[demos] wrote {out_path}")
    return out_path


def _keep_first_successful(sources: list[Path], dst: Path, num_demos: int):
    """Copy the first `num_demos` successful episodes of the sources into dst (renumbered traj_0..), .json beside."""
    meta = json.loads(sources[0].with_suffix(".json").read_text())
    kept_episodes = []
    tmp = dst.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w") as fout:
        for src in sources:
            episodes = json.loads(src.with_suffix(".json").read_text())["episodes"]
            with h5py.File(src, "r") as fin:
                for episode in episodes:
                    key = f"traj_{episode['episode_id']}"
                    if len(kept_episodes) == num_demos or key not in fin:
                        continue
                    if not episode.get("success", bool(fin[key]["success"][-1])):
                        continue
                    new_id = len(kept_episodes)
                    fin.copy(fin[key], fout, name=f"traj_{new_id}")
                    kept_episodes.append({**episode, "episode_id": new_id})
    if len(kept_episodes) < num_demos:
        tmp.unlink()
        raise RuntimeError(f"{dst}: only {len(kept_episodes)} of the needed {num_demos} episodes survived replay")
    meta["episodes"] = kept_episodes
    dst.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    tmp.rename(dst)  # the .h5 appears only once complete, so a killed run never leaves a half file


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def demo_metadata(path: Path) -> dict:
    json_path = Path(path).with_suffix(".json")
    if not json_path.exists():
        raise UserInputError(f"{path}: the metadata file {json_path} is missing (ManiSkill writes both)")
    return json.loads(json_path.read_text())


def load_configured_demos(cfg, repo_root: Path) -> list[dict]:
    """The demos a ManiSkill run's config names (utils/schema.py's ManiSkillRun): its demo file (relative paths from
    repo_root), generated with ManiSkill's motion planner first if it is missing."""
    path = Path(cfg.demo_path or default_demo_path(cfg.demo_dir, cfg.env_id, cfg.obs_mode, cfg.control_mode,
                                                   cfg.num_demos))
    path = path if path.is_absolute() else repo_root / path
    if not path.exists():
        print(f"[demos] {path} not found: generating {cfg.num_demos} demonstrations with ManiSkill's motion planner")
        generate_demos(cfg.env_id, cfg.num_demos, cfg.obs_mode, cfg.control_mode, path, workers=cfg.demo_workers)
    episodes = load_maniskill_demos(path, cfg.num_demos, cfg.obs_mode, cfg.control_mode, cfg.cameras,
                                    cfg.image_size, cfg.image_crop)
    report_frames_in_ram(episodes, "ManiSkill")
    return episodes


def load_maniskill_demos(path, num_demos: int, obs_mode: str, control_mode: str,
                         cameras: list[str] | None = None, image_size: int | None = None,
                         image_crop: list[int] | None = None) -> list[dict]:
    """Read the first num_demos (-1: all) episodes of a ManiSkill trajectory file and check it matches the config.
    Camera images are cropped and resized one episode at a time (None: as recorded), exactly as the environment
    adapter does it.

    Returns a list of {"state": (T, S) float32, "actions": (T, A) float32[, "images": (T, N, C, H, W) uint8]}.
    The observation after the last action is dropped, so every state is paired with the action taken.
    """
    path = Path(path)
    env_kwargs = demo_metadata(path)["env_info"]["env_kwargs"]
    for key, wanted in (("obs_mode", obs_mode), ("control_mode", control_mode)):
        if env_kwargs.get(key) != wanted:
            raise UserInputError(
                f"{path}: demos were recorded with {key}='{env_kwargs.get(key)}' but the config asks for "
                f"'{wanted}'. Point demo_path at a matching file or delete this one to regenerate it."
            )
    episodes = []
    try:
        with h5py.File(path, "r") as h5:
            keys = sorted((k for k in h5.keys() if k.startswith("traj_")), key=lambda k: int(k.split("_")[1]))
            if len(keys) < max(num_demos, 1):
                raise UserInputError(f"{path}: holds {len(keys)} episodes, the config asks for num_demos={num_demos}")
            for key in keys if num_demos == -1 else keys[:num_demos]:
                group = h5[key]
                actions = np.asarray(group["actions"], dtype=np.float32)
                obs = group["obs"]
                if obs_mode == "state":
                    state = np.asarray(obs, dtype=np.float32)[: len(actions)]
                    episode = {"state": state, "actions": actions}
                else:
                    state = maniskill_state_vector({k: obs[k] for k in ("agent", "extra")})[: len(actions)]
                    images = maniskill_camera_images(obs["sensor_data"], cameras, use_depth=obs_mode == "rgbd",
                                                     image_size=image_size, image_crop=image_crop)
                    episode = {"state": state, "actions": actions, "images": images[: len(actions)]}
                episodes.append(episode)
    except OSError as exc:
        raise UserInputError(f"{path}: not a readable HDF5 trajectory file ({exc}); delete it to regenerate") from exc
    except KeyError as exc:
        raise UserInputError(f"{path}: missing dataset {exc} (expected a ManiSkill trajectory with "
                             f"obs_mode={obs_mode})") from exc
    return episodes
