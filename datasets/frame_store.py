"""Where the replay buffer's camera frames come from: held in RAM, or read from the recording batch by batch.

    FramesInRam       every frame decoded and resized once, all held in one (N, cams, C, H, W) uint8 tensor:
                      fast to index, but RAM grows with the dataset (50 ALOHA episodes at 120x160: 4.3 GiB)
    FramesOnTheFly    RAM holds only which file and row each step's frames are in; every batch reads its frames
                      from the ALOHA-layout HDF5 files (datasets/aloha_hdf5.py), decodes them and resizes them with
                      env/images.py's resize_frames, the resize the in-RAM reader and deployment apply, so the
                      pixels are the same as in RAM. Under a DataLoader with workers the decoding runs there.

Both are indexed by flat step indices (B, F) and return the (B, F, cams, C, H, W) uint8 frames of those steps.
An episode's "images" entry says which: an array (in RAM), or a RecordedFrames saying where its frames are
(datasets/own_data.py makes those when data.frames resolves to disk).
"""

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from datasets.aloha_hdf5 import read_frame
from env.errors import UserInputError
from env.images import resize_frames


@dataclass
class RecordedFrames:
    """Where one episode's frames are: it stands in for the episode's (T, cams, 3, H, W) images array."""

    path: Path  # an ALOHA-layout episode_<i>.hdf5
    cameras: list[str]  # in the order the policy takes them
    num_steps: int
    size: tuple[int, int]  # (height, width) every frame is resized to
    signature: tuple[int, int]  # the file's (size in bytes, mtime in ns) when it was scanned

    @property
    def shape(self) -> tuple:
        return (self.num_steps, len(self.cameras), 3, *self.size)

    def __len__(self):
        return self.num_steps


class FramesInRam:
    """All episodes' frames in one (N, cams, C, H, W) uint8 tensor, held once: each episode's array is copied in
    and its dict then points at its slice of the buffer, so the episode's own array is freed (when nothing else
    holds it) before the next one is copied. np.concatenate would hold every frame twice at its peak."""

    def __init__(self, episodes: list[dict]):
        total = sum(len(episode["images"]) for episode in episodes)
        self.images = torch.empty((total, *episodes[0]["images"].shape[1:]), dtype=torch.uint8)
        start = 0
        for episode in episodes:
            end = start + len(episode["images"])
            self.images[start:end] = torch.from_numpy(episode["images"])
            episode["images"] = self.images[start:end].numpy()
            start = end

    def __getitem__(self, steps: torch.Tensor) -> torch.Tensor:
        return self.images[steps]  # (B, F) -> (B, F, cams, C, H, W)


class FramesOnTheFly:
    """Frames read from the episode files when a batch asks for them; RAM holds two numbers per step.

    HDF5 handles are opened on first use in each process (a DataLoader worker opens its own: a handle is not
    shared across fork) and at most MAX_OPEN_FILES stay open, the least recently used closed first. A file is
    checked against its scanned size and modification time whenever it is opened: an episode re-recorded or
    deleted mid-run stops the run with one line naming it, instead of training on other frames than its actions.
    """

    MAX_OPEN_FILES = 32  # opening one costs about 0.4 ms, decoding its 4 cameras' JPEGs about 5 ms

    def __init__(self, episodes: list[RecordedFrames]):
        self.episodes = episodes
        lengths = np.array([len(episode) for episode in episodes])
        self.step_episode = np.repeat(np.arange(len(episodes)), lengths)  # (N,) the episode of each flat step
        self.step_row = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (N,) its row
        self.open_files, self.opened_by = OrderedDict(), None

    def __getitem__(self, steps: torch.Tensor) -> torch.Tensor:
        unique, inverse = np.unique(steps.numpy(), return_inverse=True)  # frame_stack > 1 repeats steps
        frames = np.empty((len(unique), *self.episodes[0].shape[1:]), np.uint8)  # (U, cams, 3, H, W)
        for i, step in enumerate(unique):
            frames[i] = self._read(self.episodes[self.step_episode[step]], self.step_row[step])
        return torch.from_numpy(frames[inverse.reshape(steps.shape)])  # (B, F, cams, 3, H, W)

    def _read(self, episode: RecordedFrames, row: int) -> np.ndarray:
        """(cams, 3, H, W) uint8: one step of every camera, each resized on its own as the in-RAM reader does."""
        file = self._file(episode)
        try:
            frames = [read_frame(file, episode.path, camera, row) for camera in episode.cameras]
        except (OSError, KeyError) as error:
            raise UserInputError(f"{episode.path}: unreadable while training reads its frames ({error}); expected "
                                 f"the file as it was when the run started") from error
        return np.stack([resize_frames(frame, episode.size).transpose(2, 0, 1) for frame in frames])

    def _file(self, episode: RecordedFrames) -> h5py.File:
        if self.opened_by != os.getpid():  # a fresh worker process: the parent's handles stay the parent's
            self.open_files, self.opened_by = OrderedDict(), os.getpid()
        if episode.path in self.open_files:
            self.open_files.move_to_end(episode.path)
            return self.open_files[episode.path]
        try:
            stat = episode.path.stat()
        except FileNotFoundError:
            raise UserInputError(f"{episode.path}: removed while training reads its frames (data.frames=disk reads "
                                 f"them from the recording); put it back and resume the run") from None
        if (stat.st_size, stat.st_mtime_ns) != episode.signature:
            raise UserInputError(f"{episode.path}: changed since the run scanned it (size or modification time); "
                                 f"its frames may no longer match its actions, so start a new run on the new files")
        file = h5py.File(episode.path, "r", rdcc_nbytes=0)  # no chunk cache: rows are read once each
        self.open_files[episode.path] = file
        if len(self.open_files) > self.MAX_OPEN_FILES:
            self.open_files.popitem(last=False)[1].close()
        return file


def frames_of(episodes: list[dict]) -> FramesInRam | FramesOnTheFly | None:
    """The frames of these episodes: None without cameras, read on the fly when their "images" are
    RecordedFrames, else held in RAM."""
    if "images" not in episodes[0]:
        return None
    if isinstance(episodes[0]["images"], RecordedFrames):
        return FramesOnTheFly([episode["images"] for episode in episodes])
    return FramesInRam(episodes)


def frames_size(num_frames: int, num_cameras: int, height: int, width: int, channels: int = 3) -> tuple[int, str]:
    """(bytes, the "[data] frames:" line's description) of uint8 frames held in RAM."""
    size = num_frames * num_cameras * channels * height * width
    return size, f"{num_frames} frames x {num_cameras} camera(s) at {height}x{width} = {size / 2**30:.2f} GiB"


def report_frames_in_ram(episodes: list[dict], source: str):
    """The "[data] frames:" line for demos that are always held in RAM (a simulator's: small enough, and read per
    batch only from ALOHA-layout HDF5 files), as datasets/own_data.py's choose_frames says it for recordings."""
    if not episodes or "images" not in episodes[0]:
        return
    _, cameras, channels, height, width = episodes[0]["images"].shape
    _, what = frames_size(sum(len(episode["images"]) for episode in episodes), cameras, height, width, channels)
    print(f"[data] frames: in RAM, {what} ({source} demos are always held in RAM)")


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
