"""BiGym adapter: a batch of evaluation environments that speaks the policy's language (env/protocol.py).

observations -> {"state": (E, S) float32, "images": (E, N, 3, H, W) uint8 (only when cameras are set)}
actions      <- (E, A) float32 numpy

BiGym (github chernyadev/bigym, 4.1.0) simulates the Unitree H1 in MuJoCo. Defaults follow the BiGym paper:
JointPositionActionMode(floating_base=True, absolute=True) -> A = 15
    [pelvis x, y, rz (always deltas), 10 arm joint targets, 2 grippers],
or A = 16 with the pelvis height (floating_dofs [pelvis_x, pelvis_y, pelvis_z, pelvis_rz], the mode BiGym's
recording tools default to; DishwasherClose needs it: the open door and bottom tray are below standing reach),
cameras head / left_wrist / right_wrist. The E environments are E independent MuJoCo simulations stepped in
a loop in this process (CPU; MuJoCo stepping is cheap, rendering dominates).

State vector (S = 66 for H1 with a floating base x, y, rz; 70 with z too), in this fixed order (STATE_KEYS):
    proprioception (58: 29 joint positions, 29 joint velocities; 60 with z), proprioception_grippers (2),
    proprioception_floating_base (3 or 4), proprioception_floating_base_actions (3 or 4).
joint_velocities=False leaves the velocities out (S = 37 / 40). What the policy sees of it (policy_state):
elapsed_time=True appends one more entry, the control step divided by max_episode_steps; proprioception=False
leaves the vector above out, so that the policy sees the elapsed time (and its cameras) only.
The same functions build demo observations (datasets/bigym_demos.py), so training and evaluation agree.

Observation after reset, checked on BiGym 4.1.0 / MuJoCo 3.1.5 (DishwasherClose): env.reset() returns the
real post-reset observation, not a placeholder. The proprioception IS almost all zeros, legitimately:
H1 resets to the all-zero joint configuration at rest, so only the floating-base y (-0.8) is non-zero;
one hold-still step later joints and velocities move (gravity). A test like "all zeros -> invalid" would
therefore misfire. BiGym's reset() (physics reset, set robot pose, task _on_reset, then get_observation) is
unchanged since its first commit (2024-07-09), so older releases behave the same. What does differ: the FIRST frame a fresh MuJoCo renderer draws differs from every later
render of the same state by up to 3 intensity levels. To make the reset observation independent of such
details (and of BiGym versions that build it before the reset pose is applied), `reset` recomputes
kinematics (mj_forward, no physics step) and re-reads the observation; that re-read equals the returned
proprioception exactly and gives the stable image.

Fast rendering (`fast_rendering=True`): shadows, reflections and multi-sample anti-aliasing are turned off
on the observation renderers. About 7x faster on a CPU (software OpenGL) but the images differ, so demos
must be re-rendered with the same switch as evaluation; datasets/bigym_demos.py uses make_bigym_env here.

MUJOCO_GL defaults to "egl" (headless) unless the user set it; it must be set before mujoco is imported.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import importlib  # noqa: E402
import inspect  # noqa: E402
import pkgutil  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402

from env.errors import UserInputError, did_you_mean  # noqa: E402
from env.protocol import RobotEnv  # noqa: E402

STATE_KEYS = (
    "proprioception",
    "proprioception_grippers",
    "proprioception_floating_base",
    "proprioception_floating_base_actions",
)
ROBOT_CAMERAS = ("head", "left_wrist", "right_wrist")
ACTION_MODES = ("absolute", "delta")
BASE_ACTIONS = ("delta", "absolute")  # what the policy predicts for the floating base (BiGym itself takes deltas)
PELVIS_DOFS = ("pelvis_x", "pelvis_y", "pelvis_z", "pelvis_rz")  # BiGym's PelvisDof values
DEFAULT_FLOATING_DOFS = ("pelvis_x", "pelvis_y", "pelvis_rz")  # BiGym's default (the paper's setting)
DEMO_FREQUENCY = 500  # BiGym's physics rate, the rate its demos are recorded at


# --------------------------------------------------------------------------------------------------
# Task names
# --------------------------------------------------------------------------------------------------
def to_snake_case(name: str) -> str:
    """DishwasherClose -> dishwasher_close."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def task_classes() -> dict[str, type]:
    """All concrete BiGym task classes, by class name (private/abstract bases such as _DishwasherEnv excluded)."""
    import bigym.envs
    from bigym.bigym_env import BiGymEnv

    tasks = {}
    for module_info in pkgutil.iter_modules(bigym.envs.__path__, "bigym.envs."):
        if module_info.ispkg:  # bigym.envs.props holds scene objects, not tasks
            continue
        module = importlib.import_module(module_info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == module.__name__ and issubclass(cls, BiGymEnv)
                    and not name.startswith("_") and not inspect.isabstract(cls)):
                tasks[name] = cls
    return tasks


def resolve_task(name: str) -> type:
    """A BiGym class name ('DishwasherClose') or its snake_case ('dishwasher_close') -> the task class."""
    tasks = task_classes()
    by_snake = {to_snake_case(cls_name): cls for cls_name, cls in tasks.items()}
    if name in tasks:
        return tasks[name]
    if name in by_snake:
        return by_snake[name]
    raise UserInputError(
        f"unknown BiGym task '{name}'." + did_you_mean(name, list(tasks) + list(by_snake), cutoff=0.5)
        + f" Valid tasks (class name or snake_case): {', '.join(sorted(tasks))}"
    )


# --------------------------------------------------------------------------------------------------
# Building one BiGym environment (shared with the demo conversion)
# --------------------------------------------------------------------------------------------------
def make_action_mode(action_mode: str, floating_dofs=DEFAULT_FLOATING_DOFS):
    from bigym.action_modes import JointPositionActionMode, PelvisDof

    if action_mode not in ACTION_MODES:
        raise UserInputError(f"action_mode must be one of {ACTION_MODES}, got '{action_mode}'")
    unknown = [dof for dof in floating_dofs if dof not in PELVIS_DOFS]
    if unknown or not floating_dofs:
        raise UserInputError(f"floating_dofs must be a non-empty list from {list(PELVIS_DOFS)}, got {list(floating_dofs)}")
    # The floating base is delta-controlled in both modes; `absolute` covers the arms.
    return JointPositionActionMode(floating_base=True, absolute=action_mode == "absolute",
                                   floating_dofs=[PelvisDof(dof) for dof in floating_dofs])


def _check_cameras(cameras: list[str]):
    unknown = [c for c in cameras if c not in ROBOT_CAMERAS]
    if unknown:
        raise UserInputError(f"unknown BiGym camera(s) {unknown}; the H1 robot has {list(ROBOT_CAMERAS)}")


def make_bigym_env(task: str, cameras: list[str], image_size: int, action_mode: str, control_frequency: int,
                   fast_rendering: bool, floating_dofs=DEFAULT_FLOATING_DOFS):
    """One raw BiGym environment with RGB cameras at image_size x image_size and our renderer settings."""
    from bigym.bigym_env import CONTROL_FREQUENCY_MAX, CONTROL_FREQUENCY_MIN
    from bigym.utils.observation_config import CameraConfig, ObservationConfig

    _check_cameras(cameras)
    if not CONTROL_FREQUENCY_MIN <= control_frequency <= CONTROL_FREQUENCY_MAX or CONTROL_FREQUENCY_MAX % control_frequency:
        raise UserInputError(f"control_frequency must divide {CONTROL_FREQUENCY_MAX} and be >= {CONTROL_FREQUENCY_MIN} "
                         f"(e.g. 25 or 50 Hz), got {control_frequency}")
    task_cls = resolve_task(task)
    observation_config = ObservationConfig(
        cameras=[CameraConfig(name=name, rgb=True, depth=False, resolution=(image_size, image_size)) for name in cameras],
        proprioception=True,
    )
    env = task_cls(action_mode=make_action_mode(action_mode, floating_dofs), observation_config=observation_config,
                   control_frequency=control_frequency)
    if fast_rendering:
        set_fast_rendering(env)
    return env


def set_fast_rendering(env):
    """Shadows, reflections and MSAA off on the observation renderers (rebuilt: MSAA is fixed per GL context)."""
    import mujoco

    env.mojo.model.vis.quality.offsamples = 0
    env._initialize_renderers()  # BiGym's own (re)creation of env.obs_renderers, now without multisampling
    for renderer in env.obs_renderers.values():
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False


def read_observation(env) -> dict:
    """Step-free observation of the current simulator state (kinematics recomputed first)."""
    import mujoco

    mujoco.mj_forward(env.mojo.model, env.mojo.data)
    return env.get_observation()


def bigym_state_vector(obs: dict, joint_velocities: bool = True) -> np.ndarray:
    """BiGym observation dict -> (S,) float32 state in STATE_KEYS order.

    joint_velocities=False drops the second half of "proprioception" (the joint velocities), as the ACT paper's
    policy sees joint positions only.
    """
    missing = [k for k in STATE_KEYS if k not in obs]
    if missing:
        raise KeyError(f"BiGym observation lacks {missing} (needs proprioception on and a floating base); "
                       f"has {sorted(obs)}")
    parts = [np.asarray(obs[k], dtype=np.float32).reshape(-1) for k in STATE_KEYS]
    if not joint_velocities:
        parts[0] = parts[0][:len(parts[0]) // 2]  # BiGym concatenates [qpos, qvel] of the same joints
    return np.concatenate(parts)


def check_state_contents(proprioception: bool, elapsed_time: bool, max_episode_steps: int):
    if not (proprioception or elapsed_time):
        raise UserInputError("proprioception=false and elapsed_time=false leave the policy's state empty: "
                             "set one of them to true")
    if elapsed_time and max_episode_steps < 1:
        raise UserInputError(f"elapsed_time=true needs max_episode_steps >= 1 to scale the time by, "
                             f"got {max_episode_steps}")


def policy_state(states: np.ndarray, steps, max_episode_steps: int, proprioception: bool = True,
                 elapsed_time: bool = False) -> np.ndarray:
    """(..., S) state vectors (bigym_state_vector) at control steps `steps` (broadcast over the leading dims) ->
    the state the policy sees: the S entries if `proprioception`, then step / max_episode_steps if `elapsed_time`
    (how far into the episode each state is, 0 at the reset).

    The elapsed time is for demos on a fixed timetable, like the scripted solvers' (their moves have fixed
    durations): it names the phase where the robot's pose alone does not (DishwasherClose's three pushes). Alone,
    without the proprioception, the policy replays the demos' timetable and cannot over-fit to the start pose each
    demo carries through its joints (benchmarks/HISTORY.md, DishwasherClose)."""
    parts = [states] if proprioception else []
    if elapsed_time:
        elapsed = np.broadcast_to(np.asarray(steps, np.float32) / max_episode_steps, states.shape[:-1])
        parts.append(elapsed[..., None])
    return np.concatenate(parts, axis=-1).astype(np.float32)


def bigym_camera_images(obs: dict, cameras: list[str]) -> np.ndarray:
    """BiGym observation dict -> (N, 3, H, W) uint8 (BiGym already stores rgb_<camera> channel-first)."""
    return np.stack([np.asarray(obs[f"rgb_{name}"], dtype=np.uint8) for name in cameras])


def check_base_action(base_action: str):
    if base_action not in BASE_ACTIONS:
        raise UserInputError(f"base_action must be one of {BASE_ACTIONS}, got '{base_action}'")


def clip_to_control_range(bound_actuator, value: float) -> float:
    """`value` clipped to the actuator's control range, where it has one (MuJoCo's ctrllimited)."""
    return float(np.clip(value, *bound_actuator.ctrlrange)) if bound_actuator.ctrllimited else float(value)


def base_targets(env) -> np.ndarray:
    """The floating base's controller targets (pelvis x, y, (z,) yaw, in action order): the pose BiGym's base deltas
    have accumulated to, in the frame of proprioception_floating_base."""
    physics = env.mojo.physics
    return np.array([float(physics.bind(actuator).ctrl) for actuator in env.robot.floating_base.all_actuators])


def absolute_base_action(env, action: np.ndarray) -> np.ndarray:
    """A BiGym action (base deltas first) -> the same action with the base targets those deltas lead to.

    Where `base_action: absolute`, demos record these and the policy predicts them: like the arms' joint targets, an
    error in one step is corrected by the next prediction instead of adding up as deltas do.
    """
    out = np.array(action, dtype=np.float32)
    for i, actuator in enumerate(env.robot.floating_base.all_actuators):
        bound = env.mojo.physics.bind(actuator)
        out[i] = clip_to_control_range(bound, float(bound.ctrl) + action[i])  # as BiGym clips the accumulated target
    return out


def base_deltas(env, action: np.ndarray) -> np.ndarray:
    """The inverse of absolute_base_action: base targets -> BiGym's deltas from the current targets."""
    out = np.array(action, dtype=np.float32)
    num_base = len(env.robot.floating_base.all_actuators)
    out[:num_base] = out[:num_base] - base_targets(env)
    return out


def solved(env) -> bool:
    """BiGym's success check, counted only while the physics is healthy. After a physics error MuJoCo resets the
    simulation, which puts the props back at their closed (zero) joint states: BiGym then flags the episode as
    truncated, and the reset scene can look solved (a DishwasherClose rollout "succeeded" 17 steps in this way)."""
    return bool(env.success and env.is_healthy)


def clip_action(env, action: np.ndarray) -> np.ndarray:
    """BiGym raises on actions outside its action space; a policy's predictions may overshoot slightly."""
    space = env.action_space
    return np.clip(np.asarray(action, dtype=np.float32), space.low, space.high)


# --------------------------------------------------------------------------------------------------
# Perturbed starts (scripted demos and the held-out evaluation starts)
# --------------------------------------------------------------------------------------------------
# BiGym resets DishwasherClose and DrawerTopOpen to the same state every episode. To make demos that
# a policy must follow in closed loop, and to test it on starts it has not seen, a "perturbed start"
# moves the robot and the task's articulated prop after BiGym's own reset. A start is one vector:
#     [pelvis x, y, (z,) yaw, 10 arm joint positions, 2 grippers]  (= robot.qpos_actuated, 15 or 16 values)
#     + the prop's normalised joint states listed in PROP_STARTS (0 closed, 1 open)
# Scripted demos store it in their metadata's `reset_positions` (a field BiGym's recorder writes but leaves
# all zeros), so re-simulation starts exactly where the recording did. Human demos keep all zeros: no change.
BASE_OFFSET = {"pelvis_x": 0.05, "pelvis_y": 0.05, "pelvis_z": 0.0, "pelvis_rz": 0.1}  # m / rad, uniform in +-
ARM_JOINT_NOISE = 0.1  # rad, uniform in +- on each of the 10 arm joints
# Prop joints: uniform in (low, high), then clipped to [0, 1]. A range reaching past 0 or 1 puts that share of the
# starts exactly at the limit, where BiGym's own reset is: (-0.15, 0.3) starts a third of the episodes with the
# drawer fully closed. (Without that share, the reset was the rarely sampled edge of DrawerTopOpen's demos: the policy
# succeeded there 0% of the time and 72% on perturbed starts; with it, 100% and 86%.)
PROP_STARTS = {  # task -> (attribute of the BiGym env holding the prop, (low, high) per prop joint)
    "DishwasherClose": ("dishwasher", [(0.8, 1.1), (0.6, 1.2), (0.6, 1.2)]),  # door, bottom tray, middle tray
    "DrawerTopOpen": ("cabinet_drawers", [(0.0, 0.0), (0.0, 0.0), (-0.15, 0.3)]),  # bottom, middle, top drawer
}


def _base_dofs(env) -> list[str]:
    """The floating base's joints in action order, as PelvisDof values (e.g. ['pelvis_x', 'pelvis_y', 'pelvis_rz'])."""
    return sorted((dof.value for dof in env.action_mode.floating_dofs), key=PELVIS_DOFS.index)


def sample_start(env, rng: np.random.Generator) -> np.ndarray:
    """A perturbed start around the state BiGym's reset just put `env` in (see above for the layout)."""
    base_dofs = _base_dofs(env)
    robot_start = env.robot.qpos_actuated.astype(np.float64)  # (15,) or (16,)
    robot_start[:len(base_dofs)] += [rng.uniform(-BASE_OFFSET[dof], BASE_OFFSET[dof]) for dof in base_dofs]
    robot_start[len(base_dofs):len(base_dofs) + 10] += rng.uniform(-ARM_JOINT_NOISE, ARM_JOINT_NOISE, size=10)
    _, ranges = PROP_STARTS.get(env.task_name, (None, []))
    prop_start = [np.clip(rng.uniform(low, high), 0.0, 1.0) for low, high in ranges]
    return np.concatenate([robot_start, prop_start])


def apply_start(env, start) -> None:
    """Put the robot (joint positions and their controller targets) and the task's prop at `start`."""
    import mujoco

    start = np.asarray(start, dtype=np.float64)
    physics, robot = env.mojo.physics, env.robot
    robot_size = len(robot.qpos_actuated)
    # Floating base and arm joints are position-controlled: joint and controller target both move, so the
    # robot holds the start until the first action (base actions are deltas added to these targets).
    actuators = list(robot.floating_base.all_actuators) + list(robot.limb_actuators)
    for actuator, value in zip(actuators, start[:len(actuators)]):
        bound = physics.bind(actuator)
        value = clip_to_control_range(bound, value)
        physics.bind(actuator.joint).qpos = value
        physics.bind(actuator.joint).qvel = 0
        bound.ctrl = value
    if env.task_name in PROP_STARTS:
        prop_name, ranges = PROP_STARTS[env.task_name]
        prop_state = start[robot_size:]
        if len(prop_state) != len(ranges):
            raise ValueError(f"a {env.task_name} start needs {robot_size + len(ranges)} values, got {len(start)}")
        prop = getattr(env, prop_name)
        if prop_name == "dishwasher":
            prop.set_state(*prop_state)
        else:
            prop.set_state(prop_state)
    mujoco.mj_forward(env.mojo.model, env.mojo.data)


def start_rng(seed: int) -> np.random.Generator:
    """The perturbation's own random stream for episode `seed` (BiGym's reset draws from numpy's global one)."""
    return np.random.default_rng([seed, 0x5EED])


def reset_perturbed(env, seed: int) -> np.ndarray:
    """BiGym's reset for `seed`, then the perturbed start drawn for that seed. Returns the start vector."""
    env.reset(seed=seed)  # BiGym seeds the task layout (and numpy's global RNG) from this
    start = sample_start(env, start_rng(seed))
    apply_start(env, start)
    return start


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------
class BiGymEnv(RobotEnv):
    def __init__(self, env_id: str, num_envs: int, cameras: list[str], image_size: int, action_mode: str = "absolute",
                 control_frequency: int = 50, max_episode_steps: int = 1000, fast_rendering: bool = False,
                 video_size: int = 192, perturbed_starts: bool = False, floating_dofs=DEFAULT_FLOATING_DOFS,
                 joint_velocities: bool = True, base_action: str = "delta", elapsed_time: bool = False,
                 proprioception: bool = True):
        """env_id: BiGym task (class name or snake_case). max_episode_steps counts control steps.

        perturbed_starts: after BiGym's reset, move robot and prop to the perturbed start drawn for the
        episode's seed (see sample_start); False evaluates on BiGym's own reset, the paper's protocol.
        video_size: side of each camera tile in render() frames.
        joint_velocities: keep the joint velocities in the state (see bigym_state_vector).
        base_action: "delta" (BiGym's own) or "absolute": the actions' base entries are targets (absolute_base_action),
            turned into BiGym's deltas here.
        elapsed_time, proprioception: what the policy's state holds (policy_state).
        """
        check_base_action(base_action)
        check_state_contents(proprioception, elapsed_time, max_episode_steps)
        self.num_envs, self.cameras = num_envs, list(cameras)
        self.max_episode_steps, self.perturbed_starts = max_episode_steps, perturbed_starts
        self.joint_velocities, self.base_action = joint_velocities, base_action
        self.elapsed_time, self.proprioception = elapsed_time, proprioception
        self.steps = 0  # control steps since the last reset (all E environments step together)
        self.envs = [make_bigym_env(env_id, self.cameras, image_size, action_mode, control_frequency, fast_rendering,
                                    floating_dofs) for _ in range(num_envs)]
        self.action_dim = self.envs[0].action_space.shape[0]
        self.fast_rendering, self.video_size = fast_rendering, video_size
        self._video_renderers = None  # made on the first render() call: evaluation without video never pays

    @classmethod
    def from_config(cls, cfg, num_envs: int) -> "BiGymEnv":
        """The adapter a BiGym run's config describes (utils/schema.py's BiGymRun)."""
        return cls(cfg.env_id, num_envs, cfg.cameras, cfg.image_size, cfg.action_type, cfg.control_frequency,
                   cfg.max_episode_steps, cfg.fast_rendering, perturbed_starts=cfg.perturbed_starts,
                   floating_dofs=cfg.floating_dofs, joint_velocities=cfg.joint_velocities, base_action=cfg.base_action,
                   elapsed_time=cfg.elapsed_time, proprioception=cfg.proprioception)

    def _convert(self, observations: list[dict]) -> dict:
        states = np.stack([bigym_state_vector(obs, self.joint_velocities) for obs in observations])  # (E, S)
        states = policy_state(states, self.steps, self.max_episode_steps, self.proprioception, self.elapsed_time)
        out = {"state": states}  # (E, S), (E, S + 1) or (E, 1)
        if self.cameras:
            # (E, N, 3, H, W)
            out["images"] = np.stack([bigym_camera_images(obs, self.cameras) for obs in observations])
        return out

    def reset(self, seed: int) -> dict:
        self.steps = 0
        observations = []
        for i, env in enumerate(self.envs):
            if self.perturbed_starts:
                reset_perturbed(env, seed + i)
            else:
                env.reset(seed=seed + i)  # BiGym seeds the task layout (and numpy's global RNG) from this
            observations.append(read_observation(env))
        return self._convert(observations)

    def step(self, actions: np.ndarray):
        """actions (E, A) -> obs, reward (E,) float32, success (E,) bool. Episodes are not ended on success; after a
        physics error an episode counts as failed to its end (see solved)."""
        observations, rewards, successes = [], [], []
        for env, action in zip(self.envs, np.asarray(actions)):
            if self.base_action == "absolute":
                action = base_deltas(env, action)
            obs, reward, _, _, _ = env.step(clip_action(env, action))
            observations.append(obs)
            rewards.append(reward)
            successes.append(solved(env))
        self.steps += 1
        return self._convert(observations), np.asarray(rewards, np.float32), np.asarray(successes, bool)

    def render(self, count: int | None = None) -> np.ndarray:
        """(count or E, video_size, 3 * video_size, 3) uint8 frames of the first environments:
        head | left_wrist | right_wrist, same quality as observations. Only those are drawn (CPU rendering is slow)."""
        import mujoco

        if self._video_renderers is None:
            self._video_renderers = []
            for env in self.envs:
                renderer = mujoco.Renderer(env.mojo.model, self.video_size, self.video_size)
                if self.fast_rendering:
                    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
                    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
                self._video_renderers.append(renderer)
        frames = []
        for env, renderer in zip(self.envs[:count], self._video_renderers):
            camera_ids = {camera.mjcf.name: camera.id for camera in env.robot.cameras}
            tiles = []
            for name in ROBOT_CAMERAS:
                renderer.update_scene(env.mojo.data, camera_ids[name])
                tiles.append(renderer.render())  # (video_size, video_size, 3)
            frames.append(np.concatenate(tiles, axis=1))
        return np.stack(frames)

    def close(self):
        for renderer in self._video_renderers or []:
            renderer.close()
        for env in self.envs:
            env.close()
