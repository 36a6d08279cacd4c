"""ALOHA sim adapter (the ACT paper's benchmark): a batch of evaluation environments that speaks the policy's language
(env/protocol.py).

observations -> {"state": (E, 14) float32, "images": (E, N, 3, H, W) uint8 (only when cameras are set)}
actions      <- (E, 14) float32 numpy

Tasks transfer_cube and insertion from gym-aloha 0.1.5 (LeRobot's packaging of the original ACT simulation, MuJoCo
assets in the wheel). The state and the actions are the original's, in this order:
    [left arm 6 joint positions, left gripper, right arm 6 joint positions, right gripper]
Arm joints in rad (the actions: absolute joint targets); grippers normalised as gym-aloha does (0 closed, 1 open:
the state from the left finger's slide position, the action a finger position command on the same scale).

Why not gym-aloha's own environment: it renders three cameras at 480x640 on every step (about 310 ms on this CPU)
whatever the observation needs, while a control step's physics takes under 1 ms. Here the dm_control physics and
gym-aloha's task objects (reset, action mapping, reward) are driven directly, and only the policy's cameras are
rendered, once per step. Frames are always drawn at the cameras' native 480x640 (as gym-aloha, the paper and the demos
in datasets/aloha_scripted.py record them) and then resized with env/images.py, the resize the training data goes
through, so evaluation sees the pixels training saw. On a CPU (Mesa llvmpipe) one top-camera frame costs about 75 ms
of CPU at 480x640, 62 at 240x320, 56 at 120x160: most of it is the 4096x4096 shadow map of scene.xml, drawn whatever
the image size (30 ms at 480x640 with shadows off, which would change the images).

Reward stages 0-4 are gym-aloha's (the original's): transfer_cube 1 right gripper touches the cube, 2 lifts it,
3 left gripper touches it, 4 left gripper holds it off the table; insertion 1 both grippers touch their objects,
2 both lift them, 3 peg touches socket in the air, 4 peg touches the pin (inserted). Success is reward 4. STAGES maps
the paper's Table I columns to thresholds, for the evaluation's stage rates (an episode reaches a stage when its
maximum reward is at least the threshold); the paper names the columns only, the thresholds follow the reward code's
own stage comments ("lifted", "grasp both", "peg and socket touching", "successful insertion").

Episodes last 400 control steps at 50 Hz (the paper's; gym-aloha registers 300). With E > 1 the environments run in
worker processes (gymnasium AsyncVectorEnv, as env/maniskill_env.py does on CPU), one MuJoCo simulation each, so the
rendering of E frames spreads over the cores; E = 1 runs in this process.

MUJOCO_GL defaults to "egl" (headless; Mesa's llvmpipe on a machine without a GPU) unless the user set it ("osmesa"
also works); it must be set before mujoco is imported, hence at the top of this module.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import functools  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from env.errors import UserInputError, did_you_mean  # noqa: E402
from env.images import resize_frames  # noqa: E402
from env.protocol import RobotEnv  # noqa: E402

TASKS = ("transfer_cube", "insertion")
STAGES = {  # the paper's Table I columns -> the reward an episode's maximum must reach
    "transfer_cube": {"touched": 1, "lifted": 2, "transferred": 4},
    "insertion": {"grasped": 2, "contact": 3, "inserted": 4},
}
SUCCESS_REWARD = 4
STATE_DIM = ACTION_DIM = 14
CAMERA_HEIGHT, CAMERA_WIDTH = 480, 640  # every camera's native frame size (gym-aloha's and the paper's)
MAX_EPISODE_STEPS = 400  # the paper's episode length at 50 Hz
PHYSICS_STEPS_PER_CONTROL = 10  # 2 ms physics steps per 20 ms (50 Hz) control step, as gym-aloha
VIDEO_SCALE = 2  # render() frames: the top camera at half its native size


def check_task(task: str):
    if task not in TASKS:
        raise UserInputError(f"unknown ALOHA task '{task}'." + did_you_mean(task, TASKS) +
                             f" ALOHA sim has: {', '.join(TASKS)}")


def object_pose(task: str, seed: int) -> np.ndarray:
    """The objects' start poses for episode `seed`: the same sampler and seed use as gym-aloha's reset, so a seed
    gives the same scene in both. transfer_cube (7,): cube [x, y, z, quaternion]; insertion (14,): peg, then socket."""
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    check_task(task)
    if task == "transfer_cube":
        return sample_box_pose(seed)
    return np.concatenate(sample_insertion_pose(seed))


class AlohaSim:
    """One ALOHA simulation, stepped without rendering; images only when asked for.

    end_effector=False: the joint-space task the policy acts in (gym_aloha/tasks/sim.py).
    end_effector=True: the same scene with the grippers welded to mocap bodies (gym_aloha/tasks/sim_end_effector.py),
        actions [left xyz, left quaternion, left gripper, right xyz, right quaternion, right gripper]; it has no
        environment of its own in gym-aloha, only the scripted demos use it (datasets/aloha_scripted.py).
    """

    def __init__(self, task: str, end_effector: bool = False):
        from dm_control import mujoco as dm_mujoco
        from gym_aloha.constants import ASSETS_DIR
        from gym_aloha.tasks import sim, sim_end_effector

        check_task(task)
        self.task_name = task
        if end_effector:
            xml = ASSETS_DIR / f"bimanual_viperx_end_effector_{task}.xml"
            task_class = {"transfer_cube": sim_end_effector.TransferCubeEndEffectorTask,
                          "insertion": sim_end_effector.InsertionEndEffectorTask}[task]
        else:
            xml = ASSETS_DIR / f"bimanual_viperx_{task}.xml"
            task_class = {"transfer_cube": sim.TransferCubeTask, "insertion": sim.InsertionTask}[task]
        self.physics = dm_mujoco.Physics.from_xml_path(str(xml))
        self.task = task_class()
        model = self.physics.model
        self.camera_names = [model.id2name(i, "camera") for i in range(model.ncam)]

    def check_cameras(self, cameras: list[str]):
        unknown = [name for name in cameras if name not in self.camera_names]
        if unknown:
            raise UserInputError(f"unknown camera(s) {', '.join(unknown)} for ALOHA {self.task_name}; its cameras are: "
                                 f"{', '.join(self.camera_names)} (the paper uses top)")

    def reset(self, pose: np.ndarray):
        """Arms at gym-aloha's start pose, objects at `pose` (object_pose), at rest."""
        from gym_aloha.tasks import sim

        sim.BOX_POSE[0] = pose  # how gym-aloha's joint-space tasks receive the object poses (the end-effector tasks
        #                         draw their own, unseeded; both are overwritten below)
        with self.physics.reset_context():
            self.task.initialize_episode(self.physics)
            self.physics.data.qpos[16:] = pose  # after the 16 arm joints: the objects' free joints

    def step(self, action: np.ndarray) -> float:
        """One 50 Hz control step; returns the reward (stage 0-4) of the state it ends in."""
        self.task.before_step(np.asarray(action, np.float64), self.physics)
        self.physics.step(PHYSICS_STEPS_PER_CONTROL)
        return float(self.task.get_reward(self.physics))

    def state(self) -> np.ndarray:
        """(14,) float32 joint positions, grippers normalised (gym-aloha's qpos observation)."""
        return self.task.get_qpos(self.physics).astype(np.float32)

    def images(self, cameras: list[str], size=None) -> np.ndarray:
        """(N, 3, H, W) uint8: each camera drawn at its native 480x640, then resized to size = (H, W) (None: kept)."""
        frames = np.stack([self.physics.render(CAMERA_HEIGHT, CAMERA_WIDTH, camera_id=name) for name in cameras])
        return resize_frames(frames, size).transpose(0, 3, 1, 2)


class _AlohaWorker(gym.Env):
    """One simulation as a gymnasium environment, so that gymnasium's vector envs can run it in a worker process.
    Success never ends an episode (the protocol's fixed horizon); the evaluation counts the steps."""

    def __init__(self, task: str, cameras: list[str], image_size, index: int):
        self.sim = AlohaSim(task)
        self.cameras, self.image_size, self.index = list(cameras), image_size, index
        height, width = image_size or (CAMERA_HEIGHT, CAMERA_WIDTH)
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)}
        if self.cameras:
            spaces["images"] = gym.spaces.Box(0, 255, (len(self.cameras), 3, height, width), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (ACTION_DIM,), np.float32)

    def _observation(self) -> dict:
        obs = {"state": self.sim.state()}
        if self.cameras:
            obs["images"] = self.sim.images(self.cameras, self.image_size)
        return obs

    def reset(self, seed=None, options=None):
        self.sim.reset(object_pose(self.sim.task_name, seed))
        return self._observation(), {}

    def step(self, action):
        reward = self.sim.step(action)
        return self._observation(), reward, False, False, {}

    def video_frame_if_first(self, count: int):
        """The top camera at half size, drawn only in the first `count` environments (rendering is the cost)."""
        if self.index >= count:
            return None
        frame = self.sim.physics.render(CAMERA_HEIGHT, CAMERA_WIDTH, camera_id="top")
        return resize_frames(frame, (CAMERA_HEIGHT // VIDEO_SCALE, CAMERA_WIDTH // VIDEO_SCALE))


class AlohaEnv(RobotEnv):
    def __init__(self, task: str, cameras: list[str], image_size=None, num_envs: int = 1,
                 max_episode_steps: int = MAX_EPISODE_STEPS):
        """task: transfer_cube | insertion. cameras: the policy's, in its order (the paper: [top]).
        image_size: (H, W) the policy's images are resized to, or None for the native 480x640."""
        check_task(task)
        AlohaSim(task).check_cameras(cameras)  # here, not in a worker process: a clear error before any start
        self.task, self.cameras, self.num_envs = task, list(cameras), num_envs
        self.image_size = tuple(image_size) if image_size else None
        self.max_episode_steps = max_episode_steps
        self.action_dim = ACTION_DIM
        self.stages = STAGES[task]  # the evaluation reports each stage's rate (env/protocol.py)
        makers = [functools.partial(_AlohaWorker, task, self.cameras, self.image_size, i) for i in range(num_envs)]
        # forkserver: workers must not inherit this process's torch/OpenMP threads (nor a GL context)
        self.env = (gym.vector.SyncVectorEnv(makers) if num_envs == 1
                    else gym.vector.AsyncVectorEnv(makers, context="forkserver"))

    @classmethod
    def from_config(cls, cfg, num_envs: int) -> "AlohaEnv":
        """The adapter an ALOHA run's config describes (utils/schema.py's AlohaRun)."""
        return cls(cfg.env_id, cfg.cameras, cfg.image_size, num_envs, cfg.max_episode_steps)

    def _convert(self, obs: dict) -> dict:
        out = {"state": np.asarray(obs["state"], np.float32)}  # (E, 14)
        if self.cameras:
            out["images"] = np.asarray(obs["images"])  # (E, N, 3, H, W) uint8
        return out

    def reset(self, seed: int) -> dict:
        obs, _ = self.env.reset(seed=[seed + i for i in range(self.num_envs)])
        return self._convert(obs)

    def step(self, actions: np.ndarray):
        """actions (E, 14) -> observation, reward (E,) float32 (the stage 0-4), success (E,) bool (reward 4)."""
        obs, reward, _, _, _ = self.env.step(np.asarray(actions, np.float32))
        reward = np.asarray(reward, np.float32)
        return self._convert(obs), reward, reward == SUCCESS_REWARD

    def render(self, count: int | None = None) -> np.ndarray:
        """(count or E, 240, 320, 3) uint8: the top camera of the first environments."""
        count = self.num_envs if count is None else count
        return np.stack(self.env.call("video_frame_if_first", count)[:count])

    def close(self):
        self.env.close()
