"""Your own robot's recordings -> the replay buffer's episodes, with no simulator.

Two layouts are read, chosen by what the folder holds (or forced with the config's data.format):
    aloha_hdf5  the original ACT / ALOHA recorder: one episode_<i>.hdf5 per episode    (datasets/aloha_hdf5.py)
    lerobot     a LeRobotDataset v3.0 folder: meta/info.json, parquet frames, mp4 videos (datasets/lerobot_v3.py)

Reading happens in two passes. The first reads every episode's state and actions (small) and what cameras it
has and at what size, and checks them all: a mistake in episode 49 stops the run before any image is decoded,
with one line naming the file, the key (and the step) and what was expected. Then the frames take one of two
paths (data.frames; the log's "[data] frames:" line says which and why):
    ram   the second pass decodes the images and resizes every frame to the training size as it is read, so RAM
          holds frames x cameras x 3 x height x width bytes (50 episodes x 400 steps x 4 cameras at 120x160:
          4.3 GiB), never the recording's full resolution
    disk  (ALOHA HDF5 only) nothing is decoded now: each episode gets a RecordedFrames (datasets/frame_store.py)
          and training reads, decodes and resizes a batch's frames from the files when it draws the batch
    auto  ram when the frames take at most half the available memory, else disk
The result is the replay buffer's episode format (datasets/chunk_dataset.py):
    {"state": (T, S) float32, "actions": (T, A) float32, optional "images": (T, N, 3, H, W) uint8 or RecordedFrames}
"""

from pathlib import Path

import numpy as np

from datasets import aloha_hdf5, lerobot_v3
from datasets.frame_store import RecordedFrames, available_memory, frames_size
from env.errors import UserInputError, did_you_mean
from env.images import resize_frames

FORMATS = ("aloha_hdf5", "lerobot")


def detect_format(folder: Path, requested: str = "auto") -> str:
    """The reader for `folder`: `requested` unless it is "auto", else the one whose files the folder holds."""
    if requested != "auto":
        if requested not in FORMATS:
            raise UserInputError(f"data.format: unknown format '{requested}'; expected auto or one of "
                                 f"{', '.join(FORMATS)}." + did_you_mean(requested, FORMATS))
        return requested
    if not folder.is_dir():
        raise UserInputError(f"data.path: {folder} is not a folder; expected a dataset folder")
    if (folder / "meta" / "info.json").is_file():
        return "lerobot"
    if aloha_hdf5.episode_files(folder):
        return "aloha_hdf5"
    found = sorted(path.name for path in folder.iterdir())
    what = f"it holds {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}" if found else "it is empty"
    raise UserInputError(f"{folder}: no episode_<i>.hdf5 files (ALOHA layout) and no meta/info.json (LeRobot "
                         f"v3.0), {what}; expected one of the two (or set data.format)")


def check_finite(values: np.ndarray, source: str, key: str):
    """Stop at the first NaN or inf of a (T, D) array, naming its step."""
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        step, dim = bad[0]
        raise UserInputError(f"{source}: {key} step {step} (dimension {dim}) is {values[step, dim]}; "
                             f"expected finite numbers")


def _check_episodes(episodes: list[dict], cameras: list[str] | None, state_name: str, action_name: str) -> list[str]:
    """Every episode alike: the same state and action sizes, the same cameras at the same image shape, finite
    numbers. Returns the cameras to read: `cameras`, or all the first episode has (sorted) when None."""
    first = episodes[0]
    chosen = sorted(first["camera_shapes"]) if cameras is None else list(cameras)
    for episode in episodes:
        source = episode["source"]
        for key, name in (("state", state_name), ("actions", action_name)):
            check_finite(episode[key], source, name)
            if episode[key].shape[1] != first[key].shape[1]:
                raise UserInputError(f"{source}: {name} has {episode[key].shape[1]} numbers per step, "
                                     f"{first['source']} has {first[key].shape[1]}; every episode needs the same")
        shapes = episode["camera_shapes"]
        if cameras is None and sorted(shapes) != chosen:
            raise UserInputError(f"{source}: cameras {sorted(shapes)}, but {first['source']} has {chosen}; every "
                                 f"episode needs the same cameras (or list the ones to use in the config)")
        for name in chosen:
            if name not in shapes:
                raise UserInputError(f"{source}: no camera '{name}' (it has: {', '.join(sorted(shapes)) or 'none'})."
                                     + did_you_mean(name, shapes))
            if shapes[name] != first["camera_shapes"][name]:
                raise UserInputError(f"{source}: camera '{name}' has frames of shape {shapes[name]}, "
                                     f"{first['source']} has {first['camera_shapes'][name]}; every episode needs "
                                     f"the same image shape")
            if shapes[name][2] != 3:
                raise UserInputError(f"{source}: camera '{name}' has frames of shape {shapes[name]}; expected RGB "
                                     f"frames (H, W, 3)")
    return chosen


def choose_frames(requested: str, data_format: str, num_frames: int, num_cameras: int, height: int, width: int,
                  folder: Path) -> str:
    """Where the frames live while training: "ram" (decoded once and held) or "disk" (read from the files per
    batch). auto: RAM when they take at most half the available memory (the training step and the system need the
    rest), else disk; a LeRobot dataset's mp4 videos are only read into RAM (a random frame of an mp4 is decoded
    from its last keyframe on)."""
    if requested == "disk" and data_format != "aloha_hdf5":
        raise UserInputError(f"data.frames=disk: {folder} is a LeRobot dataset, whose mp4 videos are only read into "
                             f"RAM (a random mp4 frame is decoded from its last keyframe on); expected data.frames="
                             f"auto or ram, or the ALOHA HDF5 layout (datasets/aloha_hdf5.py's write_episode)")
    needed, what = frames_size(num_frames, num_cameras, height, width)
    available = available_memory()
    free = f"{available / 2**30:.1f} GiB available" if available is not None else "available memory unknown"
    fits = available is None or needed <= available / 2
    if requested == "disk" or (requested == "auto" and not fits and data_format == "aloha_hdf5"):
        why = "as asked" if requested == "disk" else f"more than half of the {free}"
        print(f"[data] frames: read from the files per batch, none held in RAM ({what}: {why}; data.frames="
              f"{requested})")
        return "disk"
    print(f"[data] frames: in RAM, {what} ({free}; data.frames={requested})")
    if available is not None and needed > 0.8 * available:
        on_the_fly = " or set data.frames=disk (read per batch, none held)" if data_format == "aloha_hdf5" else ""
        raise UserInputError(f"{folder}: the images at {height}x{width} need {needed / 2**30:.1f} GiB of RAM, "
                             f"{free}; lower data.image_size (e.g. [{height // 2}, {width // 2}]) or "
                             f"data.num_episodes, list fewer cameras{on_the_fly}")
    return "ram"


def load_own_episodes(folder, data_format: str, state_keys: list[str], action_key: str, cameras: list[str] | None,
                      image_size, num_episodes: int = -1, shift_real_actions: bool = True,
                      only: int | None = None, frames: str = "ram") -> tuple[list[dict], list[str]]:
    """Read and check a dataset folder of a known format (detect_format). Returns (episodes, the cameras read,
    in order).

    state_keys are concatenated into the state; cameras None: every camera the episodes have, [] none.
    image_size [h, w] (None: keep the recorded size). num_episodes -1: all, else the first ones.
    shift_real_actions: ALOHA files with attribute sim=False pair step t with action t-1 (aloha_hdf5.py).
    only: read the images of this one episode (all are checked) and return it alone (scripts/plot_dataset.py).
    frames: auto | ram | disk, where the frames live while training (choose_frames).
    """
    folder = Path(folder)
    if data_format == "aloha_hdf5":
        reader = aloha_hdf5
        episodes = aloha_hdf5.scan(folder, state_keys, action_key, num_episodes, shift_real_actions)
        state_name, action_name = "+".join(f"/{key}" for key in state_keys), f"/{action_key}"
    else:
        reader = lerobot_v3
        episodes = lerobot_v3.scan(folder, state_keys, action_key, cameras, num_episodes)
        state_name, action_name = "+".join(state_keys), action_key
    cameras = _check_episodes(episodes, cameras, state_name, action_name)
    print(f"[data] {folder} ({data_format}): {len(episodes)} episodes, "
          f"{sum(len(episode['actions']) for episode in episodes)} steps, state {episodes[0]['state'].shape[1]} + "
          f"action {episodes[0]['actions'].shape[1]} numbers per step, cameras {cameras or 'none'}")
    if only is not None:
        if only >= len(episodes):
            raise UserInputError(f"{folder}: episode {only} asked for; the dataset has {len(episodes)} (0 to "
                                 f"{len(episodes) - 1})")
        episodes = [episodes[only]]
    num_frames = sum(len(episode["actions"]) for episode in episodes)
    if cameras:
        native_shape = episodes[0]["camera_shapes"][cameras[0]]
        height, width = image_size if image_size is not None else native_shape[:2]
        if choose_frames(frames, data_format, num_frames, len(cameras), height, width, folder) == "disk":
            for episode in episodes:  # where its frames are; training reads them per batch (datasets/frame_store.py)
                path = Path(episode["source"])
                stat = path.stat()
                episode["images"] = RecordedFrames(path, cameras, len(episode["actions"]), (height, width),
                                                   (stat.st_size, stat.st_mtime_ns))
        else:
            for episode in episodes:
                episode["images"] = np.empty((len(episode["actions"]), len(cameras), 3, height, width), np.uint8)
            # Frames arrive in blocks (a few steps of one camera of one episode) and are resized on arrival
            # (env/images.py: the same resize utils/deploy.py applies to live camera frames).
            for index, camera, first_step, block in reader.read_frames(folder, episodes, cameras):
                resized = resize_frames(block, (height, width))  # (n, h, w, 3)
                episodes[index]["images"][first_step:first_step + len(block), camera] = resized.transpose(0, 3, 1, 2)
    return [{key: episode[key] for key in ("state", "actions", "images") if key in episode}
            for episode in episodes], cameras


def read_dataset(data, folder: Path, only: int | None = None) -> tuple[list[dict], list[str], str]:
    """The episodes a config's `data:` section (utils/schema.py's DataConfig) describes, read from `folder` (its
    data.path, resolved). Returns (episodes, the cameras read in order, the format read)."""
    data_format = detect_format(folder, data.format)
    keys = getattr(data, data_format)
    episodes, cameras = load_own_episodes(folder, data_format, keys.state, keys.action, keys.cameras, data.image_size,
                                          data.num_episodes, data.aloha_hdf5.shift_real_actions, only,
                                          "ram" if only is not None else data.frames)  # one episode to look at
    return episodes, cameras, data_format
