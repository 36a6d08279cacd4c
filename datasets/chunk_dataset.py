"""Demonstrations -> the offline chunk dataset -> batches of (observation, action chunk, is_pad).

Every demo source (ManiSkill HDF5, BiGym DemoStore, your own recordings) is first turned into a list of episodes
    {"state": (T, S) float32, "actions": (T, A) float32, optional "images": (T, N, C, H, W) uint8}
and from there on everything is shared. States and actions are held in RAM; the frames too, unless an episode's
"images" is a RecordedFrames, which says where to read them per batch (datasets/frame_store.py). Sample index t of an episode of length T gives
    state   (F, S)        observations t-F+1..t (F = frame_stack; clamped at the episode start)
    images  (F, N, C, H, W) uint8, same frames (kept uint8 until the model casts them)
    actions (K, A)        actions t..t+K-1; past the episode end they are padded:
                              absolute actions repeat the last action, delta actions are zeros
    is_pad  (K,)          True on padded steps (masked out of the loss)
"""

import contextlib
import signal

import numpy as np
import torch

from datasets.frame_store import frames_of

ACTION_TYPES = ("absolute", "delta")


def infer_action_type(control_mode: str) -> str:
    """ManiSkill/BiGym controller name -> how to pad chunks. 'delta' in the name means relative targets."""
    return "delta" if "delta" in control_mode else "absolute"


def split_episodes(num_episodes: int, val_fraction: float, seed: int):
    """Whole-episode train/validation split, fixed by the seed. Returns (train_ids, val_ids), sorted."""
    order = np.random.default_rng(seed).permutation(num_episodes)
    num_val = int(round(num_episodes * val_fraction))
    if val_fraction > 0 and num_val == 0 and num_episodes > 1:
        num_val = 1
    if num_val >= num_episodes:
        raise ValueError(f"val_fraction={val_fraction} leaves no training episodes out of {num_episodes}")
    return sorted(order[num_val:].tolist()), sorted(order[:num_val].tolist())


def compute_stats(episodes: list[dict], action_normalization: str = "mean_std", min_std: float = 1e-2) -> dict:
    """Normalisation statistics from the training episodes: the model sees (x - mean) / std.

    States always use mean/std. Actions use mean/std ("mean_std") or their range ("min_max", the BiGym
    paper's baseline): then "action_mean" is the range's centre and "action_std" its half-width, so the
    same formula maps every action dimension onto [-1, 1]. Scales are floored so constant dimensions do
    not blow up.
    """
    states = np.concatenate([ep["state"] for ep in episodes])
    actions = np.concatenate([ep["actions"] for ep in episodes])
    if action_normalization == "mean_std":
        action_center, action_scale = actions.mean(0), actions.std(0)
    elif action_normalization == "min_max":
        low, high = actions.min(0), actions.max(0)
        action_center, action_scale = (high + low) / 2, (high - low) / 2
    else:
        raise ValueError(f"action_normalization must be 'mean_std' or 'min_max', got '{action_normalization}'")
    return {
        "state_mean": states.mean(0), "state_std": np.maximum(states.std(0), min_std),
        "action_mean": action_center, "action_std": np.maximum(action_scale, min_std),
    }


class ChunkDataset(torch.utils.data.Dataset):
    """The replay buffer. Indexed by an array of sample indices (a whole batch at once, vectorised)."""

    def __init__(self, episodes: list[dict], chunk_size: int, action_type: str, frame_stack: int = 1):
        if action_type not in ACTION_TYPES:
            raise ValueError(f"action_type must be one of {ACTION_TYPES}, got '{action_type}'")
        if not episodes:
            raise ValueError("ChunkDataset needs at least one episode")
        self.chunk_size, self.action_type, self.frame_stack = chunk_size, action_type, frame_stack
        lengths = np.array([len(ep["actions"]) for ep in episodes])
        for i, ep in enumerate(episodes):
            if len(ep["state"]) != lengths[i] or ("images" in ep and len(ep["images"]) != lengths[i]):
                raise ValueError(f"episode {i}: state/images/actions lengths differ")
        self.states = torch.from_numpy(np.concatenate([ep["state"] for ep in episodes])).float()  # (N, S)
        self.actions = torch.from_numpy(np.concatenate([ep["actions"] for ep in episodes])).float()  # (N, A)
        self.frames = frames_of(episodes)  # frames[(B, F) steps] -> (B, F, cams, C, H, W) uint8; None: no cameras
        # For every flat step: where its episode starts and its last step (both flat indices).
        ends = np.cumsum(lengths)
        starts = ends - lengths
        self.episode_start = torch.from_numpy(np.repeat(starts, lengths))
        self.episode_last = torch.from_numpy(np.repeat(ends - 1, lengths))

    def __len__(self):
        return len(self.actions)

    def __getitem__(self, index) -> dict:
        index = torch.as_tensor(index).reshape(-1)  # (B,)
        start, last = self.episode_start[index], self.episode_last[index]

        frame_offsets = torch.arange(-self.frame_stack + 1, 1)  # (F,), e.g. [-2, -1, 0]
        frame_idx = torch.maximum(index[:, None] + frame_offsets, start[:, None])  # (B, F)
        chunk_idx = index[:, None] + torch.arange(self.chunk_size)  # (B, K)
        is_pad = chunk_idx > last[:, None]  # (B, K)
        # Clamping to the last step repeats the final action, which is the absolute-action padding.
        actions = self.actions[torch.minimum(chunk_idx, last[:, None])]  # (B, K, A)
        if self.action_type == "delta":
            actions = actions.masked_fill(is_pad[..., None], 0.0)
        batch = {"state": self.states[frame_idx], "actions": actions, "is_pad": is_pad}  # state: (B, F, S)
        if self.frames is not None:
            batch["images"] = self.frames[frame_idx]  # (B, F, N, C, H, W) uint8
        return batch


class RandomBatchSampler(torch.utils.data.Sampler):
    """Endless uniformly random batches of indices; batch i depends only on (seed, i).

    That makes the data stream identical for any num_workers and lets a resumed run continue with
    exactly the batches it would have seen (start_iter). Under torchrun the global batch of iteration i is
    the same draw, and rank r takes its r-th contiguous slice of batch_size / world_size samples.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_iter: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.dataset_size, self.batch_size, self.seed, self.start_iter = dataset_size, batch_size, seed, start_iter
        self.rank_slice = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)

    def __iter__(self):
        iteration = self.start_iter
        while True:
            rng = np.random.default_rng([self.seed, iteration])
            yield rng.integers(0, self.dataset_size, self.batch_size)[self.rank_slice]
            iteration += 1


def make_train_loader(dataset: ChunkDataset, batch_size: int, seed: int, num_workers: int, start_iter: int = 0,
                      rank: int = 0, world_size: int = 1):
    """batch_size is the global batch; each of world_size ranks loads its share."""
    sampler = RandomBatchSampler(len(dataset), batch_size, seed, start_iter, rank, world_size)
    # batch_size=None: the sampler yields whole index arrays and the dataset gathers them in one go.
    # generator: the loader draws its worker base seed from this one, not from the global random state
    # (a draw there would shift every dropout mask after a resume).
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
                                       persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
                                       generator=torch.Generator().manual_seed(seed),
                                       worker_init_fn=_leave_stop_signals_to_the_main_process)


@contextlib.contextmanager
def training_batches(dataset: ChunkDataset, batch_size: int, seed: int, num_workers: int, start_iter: int = 0,
                     rank: int = 0, world_size: int = 1):
    """make_train_loader's endless stream of batches, for the training loop. On leaving (the run's end, a stop
    signal, an error) its worker processes end at once: they ignore stop signals, and the interpreter's exit, which
    ends leftover daemon processes with a SIGTERM, would wait for them forever."""
    batches = iter(make_train_loader(dataset, batch_size, seed, num_workers, start_iter, rank, world_size))
    try:
        yield batches
    finally:
        if num_workers > 0:
            batches._shutdown_workers()  # what torch does when the loader is garbage-collected, done now


def _leave_stop_signals_to_the_main_process(worker_id: int):
    """Ctrl-C and a scheduler's SIGTERM reach every process of the group. A worker killed by one makes the main
    process fail at once ("DataLoader worker ... is killed by signal") instead of finishing its step and saving
    last.pt (utils/stop_signals.py); so workers ignore both, and end when the main process does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def iterate_in_order(dataset: ChunkDataset, batch_size: int, rank: int = 0, world_size: int = 1):
    """Every sample once, in order (validation); under torchrun rank r takes samples r, r + world_size, ..."""
    indices = np.arange(rank, len(dataset), world_size)
    for begin in range(0, len(indices), batch_size):
        yield dataset[indices[begin:begin + batch_size]]
