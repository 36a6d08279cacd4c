"""Scripted BiGym demonstrations: a motion per task computed from the simulator's state.

BiGym's human demos (a release zip) cannot always be downloaded; these solvers make demonstrations offline.
Each solver reads the scene (prop joints, handle and target poses, the robot's own pose) from MuJoCo,
places hand waypoints relative to it, and reaches them with inverse kinematics on the robot model:

    HandTarget(s)  --WholeBodyIK (damped least squares on arm joints + floating base)-->  joint targets
    joint targets  --ScriptedMotion (min-jerk interpolation, 500 Hz)-->  BiGym actions, stepped and recorded

Actions are those of JointPositionActionMode(floating_base=True, absolute=True), the mode BiGym's own demos
are recorded in: A = 15 = [pelvis dx, dy, dyaw (per physics step), 5 left arm joints, 5 right arm joints,
left gripper, right gripper] (arm joints: shoulder pitch, roll, yaw, elbow, wrist; gripper 0 open, 1 closed);
A = 16 with the pelvis height dz after dy (floating_dofs with pelvis_z, which DishwasherClose needs).

Solvers (SCRIPTED_TASKS at the end, with each solver's version and config recipe): ReachTarget, DishwasherClose,
DrawerTopOpen.

A solver only plans; whether the task was solved is decided by BiGym's own success check (see
datasets/bigym_demos.py, which records the motion and keeps only solved demos). Solvers take a
numpy Generator for timing and waypoint jitter, so the same start and seed give the same motion.

Recovery demonstrations (DART, Laskey et al. 2017): with noise > 0 the robot is driven towards the planned
configuration plus a smooth random offset (PlanNoise), so it leaves the planned path, while the plan itself, the
label a policy learns, stays clean. Every physics step hands both to step_fn: the executed action (what BiGym's
DemoRecorder records and re-simulation replays) and the planned target (the label: "go back to the plan").
The solvers are plans in time, not functions of the state: a tray pulled back out is not pushed again. So
they label states near their path (DART), but not the states a policy reaches on its own (DAgger).
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from env.bigym_env import resolve_task
from env.errors import UserInputError

LEFT, RIGHT = "left", "right"
SIDES = (LEFT, RIGHT)
CONTROL_DT = 1 / 500  # BiGym's physics step; demos are recorded at this rate
IK_EVERY = 10  # physics steps per IK solve (50 Hz); joint targets are interpolated in between


@dataclass
class HandTarget:
    """Where one hand's site should be, in world coordinates.

    site: "pinch" (between the fingertips, for grasping and pushing) or "wrist" (BiGym's hand position).
    rotation: optional (3, 3) world orientation of the site; None leaves orientation free.
    """
    position: np.ndarray
    rotation: np.ndarray | None = None
    site: str = "pinch"


def min_jerk(fraction: float) -> float:
    """Smooth 0 -> 1 profile with zero velocity and acceleration at both ends."""
    s = np.clip(fraction, 0.0, 1.0)
    return float(10 * s**3 - 15 * s**4 + 6 * s**5)


class WholeBodyIK:
    """Inverse kinematics for the H1's two pinch sites over the arm joints and the floating base.

    Works on a private MjData (the simulation is never touched): set a configuration, read the sites'
    Jacobians with mj_jacSite, take damped-least-squares steps. The floating base (pelvis x, y, (z,) yaw) joins
    the solve only when asked and at a cost (base_weight), so the arms do the work when they can reach.
    """

    def __init__(self, env, damping: float = 0.05, base_weight: float = 0.3):
        import mujoco

        self.mujoco = mujoco
        self.model = env.mojo.model
        self.data = mujoco.MjData(self.model)
        physics = env.mojo.physics
        joint_ids = [int(physics.bind(actuator).trnid[0]) for actuator in env.robot.limb_actuators]  # 10 arm joints
        self.arm_joints = {LEFT: joint_ids[:5], RIGHT: joint_ids[5:]}
        base_joints = [int(physics.bind(actuator).trnid[0]) for actuator in env.robot.floating_base.all_actuators]
        self.base_joints = base_joints  # pelvis x, y, (z,) yaw
        self.base_dofs = [self.model.joint(j).name.split("/")[-1] for j in base_joints]  # e.g. "pelvis_x"
        self.qpos_index = {j: int(self.model.jnt_qposadr[j]) for j in joint_ids + base_joints}
        self.dof_index = {j: int(self.model.jnt_dofadr[j]) for j in joint_ids + base_joints}
        grippers = {side: env.robot.grippers[_hand_side(side)] for side in SIDES}
        self.site_ids = {(side, name): int(physics.bind(site.mjcf).element_id)
                         for side, gripper in grippers.items()
                         for name, site in (("pinch", gripper._pinch_site), ("wrist", gripper.wrist_site))}
        self.damping, self.base_weight = damping, base_weight

    def forward(self, qpos: np.ndarray) -> dict:
        """Site poses {(side, site): (position (3,), rotation (3, 3))} at the full configuration qpos."""
        self.data.qpos[:] = qpos
        self.mujoco.mj_kinematics(self.model, self.data)
        return {key: (self.data.site_xpos[i].copy(), self.data.site_xmat[i].reshape(3, 3).copy())
                for key, i in self.site_ids.items()}

    def solve(self, qpos: np.ndarray, targets: dict, use_base: bool = False, iterations: int = 20) -> np.ndarray:
        """A configuration (full qpos) near `qpos` that puts each targeted site on its HandTarget."""
        mujoco, model, data = self.mujoco, self.model, self.data
        joints = [j for side in targets for j in self.arm_joints[side]] + (self.base_joints if use_base else [])
        dofs = np.array([self.dof_index[j] for j in joints])
        weights = np.array([self.base_weight if j in self.base_joints else 1.0 for j in joints])
        q = qpos.copy()
        jac_pos, jac_rot = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        for _ in range(iterations):
            data.qpos[:] = q
            mujoco.mj_kinematics(model, data)
            mujoco.mj_comPos(model, data)
            errors, rows = [], []
            for side, target in targets.items():
                site = self.site_ids[side, target.site]
                mujoco.mj_jacSite(model, data, jac_pos, jac_rot, site)
                errors.append(target.position - data.site_xpos[site])
                rows.append(jac_pos[:, dofs].copy())
                if target.rotation is not None:
                    # Rotation error as an axis-angle vector in the world frame (small-angle weighting 0.3 m/rad).
                    current = data.site_xmat[site].reshape(3, 3)
                    errors.append(0.3 * _rotation_error(target.rotation, current))
                    rows.append(0.3 * jac_rot[:, dofs].copy())
            error, jacobian = np.concatenate(errors), np.vstack(rows) * weights
            if np.linalg.norm(error) < 1e-4:
                break
            # Damped least squares: dq = W J^T (J W J^T + lambda^2 I)^-1 e (W: per-joint weights, squared).
            step = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + self.damping**2 * np.eye(len(error)), error)
            step = np.clip(step * weights, -0.2, 0.2)
            for j, dq in zip(joints, step):
                index = self.qpos_index[j]
                low, high = model.jnt_range[j] if model.jnt_limited[j] else (-np.inf, np.inf)
                q[index] = np.clip(q[index] + dq, low, high)
        return q


def _hand_side(side: str):
    from bigym.const import HandSide

    return HandSide.LEFT if side == LEFT else HandSide.RIGHT


def _rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (world frame) rotating `current` onto `target`."""
    delta = target @ current.T
    angle = np.arccos(np.clip((np.trace(delta) - 1) / 2, -1.0, 1.0))
    if angle < 1e-6:
        return np.zeros(3)
    if np.sin(angle) < 1e-6:  # a half turn: the axis comes from the symmetric part
        return np.sqrt(np.clip((np.diag(delta) + 1) / 2, 0, None)) * angle
    axis = np.array([delta[2, 1] - delta[1, 2], delta[0, 2] - delta[2, 0], delta[1, 0] - delta[0, 1]])
    return axis * angle / (2 * np.sin(angle))


def slerp(start: np.ndarray, end: np.ndarray, fraction: float) -> np.ndarray:
    """The rotation `fraction` of the way from `start` to `end` along the shortest arc (Rodrigues' formula)."""
    vector = fraction * _rotation_error(end, start)
    angle = np.linalg.norm(vector)
    if angle < 1e-10:
        return start
    k = vector / angle
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return (np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew) @ start


PLAN_NOISE_TIME = 0.25  # s: correlation time of the DART offset (long enough to move the robot, and to survive
                        # the averaging of 10-20 physics steps into one control step)
BASE_NOISE_PER_RAD = 0.2  # the floating base's offset (m, or rad for yaw) per radian of arm-joint offset


class PlanNoise:
    """A smooth random offset of the planned configuration (an Ornstein-Uhlenbeck process, one physics step per
    call): standard deviation `noise` rad on each arm joint and BASE_NOISE_PER_RAD * noise on each base joint,
    starting from zero, correlated over PLAN_NOISE_TIME."""

    def __init__(self, noise: float, num_base: int, rng: np.random.Generator):
        self.scale = noise * np.concatenate([np.full(num_base, BASE_NOISE_PER_RAD), np.ones(10)])  # base, 10 arms
        self.decay = np.exp(-CONTROL_DT / PLAN_NOISE_TIME)
        self.offset = np.zeros_like(self.scale)
        self.rng = rng

    def step(self) -> np.ndarray:
        """The offset for the next physics step: (base + 10 arm joints,) in action order."""
        fresh = self.rng.standard_normal(self.scale.shape) * self.scale
        self.offset = self.decay * self.offset + np.sqrt(1 - self.decay**2) * fresh
        return self.offset


class ScriptedMotion:
    """Drives the robot through hand waypoints, one physics step (one recorded action) at a time.

    step_fn(action, planned) steps the environment (and records): `action` is what is executed, `planned` the same
    layout with the base as absolute targets and no noise (see the module docstring). The motion keeps its own
    commanded configuration, so consecutive moves join smoothly whatever the tracking lag of the PD controllers.
    noise: DART noise level (rad on the arm joints, see PlanNoise); 0 executes the plan itself.
    """

    def __init__(self, env, step_fn, rng: np.random.Generator, speed_jitter: float = 0.15, noise: float = 0.0):
        self.env, self.step_fn, self.rng = env, step_fn, rng
        self.ik = WholeBodyIK(env)
        self.commanded = env.mojo.data.qpos.copy()  # the configuration the controllers are driven towards
        self.gripper = np.zeros(2)  # left, right: 0 open, 1 closed
        self.speed_jitter = speed_jitter
        self.arm_qpos = [self.ik.qpos_index[j] for side in SIDES for j in self.ik.arm_joints[side]]
        self.base_qpos = [self.ik.qpos_index[j] for j in self.ik.base_joints]
        self.sent_base = self.commanded[self.base_qpos]  # the base targets sent so far (deltas are taken from them)
        # The noise has its own stream, seeded whatever the noise level: a seed's plan is the same with and without.
        noise_rng = np.random.default_rng(rng.integers(2**32))
        self.noise = PlanNoise(noise, len(self.base_qpos), noise_rng) if noise else None

    def hand_pose(self, side: str, site: str = "pinch") -> tuple[np.ndarray, np.ndarray]:
        """Commanded (position, rotation) of one hand's site."""
        return self.ik.forward(self.commanded)[side, site]

    def move(self, targets: dict, duration: float, use_base: bool = False, gripper=None):
        """Move the targeted hands along min-jerk straight lines to their HandTargets in about `duration` s
        (orientations, where given, turn along the shortest arc on the same profile).

        Hands not in `targets` hold their joints. gripper: optional (left, right) commands, set at the start.
        """
        duration *= 1 + self.rng.uniform(-self.speed_jitter, self.speed_jitter)
        if gripper is not None:
            self.gripper = np.asarray(gripper, dtype=float)
        start = self.ik.forward(self.commanded)
        steps = max(IK_EVERY, int(round(duration / CONTROL_DT)))
        for tick in range(0, steps, IK_EVERY):
            fraction = min_jerk((tick + IK_EVERY) / steps)
            waypoint = {}
            for side, target in targets.items():
                origin, origin_rotation = start[side, target.site]
                rotation = None if target.rotation is None else slerp(origin_rotation, target.rotation, fraction)
                waypoint[side] = HandTarget(origin + fraction * (target.position - origin), rotation, target.site)
            goal = self.ik.solve(self.commanded, waypoint, use_base=use_base)
            for sub in range(1, IK_EVERY + 1):
                self._send(self.commanded + (goal - self.commanded) * sub / IK_EVERY)
            self.commanded = goal

    def move_joints(self, goal: np.ndarray, duration: float, gripper=None):
        """Min-jerk move of the whole commanded configuration (arms and base) to `goal` (full qpos) in joint space."""
        duration *= 1 + self.rng.uniform(-self.speed_jitter, self.speed_jitter)
        if gripper is not None:
            self.gripper = np.asarray(gripper, dtype=float)
        start = self.commanded.copy()
        steps = max(1, int(round(duration / CONTROL_DT)))
        for step in range(1, steps + 1):
            self._send(start + (goal - start) * min_jerk(step / steps))
        self.commanded = goal.copy()

    def hold(self, duration: float, gripper=None):
        """Keep the commanded configuration (e.g. while the grippers close)."""
        if gripper is not None:
            self.gripper = np.asarray(gripper, dtype=float)
        for _ in range(int(round(duration / CONTROL_DT))):
            self._send(self.commanded)

    def _send(self, qpos: np.ndarray):
        """One physics step towards qpos (plus the DART offset): the base as a delta from the last command, arms
        absolute."""
        planned = np.concatenate([qpos[self.base_qpos], qpos[self.arm_qpos]])  # (base + 10,) absolute targets
        executed = planned + self.noise.step() if self.noise else planned
        num_base, space = len(self.base_qpos), self.env.action_space
        action = np.concatenate([executed[:num_base] - self.sent_base, executed[num_base:], self.gripper])
        action = np.clip(action, space.low, space.high).astype(np.float32)
        self.sent_base = self.sent_base + action[:num_base]  # where BiGym's base targets now are
        planned = np.concatenate([planned, self.gripper])
        planned[num_base:] = np.clip(planned[num_base:], space.low[num_base:], space.high[num_base:])
        self.step_fn(action, planned)


# --------------------------------------------------------------------------------------------------
# Task solvers: solve_<task>(env, motion, rng) moves the robot; BiGym's success check judges the result.
# --------------------------------------------------------------------------------------------------
def solve_reach_target(env, motion: ScriptedMotion, rng: np.random.Generator):
    """ReachTarget: bring the nearer wrist (BiGym measures the wrist site) onto the target sphere."""
    target = env.targets[0].body.get_position()  # (3,) world; BiGym draws it +-0.1 m around (0.5, 0, 1)
    side = min(SIDES, key=lambda s: np.linalg.norm(motion.hand_pose(s, "wrist")[0] - target))
    goal = target + rng.uniform(-0.02, 0.02, size=3)  # inside BiGym's 0.1 m tolerance
    motion.move({side: HandTarget(goal, site="wrist")}, duration=1.5, use_base=True)
    motion.hold(0.4)



def _subtree_geoms(model, body_id: int) -> list[int]:
    """Collidable geoms of a body and all bodies below it."""
    def below(body):
        while body:
            if body == body_id:
                return True
            body = model.body_parentid[body]
        return False
    return [g for g in range(model.ngeom) if model.geom_contype[g] and below(model.geom_bodyid[g])]


def world_box(env, body, data=None) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned bounding box (low (3,), high (3,)) of a Mojo body's collidable geometry, in the
    simulation or in `data` (a private MjData, e.g. fully_open_dishwasher's)."""
    model, data = env.mojo.model, env.mojo.data if data is None else data
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    points = []
    for g in _subtree_geoms(model, int(env.mojo.physics.bind(body.mjcf).element_id)):
        center, half = model.geom_aabb[g][:3], model.geom_aabb[g][3:]
        points.append(data.geom_xpos[g] + (center + corners * half) @ data.geom_xmat[g].reshape(3, 3).T)
    points = np.concatenate(points)
    return points.min(axis=0), points.max(axis=0)


def fully_open_dishwasher(env):
    """A private copy of the scene (MjData, kinematics only) with the dishwasher's door and trays fully open."""
    import mujoco

    model, dishwasher = env.mojo.model, env.dishwasher
    data = mujoco.MjData(model)
    data.qpos[:] = env.mojo.data.qpos
    for part in (dishwasher.door, dishwasher.tray_bottom, dishwasher.tray_middle):
        joint_id = int(env.mojo.physics.bind(part.joint.mjcf).element_id)
        data.qpos[model.jnt_qposadr[joint_id]] = part.joint.mjcf.range[1]  # BiGym's "open" end of the joint
    mujoco.mj_kinematics(model, data)
    return data


PUSH_PAST = 0.03  # m: DishwasherClose's pushes aim this far past where the tray or door is closed (it stops there)


def solve_dishwasher_close(env, motion: ScriptedMotion, rng: np.random.Generator):
    """DishwasherClose: push the middle and bottom trays home with the left hand, then swing the door up
    about its hinge and push it shut. The robot faces the dishwasher along +x; trays close along +x.

    The motion is planned on the fully open dishwasher (BiGym's reset): each push starts where the fully open
    tray's rim would be and the door is swept up from its fully open position, so a partly closed tray or door
    is simply met later on the way. The hand's path then does not depend on the openings, which proprioception
    cannot see (planned on the actual openings, the approach points of the demos spread over 20 cm; a policy
    without a view of the trays averaged them and stalled halfway through its first push).

    Needs the pelvis height in the action (floating_dofs with pelvis_z): standing, the H1's hands reach no
    lower than z ~0.64 m, while the bottom tray's top is at ~0.52 m and the open door at ~0.15-0.4 m.
    """
    if "pelvis_z" not in motion.ik.base_dofs:
        raise UserInputError(f"the DishwasherClose solver needs the pelvis height in the action (the robot must crouch "
                         f"to reach the bottom tray and the open door), got floating base {motion.ik.base_dofs}: set "
                         f"floating_dofs=[pelvis_x,pelvis_y,pelvis_z,pelvis_rz] (make_bigym_demos.py: --floating-dofs)")
    dishwasher, hand = env.dishwasher, LEFT  # the left hand is on the dishwasher's side

    def jitter():
        return rng.uniform(-0.01, 0.01, size=3) * np.array([1, 1, 0.5])

    def reach(position, duration):
        motion.move({hand: HandTarget(np.asarray(position, dtype=float))}, duration, use_base=True)

    def push_tray_home(tray, below_top: float):
        """Pinch in front of the fully open tray's front rim, then push to where the rim is when closed."""
        low, high = world_box(env, tray.body, open_scene)
        travel = float(np.ptp(tray.joint.mjcf.range))  # metres between fully open and closed
        height = high[2] - below_top
        reach([low[0] - 0.07, lane, height + 0.06] + jitter(), 0.9)
        reach([low[0] - 0.03, lane, height], 0.4)
        reach([low[0] + travel - 0.004 + PUSH_PAST, lane, height], 1.0)

    open_scene = fully_open_dishwasher(env)
    low, _ = world_box(env, dishwasher.tray_middle.body, open_scene)
    lane = max(low[1], -0.30) + 0.12  # y of the hand's path: inside the trays' width, near the robot's side
    # 1-2. Trays: the middle one at standing height, then the bottom one crouching.
    push_tray_home(dishwasher.tray_middle, below_top=0.03)
    push_tray_home(dishwasher.tray_bottom, below_top=0.06)

    # 3. Door: under its far edge, along an arc about the hinge (4 cm under the door's surface), then shut.
    hinge = open_scene.xpos[int(env.mojo.physics.bind(dishwasher.door.body.mjcf).element_id)].copy()
    low, high = world_box(env, dishwasher.door.body, open_scene)
    radius = hinge[0] - low[0] - 0.06  # just inside the far edge
    start_angle = np.arcsin(np.clip((high[2] - hinge[2]) / max(hinge[0] - low[0], 1e-3), -1, 1))
    under = low[2] - 0.035
    here = motion.hand_pose(hand)[0]
    reach([low[0] - 0.08, lane, here[2]], 0.7)  # back out of the tray
    reach([low[0] - 0.06, lane, under] + jitter(), 0.6)
    reach([hinge[0] - radius, lane, under], 0.35)
    for angle in np.linspace(max(start_angle, 0) + 0.25, np.pi / 2 - 0.15, 4):
        reach([hinge[0] - radius * np.cos(angle), lane, hinge[2] + radius * np.sin(angle) - 0.04], 0.35)
    # The closed door's outer face is ~4.5 cm in front of the hinge: push the pinch to there, then step back.
    reach([hinge[0] - 0.045 + PUSH_PAST, lane, hinge[2] + 0.8 * radius], 0.5)
    reach([hinge[0] - 0.15, lane, hinge[2] + 0.8 * radius], 0.35)
    motion.hold(0.3)


def top_drawer_geometry(env) -> dict:
    """The top drawer's handle bar (world centre), opening axis (world), current opening and travel range (m)."""
    import mujoco

    model, data, physics = env.mojo.model, env.mojo.data, env.mojo.physics
    joint = env.cabinet_drawers._joints[-1]  # BiGym's DrawerTopOpen checks the last drawer joint
    joint_id = int(physics.bind(joint.mjcf).element_id)
    drawer = int(model.jnt_bodyid[joint_id])
    axis = data.xmat[drawer].reshape(3, 3) @ model.jnt_axis[joint_id]
    # The bar: the largest collidable box on a body attached to the drawer (its handle).
    boxes = [g for g in range(model.ngeom)
             if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX and model.geom_contype[g]
             and model.body_parentid[model.geom_bodyid[g]] == drawer and model.geom_bodyid[g] != drawer]
    bar = max(boxes, key=lambda g: model.geom_size[g][0])
    return {"handle": data.geom_xpos[bar].copy(), "axis": axis / np.linalg.norm(axis),
            "opening": float(data.qpos[model.jnt_qposadr[joint_id]]), "range": tuple(model.jnt_range[joint_id])}


def grasp_rotation(axis: np.ndarray, pitch: float) -> np.ndarray:
    """Pinch-site orientation for a horizontal bar: fingers (site z) pointing into the drawer (against `axis`),
    tilted `pitch` rad down; they close (site y) in the vertical plane through the axis, across the bar."""
    forward = -np.array([axis[0], axis[1], 0.0])
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 0.0, 1.0])
    approach = np.cos(pitch) * forward - np.sin(pitch) * up
    close = np.sin(pitch) * forward + np.cos(pitch) * up
    return np.column_stack([np.cross(close, approach), close, approach])


def solve_drawer_top_open(env, motion: ScriptedMotion, rng: np.random.Generator):
    """DrawerTopOpen: grasp the top drawer's handle bar with the right hand, pull it out, let go.

    The H1's arms are short: a horizontal grasp cannot reach the handle height, so the fingers point 60 degrees
    down and the robot walks up to the cabinet. The pre-grasp configuration is solved from a canonical seed (BiGym's
    reset pose at a fixed stance relative to the handle) along a straight-line IK path traced without physics;
    solving from the perturbed start instead picks other IK branches and stances whose legs hit the cabinets.
    """
    hand, ik = RIGHT, motion.ik
    geometry = top_drawer_geometry(env)
    axis, handle = geometry["axis"], geometry["handle"]
    rotation = grasp_rotation(axis, pitch=np.radians(60))
    approach = rotation[:, 2]  # where the fingers point
    grasp = handle + rng.uniform(-0.002, 0.002, size=3)
    pregrasp = handle - 0.10 * approach + rng.uniform(-0.01, 0.01, size=3) * np.array([1, 1, 0.5])
    pulled = grasp + (geometry["range"][1] + 0.01 - geometry["opening"]) * axis  # 1 cm past the end of travel
    retreat = pulled - 0.07 * approach

    # Canonical seed: arms at zero, pelvis 0.81 m in front of the handle, facing it.
    forward = -axis[:2] / np.linalg.norm(axis[:2])
    x_index, y_index, yaw_index = (ik.qpos_index[ik.base_joints[ik.base_dofs.index(dof)]]
                                   for dof in ("pelvis_x", "pelvis_y", "pelvis_rz"))
    seed = motion.commanded.copy()
    for joints in ik.arm_joints.values():
        seed[[ik.qpos_index[j] for j in joints]] = 0.0
    seed[[x_index, y_index]] = handle[:2] - 0.812 * forward
    yaw_now, facing = motion.commanded[yaw_index], np.arctan2(forward[1], forward[0])
    seed[yaw_index] = yaw_now + np.arctan2(np.sin(facing - yaw_now), np.cos(facing - yaw_now))
    origin, origin_rotation = ik.forward(seed)[hand, "pinch"]
    goal = seed
    for fraction in np.linspace(0.02, 1.0, 50):
        waypoint = HandTarget(origin + fraction * (pregrasp - origin), slerp(origin_rotation, rotation, fraction))
        goal = ik.solve(goal, {hand: waypoint}, use_base=True)
    for _ in range(3):
        goal = ik.solve(goal, {hand: HandTarget(pregrasp, rotation)}, use_base=True)

    motion.move_joints(goal, 2.0, gripper=(0.0, 0.3))  # partly closed: the far finger fits behind the bar
    motion.move({hand: HandTarget(grasp, rotation)}, 0.7, use_base=True)
    motion.hold(0.35, gripper=(0.0, 1.0))
    motion.move({hand: HandTarget(pulled, rotation)}, 2.0, use_base=True)
    motion.hold(0.25, gripper=(0.0, 0.6))  # open only a little: a wide opening pushes the drawer back
    motion.move({hand: HandTarget(retreat, rotation)}, 0.6, gripper=(0.0, 0.0))
    motion.hold(0.3)


@dataclass
class ScriptedTask:
    """A task we can make demos for: its solver, the solver's version and the task's recipe.

    version: raise it whenever the solver (or ScriptedMotion, WholeBodyIK, PlanNoise) changes the motions it makes:
    scripted demos are cached per solver version and noise level (datasets/bigym_demos.py), so old demos are not
    reused.
    recipe: everything training on the task's scripted demos needs from the config, so that naming the task
    reproduces its row in benchmarks/RESULTS.md: the base joints its solver moves, the control rate its demos still
    solve the task at when re-simulated, an episode with room beyond the longest demo, what the policy sees
    (cameras; joint velocities, proprioception and elapsed time in the state), how its chunks are executed and what
    base action it predicts, the DART noise its demos are made with (demo_noise, rad on the arm joints; 0: the plan
    itself), and the training iterations (total_iters, measured with configs/ACT_bigym_cpu_config.yaml's model and
    batch of 32). Applied below the user's own settings.
    """

    solve: Callable  # (env, ScriptedMotion, numpy Generator) -> None: plans one episode's motion
    version: int
    recipe: dict


SCRIPTED_TASKS = {  # BiGym task class name -> ScriptedTask
    # Demos about 2.5 s; 3 s episodes. DART demos (noise 0.05 rad): 88% against 52% without, same seeds
    # (benchmarks/HISTORY.md).
    "ReachTarget": ScriptedTask(solve_reach_target, version=1, recipe={
        "floating_dofs": ["pelvis_x", "pelvis_y", "pelvis_rz"], "control_frequency": 25, "max_episode_steps": 75,
        "cameras": ["head"], "joint_velocities": True, "base_action": "delta", "model.chunk_size": 16,
        "temporal_ensemble": True, "demo_noise": 0.05, "total_iters": 3000}),
    # Demos 5-7 s; 8 s episodes. No DART noise: 72% without, 62% with 0.02 rad on the same 50 starts (one run each,
    # 3000 iterations, benchmarks/HISTORY.md); noise makes the handle grasp fail (0.02 solved 100 of 155 attempts,
    # 0.03 31 of 68). 4000 iterations: 82% (76% at iteration 3000 of the same run).
    "DrawerTopOpen": ScriptedTask(solve_drawer_top_open, version=1, recipe={
        "floating_dofs": ["pelvis_x", "pelvis_y", "pelvis_rz"], "control_frequency": 25, "max_episode_steps": 200,
        "cameras": ["head"], "joint_velocities": True, "base_action": "delta", "model.chunk_size": 16,
        "temporal_ensemble": True, "demo_noise": 0.0, "total_iters": 4000}),
    # Crouches (pelvis_z). Decimated to 25 Hz, 62 of 100 demos no longer close everything; at 50 Hz 82-85 do, and only
    # those are trained on (drop_unsolved_demos: 85% of 20 held-out starts against 70% imitating all 100). Demos about
    # 9 s; 10 s episodes. The policy sees the head and left wrist cameras (ResNet18 to layer3) and the elapsed time,
    # which names the phase of the solver's one timetable (middle tray, bottom tray, door). Without the cameras the
    # time alone replays that timetable blind (100% on these starts: an ablation, it would fail on demos whose timing
    # depends on what the robot sees, e.g. BiGym's human ones). With the proprioception it over-fits to the start
    # pose each demo carries through its joints and drifts in closed loop: 8% (benchmarks/HISTORY.md). Absolute base
    # targets; chunks of 50 temporally ensembled (same weights, same 50 starts: 92%, against 74% re-planning every
    # 25 steps and 60% playing whole chunks open loop; 88% on 50 other starts). 4000 iterations: 92% (94% at 3000 of
    # the same run), against 76% after 2000 on the same demos and seed; 92% and 100% of 10 on BiGym's reset from a
    # fresh clone (benchmarks/HISTORY.md). DART noise 0.03 rad: 100 of 159-170 attempts solved.
    "DishwasherClose": ScriptedTask(solve_dishwasher_close, version=1, recipe={
        "floating_dofs": ["pelvis_x", "pelvis_y", "pelvis_z", "pelvis_rz"], "control_frequency": 50,
        "max_episode_steps": 500, "cameras": ["head", "left_wrist"], "model.backbone_stages": 3,
        "proprioception": False, "elapsed_time": True, "joint_velocities": False, "base_action": "absolute",
        "model.chunk_size": 50, "temporal_ensemble": True, "demo_noise": 0.03,
        "drop_unsolved_demos": True, "total_iters": 4000}),
}


def scripted_task(task: str) -> str:
    """The class name of a BiGym task we have a scripted solver for (snake_case names accepted); else one line."""
    task = resolve_task(task).__name__
    if task not in SCRIPTED_TASKS:
        raise UserInputError(f"no scripted solver for BiGym task '{task}'; solvers exist for {sorted(SCRIPTED_TASKS)}")
    return task


def scripted_recipe(cfg) -> tuple[str, dict]:
    """utils.config's task_defaults hook: with demo_source=scripted, the recipe of cfg.env_id's solver. A task without
    a solver stops here, while the config is read, before the run's folders are made."""
    if cfg.demo_source != "scripted":
        resolve_task(cfg.env_id)  # a wrong task name stops here too
        return "", {}
    task = scripted_task(cfg.env_id)
    return f"{task} scripted-demo recipe (SCRIPTED_TASKS in datasets/bigym_solvers.py)", SCRIPTED_TASKS[task].recipe
