"""Scripted ALOHA sim demonstrations (transfer_cube, insertion), written in the ALOHA HDF5 layout (datasets/aloha_hdf5.py).

How a demo is made (the ACT paper's recipe, our own waypoints):
  1. end-effector rollout: in gym-aloha's mocap task (both grippers welded to mocap bodies), each arm follows
     waypoints computed from the objects' start poses (above the object, down, close, lift, meet, hand over /
     insert), interpolated linearly step by step. No camera is rendered.
  2. joint replay: the arm joint positions that rollout went through, with the grippers' normalised commands, are
     replayed as joint-position actions in the joint-space task (the one the policy acts in, env/aloha_env.py) from
     the same start; the top camera is rendered here only. An episode is kept when the replay reaches reward 4.
Recorded per step t (T = 400): observations/qpos[t] the state before the step, observations/images/top[t] the frame
before the step, action[t] the joint command of step t. Demo seeds count up from 0, as the project's other
simulators' demos do; evaluation starts from the config's eval_seed (1,000,000), far above any seed a demo tried
(demo_seeds_tried), so a policy is never evaluated on a scene it was trained on.

Frames are stored at the cameras' native 480x640 (the paper's; training resizes them, datasets/own_data.py) as JPEG
rows (quality JPEG_QUALITY), the compressed layout ALOHA's own recorder writes: about 12 MB per episode instead of
370 MB raw (0.6 GB for the paper's 50 demos instead of 18 GB). Evaluation frames are not JPEG-compressed; at quality 95
the difference is about one intensity level on average, well below what the resize to training size averages out.

The weld that ties a gripper to its mocap body holds it 13.5 cm behind the mocap point (the XML gives the weld no
relative pose; MuJoCo 3.1.5 takes it from the model's reference configuration), so the mocap point sits between the
fingertips: waypoints below say where the fingertips go.
"""

import os
import time
from pathlib import Path

import h5py
import numpy as np

from datasets.aloha_hdf5 import episode_files, write_episode
from datasets.own_data import load_own_episodes
from datasets.worker_pool import demo_worker_pool
from env.aloha_env import AlohaSim, MAX_EPISODE_STEPS, SUCCESS_REWARD, check_task, object_pose
from env.errors import UserInputError

JPEG_QUALITY = 95
CAMERA = "top"  # the paper's single camera


def demo_seeds_tried(num_demos: int) -> int:
    """Making num_demos demos tries seeds 0, 1, ... and gives up before this one: seeds from here on are never a
    demo's, so evaluation may start here."""
    return 3 * num_demos + 10


# --------------------------------------------------------------------------------------------------
# Waypoints
# --------------------------------------------------------------------------------------------------
def rotation(axis, degrees: float) -> np.ndarray:
    """Unit quaternion [w, x, y, z] of a rotation about `axis`."""
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    half = np.radians(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * axis])


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b: rotate by b, then by a."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                     w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                     w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def rotate_vector(quat: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """`vector` (3,) rotated by `quat`."""
    rotated = quat_multiply(quat_multiply(quat, np.concatenate([[0.0], vector])), quat * [1, -1, -1, -1])
    return rotated[1:]


def interpolate(waypoints: list[tuple], step: int) -> np.ndarray:
    """Waypoints [(step, xyz, quaternion, gripper)] sorted by step -> the (8,) mocap pose + gripper at `step`,
    linear between the two surrounding waypoints (quaternions renormalised), held after the last."""
    for (t0, *a), (t1, *b) in zip(waypoints, waypoints[1:]):
        if t0 <= step <= t1:
            f = (step - t0) / (t1 - t0)
            xyz, quat, gripper = [(1 - f) * np.asarray(u, np.float64) + f * np.asarray(v, np.float64)
                                  for u, v in zip(a, b)]
            return np.concatenate([xyz, quat / np.linalg.norm(quat), [gripper]])
    _, xyz, quat, gripper = waypoints[-1]
    return np.concatenate([xyz, quat, [gripper]])


def start_mocap_poses(sim: AlohaSim) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(xyz, quaternion)] of the left and right mocap bodies that hold the grippers where they are now.

    The weld holds gripper = mocap * relpose (relpose from the model, eq_data[3:10]); inverted here, so that the
    first waypoint does not jerk the arms (gym-aloha's reset puts the mocap bodies on the grippers themselves)."""
    physics = sim.physics
    poses = []
    for side, relpose in zip(("left", "right"), physics.model.eq_data[:2, 3:10]):
        gripper_xyz = physics.named.data.xpos[f"vx300s_{side}/gripper_link"]
        gripper_quat = physics.named.data.xquat[f"vx300s_{side}/gripper_link"]
        rel_xyz, rel_quat = relpose[:3], relpose[3:]
        quat = quat_multiply(gripper_quat, rel_quat * [1, -1, -1, -1])  # gripper * relpose^-1
        xyz = gripper_xyz - rotate_vector(quat, rel_xyz)
        poses.append((xyz, quat))
    return poses


# The welds' constraint impedance. gym-aloha's (.25 .25 0.001) is so soft that under MuJoCo 3 a gripper reaching down
# to the table hangs 4 cm above its mocap target and 15 degrees off its pitch, and misses the cube; MuJoCo's default
# impedance with a narrower transition holds it within a few millimetres.
WELD_SOLIMP = [0.95, 0.99, 0.001, 0.5, 2]
MEET = np.array([0.0, 0.5, 0.25])  # where the arms meet: above the table's centre
CUBE_HALF = 0.02  # the cube's half size: its centre's height when it rests on the table (z = 0)
PEG_HALF_HEIGHT, SOCKET_HALF_HEIGHT = 0.01, 0.022  # their centres' heights at rest on the table
GRIP_ABOVE = 0.008  # the peg is gripped this far above its centre: lower, the fingertips drag on the table
SOCKET_AT = -0.06  # x of the socket's centre (the left fingertips) from MEET while inserting
INSERT_START, INSERT_END = 0.14, 0.03  # x of the peg's centre (the right fingertips) from MEET: outside, pushed in
# How much higher than the socket the right arm holds its fingertips while inserting. The peg hangs about 1 cm below
# them (gripped above its centre), the socket a few mm; 4 mm centres the peg's tip on the socket's mouth in the joint
# replay at step 300 (mean offset -0.5 mm, sd 3 mm over 20 seeds; 8 mm put it +3 mm high and 2 of 20 failed).
PEG_RAISE = 0.004
ARM_BASE = {"left": np.array([-0.469, 0.5]), "right": np.array([0.469, 0.5])}  # x, y of each arm's waist


def down(side: str, degrees: float, toward=None) -> np.ndarray:
    """Mocap quaternion of a gripper pitched `degrees` below horizontal, pointing inwards, or, given `toward` (x, y),
    turned about the vertical to point there from its arm's base (an arm reaches sideways by turning its waist).
    Both arms' mocap frames are the identity when their gripper points horizontally inwards (the weld's relpose turns
    the right one), so the right arm's pitch and heading are mirrored."""
    sign = 1 if side == "left" else -1
    heading = 0.0
    if toward is not None:
        dx, dy = sign * (np.asarray(toward)[:2] - ARM_BASE[side])
        heading = sign * np.degrees(np.arctan2(dy, dx))
    return quat_multiply(rotation([0, 0, 1], heading), rotation([0, 1, 0], sign * degrees))


def transfer_cube_waypoints(pose: np.ndarray, start: list) -> tuple[list, list]:
    """The right arm picks the cube up and carries it to the meeting point; the left arm, fingers closing vertically,
    takes it there; the right lets go and backs off."""
    cube = np.array([pose[0], pose[1], CUBE_HALF])
    (left_xyz, left_quat), (right_xyz, right_quat) = start
    pick = down("right", 60, toward=cube)
    take = quat_multiply(rotation([1, 0, 0], 90), down("left", 0))  # rolled: fingers close along z
    right = [(0, right_xyz, right_quat, 0),
             (90, cube + [0, 0, 0.08], pick, 1),  # above the cube, open
             (130, cube, pick, 1),  # fingertips around it
             (170, cube, pick, 0),  # closed
             (220, MEET, pick, 0),  # carried to the meeting point
             (310, MEET, pick, 0),
             (330, MEET, pick, 1),  # let go
             (370, MEET + [0.12, 0, 0.05], pick, 1),  # back off
             (400, MEET + [0.12, 0, 0.05], pick, 1)]
    left = [(0, left_xyz, left_quat, 0),
            (120, MEET + [-0.12, 0, -0.015], take, 1),  # waiting beside the meeting point, open
            (260, MEET + [0.015, 0, -0.015], take, 1),  # fingers around the cube's near half
            (300, MEET + [0.015, 0, -0.015], take, 0),  # closed
            (360, MEET + [-0.1, 0, -0.015], take, 0),  # pulled away with the cube
            (400, MEET + [-0.1, 0, -0.015], take, 0)]
    return left, right


def insertion_waypoints(pose: np.ndarray, start: list) -> tuple[list, list]:
    """Each arm picks up its object (right: the peg, left: the socket) with the fingers closing across it, so that
    both stay along x; both lift, meet in line above the table, and the right arm pushes the peg into the socket."""
    peg = np.array([pose[0], pose[1], PEG_HALF_HEIGHT])
    socket = np.array([pose[7], pose[8], SOCKET_HALF_HEIGHT])
    (left_xyz, left_quat), (right_xyz, right_quat) = start
    right_pick, left_pick = down("right", 60), down("left", 60)  # not turned: the fingers close along y
    right = [(0, right_xyz, right_quat, 0),
             (100, peg + [0, 0, 0.08], right_pick, 1),  # above the peg, open
             (140, peg + [0, 0, GRIP_ABOVE], right_pick, 1),  # fingertips around it
             (170, peg + [0, 0, GRIP_ABOVE], right_pick, 0),  # closing
             (200, peg + [0, 0, GRIP_ABOVE], right_pick, 0),  # the fingers close slowly (their joints' friction)
             (230, peg + [0, 0, 0.1], right_pick, 0),  # lifted
             (280, MEET + [INSERT_START, 0, PEG_RAISE], right_pick, 0),  # peg in line with the socket, its tip outside
             (380, MEET + [INSERT_END, 0, PEG_RAISE], right_pick, 0),  # pushed in
             (400, MEET + [INSERT_END, 0, PEG_RAISE], right_pick, 0)]
    left = [(0, left_xyz, left_quat, 0),
            (100, socket + [0, 0, 0.08], left_pick, 1),
            (140, socket, left_pick, 1),
            (170, socket, left_pick, 0),
            (200, socket, left_pick, 0),
            (230, socket + [0, 0, 0.1], left_pick, 0),
            (280, MEET + [SOCKET_AT, 0, 0], left_pick, 0),
            (400, MEET + [SOCKET_AT, 0, 0], left_pick, 0)]
    return left, right


WAYPOINTS = {"transfer_cube": transfer_cube_waypoints, "insertion": insertion_waypoints}


def end_effector_rollout(task: str, pose: np.ndarray):
    """Run the task's waypoints in the mocap task, no camera. Returns (joint commands (T, 14), rewards (T,))."""
    sim = AlohaSim(task, end_effector=True)
    sim.physics.model.eq_solimp[:2] = WELD_SOLIMP
    sim.reset(pose)
    start = start_mocap_poses(sim)
    for i, (xyz, quat) in enumerate(start):
        sim.physics.data.mocap_pos[i], sim.physics.data.mocap_quat[i] = xyz, quat
    left, right = WAYPOINTS[task](pose, start)
    commands, rewards = [], []
    for t in range(MAX_EPISODE_STEPS):
        action = np.concatenate([interpolate(left, t), interpolate(right, t)])
        rewards.append(sim.step(action))
        joints = sim.state()  # where this step took the arms: the joint command of the replay's step t
        joints[[6, 13]] = action[[7, 15]]  # the grippers: their normalised commands, not where the fingers are
        commands.append(joints)
    return np.array(commands, np.float32), np.array(rewards)


def joint_replay(task: str, pose: np.ndarray, commands: np.ndarray, record_camera: bool):
    """Replay joint commands (T, 14) in the joint-space task from the same start. Returns (states (T, 14): before
    each step, rewards (T,): after each step, frames (T, 480, 640, 3) of the top camera before each step, or None)."""
    sim = AlohaSim(task)
    sim.reset(pose)
    states, rewards, frames = [], [], []
    for command in commands:
        states.append(sim.state())
        if record_camera:
            frames.append(sim.images([CAMERA])[0].transpose(1, 2, 0))
        rewards.append(sim.step(command))
    return np.array(states), np.array(rewards), np.array(frames) if record_camera else None


# --------------------------------------------------------------------------------------------------
# Demos on disk
# --------------------------------------------------------------------------------------------------
def scripted_episode(task: str, seed: int, record_camera: bool):
    """The scripted demo of episode `seed`: (states (T, 14), actions (T, 14), frames (T, 480, 640, 3) or None,
    max reward of the joint replay)."""
    pose = object_pose(task, seed)
    commands, _ = end_effector_rollout(task, pose)
    states, rewards, frames = joint_replay(task, pose, commands, record_camera)
    return states, commands, frames, rewards.max()


def write_demo(task: str, seed: int, path: Path):
    """Render and write one demo already known to succeed (the simulation is deterministic); in a worker process."""
    states, actions, frames, max_reward = scripted_episode(task, seed, record_camera=True)
    if max_reward != SUCCESS_REWARD:
        raise RuntimeError(f"{task} seed {seed}: the replay with the camera reached reward {max_reward}, without "
                           f"it {SUCCESS_REWARD}; the simulation should be deterministic")
    tmp = path.with_suffix(".tmp")
    write_episode(tmp, states, actions, {CAMERA: frames}, jpeg_quality=JPEG_QUALITY)
    with h5py.File(tmp, "a") as file:  # where it came from, for whoever reads the file later
        file.attrs["task"], file.attrs["seed"] = task, seed
    tmp.rename(path)  # whole files only: a killed run leaves no half-written episode


def _already_written(path: Path, task: str, seed: int) -> bool:
    """True if a killed run of the same making wrote this file; a file from another task or seed stops the run."""
    if not path.exists():
        return False
    with h5py.File(path, "r") as file:
        written = (file.attrs.get("task"), file.attrs.get("seed"))
    if written != (task, seed):
        raise UserInputError(f"{path} holds {written[0]} seed {written[1]}, not {task} seed {seed}: "
                             f"write these demos to an empty folder")
    return True


def make_scripted_demos(task: str, num_demos: int, out_dir, workers: int = 1) -> dict:
    """Write num_demos successful scripted demos as out_dir/episode_<i>.hdf5 (datasets/aloha_hdf5.py's layout).

    Seeds 0, 1, ... are tried in order without the camera (under a second each) until num_demos reach
    reward 4; those are then replayed again with the top camera (the slow part, about 400 frames) and written, in
    `workers` processes. Files already there are kept (a killed run resumes). Returns made, attempted, seconds."""
    check_task(task)
    if num_demos < 1:
        raise UserInputError(f"num_demos={num_demos}: making demos needs a number >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    seeds, seed = [], 0
    while len(seeds) < num_demos:
        if seed >= demo_seeds_tried(num_demos):
            raise RuntimeError(f"{task}: only {len(seeds)} of {seed} scripted episodes reached "
                               f"reward {SUCCESS_REWARD}; {num_demos} needed")
        if scripted_episode(task, seed, record_camera=False)[3] == SUCCESS_REWARD:
            seeds.append(seed)
        seed += 1
    attempted = seed
    print(f"[aloha demos] {task}: {num_demos} of {attempted} scripted episodes reach reward {SUCCESS_REWARD}; "
          f"rendering and writing them to {out_dir} with {workers} worker(s)")
    jobs = [(task, seed, out_dir / f"episode_{i}.hdf5") for i, seed in enumerate(seeds)
            if not _already_written(out_dir / f"episode_{i}.hdf5", task, seed)]
    if workers > 1 and len(jobs) > 1:
        with demo_worker_pool(workers) as pool:
            list(pool.map(write_demo, *zip(*jobs)))
    else:
        for job in jobs:
            write_demo(*job)
    seconds = time.time() - started
    print(f"[aloha demos] wrote {len(jobs)} episode(s) in {seconds:.0f} s ({num_demos} in {out_dir})")
    return {"made": num_demos, "attempted": attempted, "seconds": seconds}


def check_demo_cameras(cameras: list[str]):
    """The scripted demos record the top camera alone; say so before any demo is made or folder written."""
    others = [name for name in cameras if name != CAMERA]
    if others:
        raise UserInputError(f"cameras: the scripted ALOHA demos record only '{CAMERA}', not {', '.join(others)}; "
                             f"expected cameras: [{CAMERA}] or []")


def load_configured_demos(cfg, repo_root: Path) -> tuple[list[dict], list[int]]:
    """The demos an ALOHA run's config names (utils/schema.py's AlohaRun): the first num_demos (-1: every one there)
    of <demo_dir>/<env_id>/ (relative paths from repo_root), made first when the folder holds fewer (in demo_workers
    processes, 0: one per CPU core), and read back through the own-data ALOHA HDF5 reader (datasets/own_data.py:
    every file checked, frames resized to image_size, held in RAM or read per batch as cfg.frames says; one format,
    one reader). Returns (episodes, the seed each demo was made from)."""
    task, num_demos = cfg.env_id, cfg.num_demos
    folder = Path(cfg.demo_dir) / task
    folder = folder if folder.is_absolute() else repo_root / folder
    have = len(episode_files(folder)) if folder.is_dir() else 0
    if num_demos == -1 and have == 0:
        raise UserInputError(f"num_demos=-1 reads every demo in {folder}, which holds none; set num_demos=<n> to "
                             f"make them")
    if num_demos > have:
        print(f"[demos] {folder} holds {have} of {num_demos} {task} demos: making the rest with the scripted policy")
        make_scripted_demos(task, num_demos, folder, cfg.demo_workers or os.cpu_count() or 1)
    episodes, _ = load_own_episodes(folder, "aloha_hdf5", ["observations/qpos"], "action", list(cfg.cameras),
                                    cfg.image_size, num_demos, frames=cfg.frames)
    seeds = []
    for path in episode_files(folder)[:len(episodes)]:
        with h5py.File(path, "r") as file:
            made = (file.attrs.get("task"), file.attrs.get("seed"))
        if made[0] != task:  # another task's demos, or a recording not made here (no task and seed attributes)
            raise UserInputError(f"{path} is not a scripted {task} demo (task attribute {made[0]!r}): point demo_dir "
                                 f"at another folder")
        seeds.append(int(made[1]))
    return episodes, seeds
