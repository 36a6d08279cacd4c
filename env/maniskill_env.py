"""ManiSkill3 adapter: a batch of evaluation environments that speaks the policy's language (env/protocol.py).

observations -> {"state": (E, S) float32, "images": (E, N, C, H, W) uint8 (camera modes only)}
actions      <- (E, A) float32 numpy

In the camera modes (rgb, rgbd) the state vector is the robot's own sensing plus the task's goal, never the
object's pose: agent/qpos (9), agent/qvel (9), extra/tcp_pose (7, the gripper pose, forward kinematics of qpos)
and, where the task has one, extra/goal_pos (3, the target the camera cannot see: PickCube's goal marker is
hidden from cameras). ManiSkill's extra/is_grasped is dropped (SIMULATOR_ONLY_KEYS): it comes from the
simulator's contact forces, which neither a camera nor a real robot provides. In state mode the policy sees
ManiSkill's full state vector, object poses included.

On a CUDA machine the E environments run as one GPU-simulated batch (physx_cuda); on a CPU machine they
run as E CPU-simulated environments in worker processes (gymnasium AsyncVectorEnv), so rollouts use
every core and the policy still sees one batch.
"""

import functools
import multiprocessing

import gymnasium as gym
import numpy as np
import torch

from env.errors import UserInputError, did_you_mean
from env.images import crop_frames, resize_frames
from env.protocol import RobotEnv


def resolve_backends(sim_backend: str, render_backend: str) -> tuple[str, str]:
    """'auto' -> GPU simulation and rendering when CUDA is available, CPU (software Vulkan) otherwise."""
    cuda = torch.cuda.is_available()
    if sim_backend == "auto":
        sim_backend = "physx_cuda" if cuda else "physx_cpu"
    if render_backend == "auto":
        render_backend = "gpu" if cuda else "cpu"
    return sim_backend, render_backend


def check_env_id(env_id: str):
    import mani_skill.envs  # noqa: F401  (registers the environments)

    if env_id not in gym.registry:
        names = [name for name in gym.registry if name.endswith("-v1")]
        raise UserInputError(f"unknown ManiSkill env_id '{env_id}'." + did_you_mean(env_id, names))


# Observation entries left out of the camera modes' state vector: read off the simulator, not sensed.
SIMULATOR_ONLY_KEYS = ("is_grasped",)


def check_cameras(env_id: str, obs_mode: str, cameras: list[str]):
    """In camera modes (rgb, rgbd) every configured camera must be one of the task's sensors. Checked before any
    demo is made: a wrong name would otherwise surface as an HDF5 error once the demos exist."""
    if obs_mode == "state":
        return
    import mani_skill.envs  # noqa: F401  (registers the environments)

    env = gym.make(env_id, obs_mode="none", sim_backend="physx_cpu", render_backend="cpu")  # ~1 s, no rendering
    available = list(env.unwrapped._sensors)
    env.close()
    unknown = [name for name in cameras if name not in available]
    if unknown or not cameras:
        problem = f"unknown camera(s) {', '.join(unknown)}" if unknown else "no camera given"
        raise UserInputError(f"cameras={list(cameras)}: {problem} for {env_id} with obs_mode={obs_mode}; its cameras "
                             f"are: {', '.join(available)} (e.g. cameras=[{available[0]}])")


def maniskill_state_vector(obs: dict) -> np.ndarray:
    """(B, S) proprioception + task goal from a camera-mode ManiSkill observation dict (leading batch or time
    axis B), in a fixed (sorted-key) order.

    Works on both an HDF5 group and the env's observation dict, so training and rollouts agree.
    Camera data (sensor_data, sensor_param) and SIMULATOR_ONLY_KEYS are not part of the state vector.
    """
    parts = []
    for key in sorted(obs.keys()):
        if key in ("sensor_data", "sensor_param", *SIMULATOR_ONLY_KEYS):
            continue
        value = obs[key]
        if hasattr(value, "keys"):
            parts.append(maniskill_state_vector(value))
        else:
            value = np.asarray(value, dtype=np.float32)
            parts.append(value.reshape(value.shape[0], -1))
    return np.concatenate(parts, axis=1)


def maniskill_camera_images(sensor_data, cameras: list[str], use_depth: bool, image_size: int | None = None,
                            image_crop: list[int] | None = None) -> np.ndarray:
    """(T, N, C, H, W) uint8 images of the given cameras: cut to image_crop [top, left, height, width] when given,
    then resized to image_size x image_size when given (None: as they are; both in env/images.py); depth (mm,
    int16) becomes a 4th channel in uint8. Demos and rollouts both come through here: the same view in both."""
    per_camera = []
    for name in cameras:
        frames = np.asarray(sensor_data[name]["rgb"])  # (T, H, W, 3) uint8
        if use_depth:
            # Depth in mm; 0..2.55 m mapped to 0..255 so it rides along as a uint8 image channel.
            depth = np.asarray(sensor_data[name]["depth"]).astype(np.float32)  # (T, H, W, 1)
            frames = np.concatenate([frames, np.clip(depth / 10.0, 0, 255).astype(np.uint8)], axis=-1)
        if image_crop:
            frames = crop_frames(frames, image_crop)
        if image_size:
            frames = resize_frames(frames, (image_size, image_size))
        per_camera.append(frames.transpose(0, 3, 1, 2))  # (T, C, h, w)
    return np.stack(per_camera, axis=1)  # (T, N, C, h, w)


class _NumberedEnv(gym.Wrapper):
    """One environment of a CPU vector env that knows its index, so that a video of the first few environments
    renders only those (rendering is most of a recorded evaluation's time on a CPU)."""

    def __init__(self, env, index: int):
        super().__init__(env)
        self.index = index

    def render_if_first(self, count: int):
        return self.env.render() if self.index < count else None


def _make_single_cpu_env(env_kwargs: dict, index: int = 0):
    import mani_skill.envs  # noqa: F401  (worker processes import it anew)
    from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

    # Fixed-horizon evaluation: success ends nothing, so success_once/success_at_end are both measurable.
    return _NumberedEnv(CPUGymWrapper(gym.make(**env_kwargs), ignore_terminations=True), index)


class ManiSkillEnv(RobotEnv):
    def __init__(self, env_id: str, num_envs: int, obs_mode: str, control_mode: str, cameras: list[str],
                 max_episode_steps: int, sim_backend: str = "auto", render_backend: str = "auto",
                 image_size: int | None = None, image_crop: list[int] | None = None):
        check_env_id(env_id)
        self.image_size, self.image_crop = image_size, image_crop
        self.sim_backend, self.render_backend = resolve_backends(sim_backend, render_backend)
        self.num_envs, self.obs_mode, self.cameras = num_envs, obs_mode, cameras
        self.max_episode_steps = max_episode_steps
        env_kwargs = dict(id=env_id, obs_mode=obs_mode, control_mode=control_mode, render_mode="rgb_array",
                          max_episode_steps=max_episode_steps, sim_backend=self.sim_backend,
                          render_backend=self.render_backend)
        self.gpu = self.sim_backend != "physx_cpu"
        if self.gpu:
            self.env = gym.make(**env_kwargs, num_envs=num_envs)
        elif num_envs == 1:
            self.env = gym.vector.SyncVectorEnv([lambda: _make_single_cpu_env(env_kwargs)])
        else:
            # forkserver: workers must not inherit this process's torch/OpenMP threads. The server imports ManiSkill
            # once and every worker is forked from it: 5 PickCube workers start in 9 s instead of 18 on 2 cores.
            multiprocessing.get_context("forkserver").set_forkserver_preload(["mani_skill.envs"])
            self.env = gym.vector.AsyncVectorEnv(
                [functools.partial(_make_single_cpu_env, env_kwargs, index) for index in range(num_envs)],
                context="forkserver")
        self.action_dim = self.env.single_action_space.shape[0] if not self.gpu else self.env.action_space.shape[-1]

    @classmethod
    def from_config(cls, cfg, num_envs: int) -> "ManiSkillEnv":
        """The adapter a ManiSkill run's config describes (utils/schema.py's ManiSkillRun)."""
        return cls(cfg.env_id, num_envs, cfg.obs_mode, cfg.control_mode, cfg.cameras, cfg.max_episode_steps,
                   cfg.sim_backend, cfg.render_backend, cfg.image_size, cfg.image_crop)

    def _convert(self, obs) -> dict:
        if self.gpu:
            from mani_skill.utils import common
            obs = common.to_numpy(obs)
        if self.obs_mode == "state":
            return {"state": np.asarray(obs, dtype=np.float32)}
        images = maniskill_camera_images(obs["sensor_data"], self.cameras, use_depth=self.obs_mode == "rgbd",
                                         image_size=self.image_size, image_crop=self.image_crop)
        return {"state": maniskill_state_vector({k: obs[k] for k in ("agent", "extra")}), "images": images}

    def reset(self, seed: int) -> dict:
        obs, _ = self.env.reset(seed=[seed + i for i in range(self.num_envs)])
        return self._convert(obs)

    def step(self, actions: np.ndarray):
        """Returns obs, reward (E,), success (E,) bool."""
        if self.gpu:
            actions = torch.as_tensor(actions, device=self.env.unwrapped.device)
        obs, reward, _, _, info = self.env.step(actions)
        to_np = (lambda x: x.cpu().numpy()) if self.gpu else np.asarray
        success = to_np(info["success"]).astype(bool)
        if "final_info" in info:
            # gymnasium's vector envs reset an env the moment its time limit ends: `info` (and `obs`) then
            # describe the next episode, and the finished episode's last info is kept in final_info.
            # (The evaluation loop never uses the observation after the last step.)
            for index in np.flatnonzero(info["_final_info"]):
                success[index] = bool(info["final_info"][index]["success"])
        return self._convert(obs), to_np(reward).astype(np.float32), success

    def render(self, count: int | None = None) -> np.ndarray:
        """(count or E, H, W, 3) uint8 frames of the first environments, from the task's human-view camera."""
        if self.gpu:
            return self.env.render().cpu().numpy()[:count]
        count = self.num_envs if count is None else count
        return np.stack(self.env.call("render_if_first", count)[:count])

    def close(self):
        self.env.close()
