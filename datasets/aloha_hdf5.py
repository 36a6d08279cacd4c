"""The original ACT / ALOHA recorder's layout (tonyzhaozh/act, MarkFzp/act-plus-plus): one file per episode.

    episode_<i>.hdf5
        attribute sim                  True for simulated episodes, False for real ones
        /observations/qpos             (T, 14)  joint positions: the state (default)
        /observations/qvel             (T, 14)  joint velocities (optional; add it to the state in the config)
        /observations/images/<camera>  (T, 480, 640, 3) uint8 frames, or (T, L) uint8: each row one JPEG padded
                                       to the longest (ALOHA's recorder with compression, which also writes
                                       /compress_len; a JPEG ends at its own end marker, so the padding is
                                       simply ignored by the decoder)
        /action                        (T, 14)  the commanded joint positions
Keys are configurable (configs/ACT_dataset_config.yaml, data.aloha_hdf5). Files are read in the order of i.
"""

import re
from pathlib import Path

import cv2
import h5py
import numpy as np

from env.errors import UserInputError

IMAGES_GROUP = "observations/images"
BLOCK = 32  # frames read at a time: 32 x 480 x 640 x 3 = 28 MiB, whatever the episode length


def episode_files(folder: Path) -> list[Path]:
    """episode_<i>.hdf5 files sorted by i (episode_10 after episode_9)."""
    numbered = [(int(match.group(1)), path) for path in folder.glob("episode_*.hdf5")
                if (match := re.fullmatch(r"episode_(\d+)\.hdf5", path.name))]
    return [path for _, path in sorted(numbered)]


def _read_matrix(file: h5py.File, path: Path, key: str, what: str) -> np.ndarray:
    if key not in file:
        raise UserInputError(f"{path}: no dataset '/{key}'; expected {what}")
    values = file[key]
    if not isinstance(values, h5py.Dataset) or values.ndim not in (1, 2) or values.dtype.kind not in "fiub":
        raise UserInputError(f"{path}: '/{key}' is {getattr(values, 'shape', 'a group')}; expected {what}")
    values = np.asarray(values, dtype=np.float32)
    return values.reshape(len(values), -1)


def _decode_jpeg(row: np.ndarray, path: Path, camera: str, step: int) -> np.ndarray:
    frame = cv2.imdecode(row, cv2.IMREAD_COLOR)  # the channel order it was encoded with (cv2 both ways)
    if frame is None:
        raise UserInputError(f"{path}: /{IMAGES_GROUP}/{camera} step {step} is not a decodable JPEG row; expected "
                             f"(T, H, W, 3) uint8 frames or JPEG bytes per row")
    return frame


def _frame_shape(images, path: Path, camera: str) -> tuple:
    if not isinstance(images, h5py.Dataset):
        raise UserInputError(f"{path}: /{IMAGES_GROUP}/{camera} is a group; expected one dataset per camera")
    if images.ndim == 4 and images.dtype == np.uint8:
        return tuple(images.shape[1:])
    if images.ndim == 2 and images.dtype == np.uint8 and len(images):
        return _decode_jpeg(images[0], path, camera, 0).shape
    raise UserInputError(f"{path}: /{IMAGES_GROUP}/{camera} is {images.dtype} {images.shape}; expected (T, H, W, 3) "
                         f"uint8 frames or (T, L) uint8 JPEG rows")


def scan(folder: Path, state_keys: list[str], action_key: str, num_episodes: int = -1,
         shift_real_actions: bool = True) -> list[dict]:
    """First pass: state, actions and camera shapes of every episode, no images.

    shift_real_actions: for sim=False episodes, step t is paired with action t-1 (the first action repeats at
    t = 0), as the original ACT loader does for real ALOHA data ("to make timesteps more aligned").
    """
    files = episode_files(folder)
    if not files:
        raise UserInputError(f"{folder}: no episode_<i>.hdf5 files; expected the ALOHA layout (datasets/aloha_hdf5.py)")
    episodes = []
    for path in files[:num_episodes] if num_episodes > 0 else files:
        with h5py.File(path, "r") as file:
            actions = _read_matrix(file, path, action_key, "(T, A) actions")
            states = [_read_matrix(file, path, key, "(T, S) state values") for key in state_keys]
            for key, values in zip(state_keys, states):
                if len(values) != len(actions):
                    raise UserInputError(f"{path}: /{key} has {len(values)} steps, /{action_key} {len(actions)}; "
                                         f"expected one of each per step")
            if shift_real_actions and not file.attrs.get("sim", True):
                actions = np.concatenate([actions[:1], actions[:-1]])
            group = file.get(IMAGES_GROUP)
            camera_shapes = {name: _frame_shape(images, path, name) for name, images in (group or {}).items()}
            for name, images in (group or {}).items():
                if len(images) != len(actions):
                    raise UserInputError(f"{path}: /{IMAGES_GROUP}/{name} has {len(images)} frames, "
                                         f"/{action_key} {len(actions)} steps; expected one frame per step")
        episodes.append({"source": str(path), "state": np.concatenate(states, axis=1), "actions": actions,
                         "camera_shapes": camera_shapes})
    return episodes


def read_frame(file: h5py.File, path: Path, camera: str, step: int) -> np.ndarray:
    """One step of one camera, (H, W, 3) uint8: a raw frame as stored, a JPEG row decoded (datasets/frame_store.py
    reads a batch's frames this way; read_frames below reads whole episodes in blocks, to the same pixels)."""
    images = file[IMAGES_GROUP][camera]
    return _decode_jpeg(images[step], path, camera, step) if images.ndim == 2 else images[step]


def read_frames(folder: Path, episodes: list[dict], cameras: list[str]):
    """Second pass: yields (episode index, camera index, first step, frames (n, H, W, 3) uint8), BLOCK steps at
    a time, so that only a block is ever held at the recorded resolution."""
    for index, episode in enumerate(episodes):
        path = Path(episode["source"])
        with h5py.File(path, "r") as file:
            for camera, name in enumerate(cameras):
                images = file[IMAGES_GROUP][name]
                for first in range(0, len(images), BLOCK):
                    block = images[first:first + BLOCK]
                    if images.ndim == 2:
                        block = np.stack([_decode_jpeg(row, path, name, first + i) for i, row in enumerate(block)])
                    yield index, camera, first, block


def write_episode(path, qpos: np.ndarray, actions: np.ndarray, images: dict, qvel: np.ndarray | None = None,
                  sim: bool = True, jpeg_quality: int | None = None):
    """Write one episode in this layout, e.g. to convert your own recordings: qpos (T, S), actions (T, A),
    images {camera: (T, H, W, 3) uint8}. jpeg_quality (1-100): store JPEG rows with compress_len as ALOHA's
    recorder does, else raw frames."""
    with h5py.File(path, "w") as file:
        file.attrs["sim"] = sim
        file.attrs["compress"] = jpeg_quality is not None
        file["observations/qpos"] = np.asarray(qpos, np.float32)
        if qvel is not None:
            file["observations/qvel"] = np.asarray(qvel, np.float32)
        file["action"] = np.asarray(actions, np.float32)
        lengths = []
        for name, frames in images.items():
            if jpeg_quality is None:
                file.create_dataset(f"{IMAGES_GROUP}/{name}", data=frames, chunks=(1, *frames.shape[1:]))
                continue
            encoded = [cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1] for frame in frames]
            rows = np.zeros((len(encoded), max(len(row) for row in encoded)), np.uint8)  # zero-padded to one length
            for row, jpeg in zip(rows, encoded):
                row[:len(jpeg)] = jpeg
            file[f"{IMAGES_GROUP}/{name}"] = rows
            lengths.append([len(jpeg) for jpeg in encoded])
        if lengths:
            file["compress_len"] = np.asarray(lengths, np.float32)  # (cameras, T), as ALOHA's recorder writes it
