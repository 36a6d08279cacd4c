"""ManiSkill demonstrations: make them locally (no download) and load them as episodes.

Making demos is two steps, both with ManiSkill's own tools:
  1. run ManiSkill's motion-planning solution for the task in `pd_joint_pos`, keeping successful episodes
     (RecordEpisode writes `<dir>/motionplanning.h5` + `.json`);
  2. replay them with `mani_skill.trajectory.replay_trajectory` into the wanted observation mode and
     controller (e.g. state / rgb, pd_ee_delta_pos), keeping the episodes that still succeed.
"""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from env.maniskill_env import maniskill_camera_images, maniskill_state_vector

SUPPORTED_OBS_MODES = ("state", "rgb", "rgbd")


def motion_planning_solutions() -> dict:
    from mani_skill.examples.motionplanning.panda import solutions

    return {
        "PickCube-v1": solutions.solvePickCube,
        "PushCube-v1": solutions.solvePushCube,
        "StackCube-v1": solutions.solveStackCube,
        "PegInsertionSide-v1": solutions.solvePegInsertionSide,
        "PullCube-v1": solutions.solvePullCube,
        "LiftPegUpright-v1": solutions.solveLiftPegUpright,
        "PlugCharger-v1": solutions.solvePlugCharger,
        "PlaceSphere-v1": solutions.solvePlaceSphere,
    }


def default_demo_path(demo_dir: str, env_id: str, obs_mode: str, control_mode: str, num_demos: int) -> Path:
    return Path(demo_dir) / env_id / f"{num_demos}demos.{obs_mode}.{control_mode}.h5"


def _record_motion_planning(env_id: str, num_demos: int, out_dir: Path, seed: int) -> Path:
    """Step 1: successful motion-planning episodes in pd_joint_pos. Returns the raw .h5 path."""
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401  (registers the environments)
    from mani_skill.utils.wrappers.record import RecordEpisode

    solutions = motion_planning_solutions()
    if env_id not in solutions:
        raise ValueError(f"No ManiSkill motion-planning solution for env_id '{env_id}'; available: {sorted(solutions)}")
    env = gym.make(env_id, obs_mode="none", control_mode="pd_joint_pos", render_mode="rgb_array",
                   sim_backend="physx_cpu", render_backend="cpu")
    env = RecordEpisode(env, output_dir=str(out_dir), trajectory_name="motionplanning", save_video=False,
                        source_type="motionplanning", record_reward=False, save_on_reset=False)
    kept, tried = 0, 0
    with tqdm(total=num_demos, desc=f"motion planning {env_id}") as bar:
        while kept < num_demos:
            if tried > 3 * num_demos + 20:
                raise RuntimeError(f"{env_id}: only {kept}/{tried} motion-planning episodes succeeded")
            try:
                result = solutions[env_id](env, seed=seed + tried, debug=False, vis=False)
                success = result != -1 and bool(result[-1]["success"].item())
            except Exception as exc:  # the planner raises on unreachable goals; such seeds are skipped
                print(f"  seed {seed + tried}: planner failed ({exc})")
                success = False
            tried += 1
            env.flush_trajectory(save=success)
            if success:
                kept += 1
                bar.update(1)
    env.close()
    return out_dir / "motionplanning.h5"


def _replay(raw_path: Path, obs_mode: str, control_mode: str) -> Path:
    """Step 2: ManiSkill's replay tool re-simulates the episodes with observations and the target controller."""
    cmd = [sys.executable, "-m", "mani_skill.trajectory.replay_trajectory", "--traj-path", str(raw_path),
           "-o", obs_mode, "-c", control_mode, "-b", "physx_cpu", "--save-traj", "--use-first-env-state"]
    print("  $", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return raw_path.with_name(f"{raw_path.stem}.{obs_mode}.{control_mode}.physx_cpu.h5")


def generate_demos(env_id: str, num_demos: int, obs_mode: str, control_mode: str, out_path, seed: int = 0) -> Path:
    """Make `num_demos` successful demos at `out_path` (.h5 + .json). Does nothing if the file exists."""
    out_path = Path(out_path)
    if out_path.exists():
        print(f"[demos] {out_path} exists, nothing to do")
        return out_path
    if obs_mode not in SUPPORTED_OBS_MODES:
        raise ValueError(f"obs_mode must be one of {SUPPORTED_OBS_MODES}, got '{obs_mode}'")
    work_dir = out_path.parent / f".work_{out_path.stem}"
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"[demos] generating {num_demos} {env_id} demos ({obs_mode}, {control_mode}) -> {out_path}")
    # Converting joint-space demos to another controller fails for a few episodes; plan some spares.
    spares = 0 if control_mode == "pd_joint_pos" else max(2, num_demos // 5)
    raw = _record_motion_planning(env_id, num_demos + spares, work_dir, seed)
    replayed = _replay(raw, obs_mode, control_mode)
    _keep_first_successful(replayed, out_path, num_demos)
    for leftover in work_dir.iterdir():
        leftover.unlink()
    work_dir.rmdir()
    print(f"[demos] wrote {out_path}")
    return out_path


def _keep_first_successful(src: Path, dst: Path, num_demos: int):
    """Copy the first `num_demos` successful episodes of src into dst (renumbered traj_0..), .json beside it."""
    meta = json.loads(src.with_suffix(".json").read_text())
    kept_episodes = []
    tmp = dst.with_suffix(".h5.tmp")
    with h5py.File(src, "r") as fin, h5py.File(tmp, "w") as fout:
        for episode in meta["episodes"]:
            key = f"traj_{episode['episode_id']}"
            if key not in fin or not episode.get("success", bool(fin[key]["success"][-1])):
                continue
            new_id = len(kept_episodes)
            fin.copy(fin[key], fout, name=f"traj_{new_id}")
            kept_episodes.append({**episode, "episode_id": new_id})
            if len(kept_episodes) == num_demos:
                break
    if len(kept_episodes) < num_demos:
        tmp.unlink()
        raise RuntimeError(f"{src}: only {len(kept_episodes)} of the needed {num_demos} episodes survived replay")
    meta["episodes"] = kept_episodes
    dst.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    tmp.rename(dst)  # the .h5 appears only once complete, so a killed run never leaves a half file


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def demo_metadata(path: Path) -> dict:
    json_path = Path(path).with_suffix(".json")
    if not json_path.exists():
        raise FileNotFoundError(f"{path}: the metadata file {json_path} is missing (ManiSkill writes both)")
    return json.loads(json_path.read_text())


def load_maniskill_demos(path, num_demos: int, obs_mode: str, control_mode: str,
                         cameras: list[str] | None = None) -> list[dict]:
    """Read episodes from a ManiSkill trajectory file and check it matches the config.

    Returns a list of {"state": (T, S) float32, "actions": (T, A) float32[, "images": (T, N, C, H, W) uint8]}.
    The observation after the last action is dropped, so every state is paired with the action taken.
    """
    path = Path(path)
    env_kwargs = demo_metadata(path)["env_info"]["env_kwargs"]
    for key, wanted in (("obs_mode", obs_mode), ("control_mode", control_mode)):
        if env_kwargs.get(key) != wanted:
            raise ValueError(
                f"{path}: demos were recorded with {key}='{env_kwargs.get(key)}' but the config asks for "
                f"'{wanted}'. Point demo_path at a matching file or delete this one to regenerate it."
            )
    episodes = []
    try:
        with h5py.File(path, "r") as h5:
            keys = sorted((k for k in h5.keys() if k.startswith("traj_")), key=lambda k: int(k.split("_")[1]))
            if len(keys) < num_demos:
                raise ValueError(f"{path}: holds {len(keys)} episodes, the config asks for num_demos={num_demos}")
            for key in keys[:num_demos]:
                group = h5[key]
                actions = np.asarray(group["actions"], dtype=np.float32)
                obs = group["obs"]
                if obs_mode == "state":
                    state = np.asarray(obs, dtype=np.float32)[: len(actions)]
                    episode = {"state": state, "actions": actions}
                else:
                    state = maniskill_state_vector({k: obs[k] for k in ("agent", "extra")})[: len(actions)]
                    images = maniskill_camera_images(obs["sensor_data"], cameras, use_depth=obs_mode == "rgbd")
                    episode = {"state": state, "actions": actions, "images": images[: len(actions)]}
                episodes.append(episode)
    except OSError as exc:
        raise OSError(f"{path}: not a readable HDF5 trajectory file ({exc}); delete it to regenerate") from exc
    except KeyError as exc:
        raise KeyError(f"{path}: missing dataset {exc} (expected a ManiSkill trajectory with obs_mode={obs_mode})") from exc
    return episodes
