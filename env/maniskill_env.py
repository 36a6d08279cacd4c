"""ManiSkill3 adapter: a batch of evaluation environments that speaks the policy's language (env/protocol.py).

observations -> {"state": (E, S) float32, "images": (E, N, C, H, W) uint8 (camera modes only)}
actions      <- (E, A) float32 numpy

On a CUDA machine the E environments run as one GPU-simulated batch (physx_cuda); on a CPU machine they
run as E CPU-simulated environments in worker processes (gymnasium AsyncVectorEnv), so rollouts use
every core and the policy still sees one batch.
"""


import gymnasium as gym
import numpy as np
import torch

from env.errors import UserInputError, did_you_mean
from env.protocol import RobotEnv


# Per-task defaults for every task we can make demos for (those with a ManiSkill motion-planning solution),
# applied when the user names only env_id; a key set in a config file or on the command line wins. The demos
# are planned in joint space and replayed into control_mode, which must be able to follow the planner's motion:
# pd_ee_delta_pos holds the gripper's orientation, which only the cube tasks tolerate (0-40% of the other tasks'
# demos survive it), so the others turn the gripper with pd_ee_delta_pose, or, for PlugCharger, move the joints
# (pd_ee_delta_pose loses a quarter of its demos and stretches some to 3x their length). max_episode_steps
# leaves room beyond the longest demo (ManiSkill registers most of these tasks with 50 steps, sized for RL).
TASK_RECIPES = {
    # ManiSkill's own ACT baseline (examples/baselines/act/examples.sh)
    "PickCube-v1": {"control_mode": "pd_ee_delta_pos", "max_episode_steps": 100},
    "PushCube-v1": {"control_mode": "pd_ee_delta_pos", "max_episode_steps": 100},
    "StackCube-v1": {"control_mode": "pd_ee_delta_pos", "max_episode_steps": 200},
    "PegInsertionSide-v1": {"control_mode": "pd_ee_delta_pose", "max_episode_steps": 300},
    # No ManiSkill baseline: the controller the planner's demos were measured to convert into (README), and
    # about 1.5x the longest of those demos.
    "PullCube-v1": {"control_mode": "pd_ee_delta_pos", "max_episode_steps": 120},
    "LiftPegUpright-v1": {"control_mode": "pd_ee_delta_pose", "max_episode_steps": 250},
    "PlugCharger-v1": {"control_mode": "pd_joint_delta_pos", "max_episode_steps": 350},
    "PlaceSphere-v1": {"control_mode": "pd_ee_delta_pose", "max_episode_steps": 200},
}


def task_recipe(cfg) -> tuple[str, dict]:
    """utils.config's task_defaults hook: the recipe of cfg.env_id, or nothing for a task without one."""
    check_env_id(cfg.env_id)
    if cfg.env_id not in TASK_RECIPES:
        print(f"[config] no recipe for {cfg.env_id}: control_mode={cfg.control_mode}, "
              f"max_episode_steps={cfg.max_episode_steps} as configured")
        return "", {}
    return f"{cfg.env_id} recipe (TASK_RECIPES in env/maniskill_env.py)", TASK_RECIPES[cfg.env_id]


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


def maniskill_state_vector(obs: dict) -> np.ndarray:
    """(B, S) proprioception + task state from a ManiSkill observation dict (leading batch or time axis B),
    in a fixed (sorted-key) order.

    Works on both an HDF5 group and the env's observation dict, so training and rollouts agree.
    Camera data (sensor_data, sensor_param) is not part of the state vector.
    """
    parts = []
    for key in sorted(obs.keys()):
        if key in ("sensor_data", "sensor_param"):
            continue
        value = obs[key]
        if hasattr(value, "keys"):
            parts.append(maniskill_state_vector(value))
        else:
            value = np.asarray(value, dtype=np.float32)
            parts.append(value.reshape(value.shape[0], -1))
    return np.concatenate(parts, axis=1)


def maniskill_camera_images(sensor_data, cameras: list[str], use_depth: bool) -> np.ndarray:
    """(T, N, C, H, W) uint8 images of the given cameras; depth (mm, int16) becomes a 4th channel in uint8."""
    per_camera = []
    for name in cameras:
        frames = np.asarray(sensor_data[name]["rgb"])  # (T, H, W, 3) uint8
        if use_depth:
            # Depth in mm; 0..2.55 m mapped to 0..255 so it rides along as a uint8 image channel.
            depth = np.asarray(sensor_data[name]["depth"]).astype(np.float32)  # (T, H, W, 1)
            frames = np.concatenate([frames, np.clip(depth / 10.0, 0, 255).astype(np.uint8)], axis=-1)
        per_camera.append(frames.transpose(0, 3, 1, 2))  # (T, C, H, W)
    return np.stack(per_camera, axis=1)


def _make_single_cpu_env(env_kwargs: dict):
    import mani_skill.envs  # noqa: F401  (worker processes import it anew)
    from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

    # Fixed-horizon evaluation: success ends nothing, so success_once/success_at_end are both measurable.
    return CPUGymWrapper(gym.make(**env_kwargs), ignore_terminations=True)


class ManiSkillEnv(RobotEnv):
    def __init__(self, env_id: str, num_envs: int, obs_mode: str, control_mode: str, cameras: list[str],
                 max_episode_steps: int, sim_backend: str = "auto", render_backend: str = "auto"):
        check_env_id(env_id)
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
            # forkserver: workers must not inherit this process's torch/OpenMP threads.
            self.env = gym.vector.AsyncVectorEnv([lambda: _make_single_cpu_env(env_kwargs)] * num_envs,
                                                 context="forkserver")
        self.action_dim = self.env.single_action_space.shape[0] if not self.gpu else self.env.action_space.shape[-1]

    def _convert(self, obs) -> dict:
        if self.gpu:
            from mani_skill.utils import common
            obs = common.to_numpy(obs)
        if self.obs_mode == "state":
            return {"state": np.asarray(obs, dtype=np.float32)}
        images = maniskill_camera_images(obs["sensor_data"], self.cameras, use_depth=self.obs_mode == "rgbd")
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
        return np.stack(self.env.call("render"))[:count]

    def close(self):
        self.env.close()
