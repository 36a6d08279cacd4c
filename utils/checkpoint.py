"""Checkpoints and run folders: files that never run code when loaded, writes that never leave half a file.

- `load_checkpoint(path)` reads a training checkpoint (.pt) with torch.load(weights_only=True): tensors and
  plain Python values only, so a crafted file cannot run code. An exported policy (safetensors + JSON, from
  `export_policy`) loads through the same call, or through `load_exported_policy(folder)`.
- `save_checkpoint` writes to a temp file in the same folder, then renames it atomically: a kill or a full disk
  leaves the previous file intact, and a failed write removes its temp file and says how much room is left.
- `check_writable`, `check_room_for_checkpoints` and `claim_run_folder` find unusable folders before work starts.
- `policy_from_checkpoint` rebuilds the saved policy (models/policy.py's build_policy) with its weights.
"""

import io
import json
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from env.errors import UserInputError
from models.config import ModelConfig
from models.policy import ACTPolicy, build_policy

# What every checkpoint holds, what resuming also needs, and the shape facts that rebuild the model.
REQUIRED_KEYS = ("policy", "config", "shape_meta", "iteration", "run_name")
TRAINING_KEYS = ("optimizer", "rng")
SHAPE_KEYS = ("state_dim", "action_dim", "num_cameras", "image_channels")

# Checkpoints written before random states were stored as tensors hold numpy's state as a uint32 numpy array.
# These names rebuild such an array and nothing else, so those files still load without running code.
_LEGACY_NUMPY_GLOBALS = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]

EXPORT_FORMAT = "act_implementation.policy.v1"
EXPORT_WEIGHTS, EXPORT_META = "policy.safetensors", "policy.json"


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def _free_space(folder: Path) -> str:
    while not folder.exists():  # a folder that could not be made: its nearest existing parent's disk
        folder = folder.parent
    return _mib(shutil.disk_usage(folder).free)


def _write_atomically(path: Path, data: bytes):
    """Write `data` to a temp file beside `path`, which then replaces `path` in one rename.

    A failed write (disk full, read-only, quota) removes the temp file and stops with one line naming the path
    and the free space; whatever `path` held before is untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)  # a full disk raises OSError here, or at the flush / fsync below
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the rename makes them visible
    except OSError as exc:
        if path.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise UserInputError(f"could not write {path}: {exc.strerror or exc}; {_free_space(path.parent)} free there. "
                             f"The files already in {path.parent} are as they were (the last good checkpoint is "
                             f"kept)") from None
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half of one


def save_checkpoint(path, payload: dict):
    """Atomically write a checkpoint; the payload must hold only tensors and plain values (see load_checkpoint).

    It is serialised in memory first: torch's file writer turns a full disk into a misleading RuntimeError
    ("unexpected pos"), while Python's own write says ENOSPC."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    _write_atomically(Path(path), buffer.getbuffer())


def check_writable(folder, key: str):
    """Create `folder` if needed and write a probe file there, so that an unwritable `key` (ckpt_dir, video_dir)
    stops the run with one line before any work, not with a traceback at its first save."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_probe_"):
            pass
    except OSError as exc:
        raise UserInputError(f"{key}={folder} is not writable: {exc.strerror or exc}") from None


def claim_run_folder(ckpt_root: Path, video_root: Path | None, base: str) -> str:
    """A run name starting with `base` whose folder under ckpt_root this call created, and that no video folder
    uses yet (video_root None: a run without videos). mkdir either creates a folder or fails, so two runs started in the same second with the same
    name never share one: the second becomes `<base>-2`."""
    attempt = 1
    while True:
        name = base if attempt == 1 else f"{base}-{attempt}"
        if video_root is None or not (video_root / name).exists():
            try:
                (ckpt_root / name).mkdir(parents=True)
                return name
            except FileExistsError:
                pass
        attempt += 1


def estimate_checkpoint_bytes(policy: torch.nn.Module, with_ema: bool) -> int:
    """Bytes of one training checkpoint: weights and buffers (twice with an EMA copy) plus AdamW's two moments
    per trainable parameter. Pickle overhead and the small plain values add well under 1%."""
    weights = sum(t.numel() * t.element_size() for t in policy.state_dict().values())
    moments = sum(2 * p.numel() * p.element_size() for p in policy.parameters() if p.requires_grad)
    return weights * (2 if with_ema else 1) + moments


def check_room_for_checkpoints(ckpt_dir: Path, policy: torch.nn.Module, with_ema: bool, keep: int,
                               planned_saves: int):
    """Stop before training when ckpt_dir cannot hold one save (iter_*.pt and last.pt); warn when it cannot
    hold every checkpoint the run keeps at once (iter_*.pt up to `keep`, 0 = all, plus best.pt and last.pt)."""
    checkpoint_bytes, free = estimate_checkpoint_bytes(policy, with_ema), shutil.disk_usage(ckpt_dir).free
    if free < 2 * checkpoint_bytes:
        raise UserInputError(f"ckpt_dir {ckpt_dir} has {_mib(free)} free; one save writes two checkpoints of about "
                             f"{_mib(checkpoint_bytes)} (iter_*.pt and last.pt). Free some space or point ckpt_dir "
                             f"elsewhere")
    files_kept = min(keep or planned_saves, planned_saves) + 2
    if free < files_kept * checkpoint_bytes:
        print(f"[checkpoints] warning: {ckpt_dir} has {_mib(free)} free; this run keeps up to {files_kept} "
              f"checkpoints of about {_mib(checkpoint_bytes)} and will stop with a message if the disk fills "
              f"(keep_checkpoints=N keeps fewer)")


def prune_checkpoints(ckpt_dir: Path, keep: int, iteration: int):
    """Remove all but the newest `keep` iter_*.pt up to `iteration` (keep=0 keeps all). Files of later
    iterations, left by a run resumed from an earlier checkpoint, stay until this run overwrites them;
    best.pt and last.pt are never touched."""
    if keep == 0:
        return
    saved = sorted((int(match.group(1)), path) for path in ckpt_dir.glob("iter_*.pt")
                   if (match := re.fullmatch(r"iter_(\d+)\.pt", path.name)) and int(match.group(1)) <= iteration)
    for _, path in saved[:-keep]:
        path.unlink()


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def load_checkpoint(path, for_resume: bool = False) -> dict:
    """A checkpoint as a dict, read without running any code from the file.

    `path`: a training checkpoint (.pt), or an exported policy (its folder, or the policy.json /
    policy.safetensors in it, see export_policy). The dict holds at least policy (a state dict), ema (a state
    dict or None), config (a plain dict), shape_meta, iteration and run_name; training checkpoints also hold
    optimizer, rng, best, split, wandb_id and world_size. for_resume=True also requires the training state,
    which an exported policy does not have.
    Anything else stops with one line (UserInputError) naming the file and what it holds. This is the loader
    for every consumer: resume, mode=eval, and the deploy API.
    """
    path = Path(path)
    if path.is_dir() or path.suffix in (".json", ".safetensors"):
        checkpoint = load_exported_policy(path if path.is_dir() else path.parent)
        if for_resume:
            raise UserInputError(f"{path} is an exported policy (weights only): resume= needs a training "
                                 f"checkpoint such as ckpts/<run>/last.pt")
    else:
        checkpoint = _load_pickled_tensors(path)
    _check_contents(path, checkpoint, REQUIRED_KEYS + (TRAINING_KEYS if for_resume else ()))
    checkpoint.setdefault("ema", None)
    return checkpoint


def _load_pickled_tensors(path: Path) -> dict:
    if not path.is_file():
        raise UserInputError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        wanted = _unsafe_globals(path) if isinstance(exc, pickle.UnpicklingError) else []
        if wanted:
            raise UserInputError(f"{path}: refused: loading it would call {', '.join(wanted)}, and a checkpoint of "
                                 f"this project holds only tensors and plain values. Nothing from it was run") from None
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserInputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first_line})") from None


def _unsafe_globals(path: Path) -> list[str]:
    """The functions and classes a pickle would call beyond tensors and plain values, read without calling them."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not even a readable archive: the caller reports it as unreadable
        return []


def _check_contents(path: Path, checkpoint, required: tuple):
    if not isinstance(checkpoint, dict):
        raise UserInputError(f"{path}: not an ACT_Implementation checkpoint (it holds a {type(checkpoint).__name__}, "
                             f"not a dict)")
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise UserInputError(f"{path}: not a complete ACT_Implementation checkpoint: missing {', '.join(missing)}; "
                             f"it has {', '.join(sorted(map(str, checkpoint))) or 'nothing'}")
    meta, config = checkpoint["shape_meta"], checkpoint["config"]
    missing_meta = [key for key in SHAPE_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing_meta:
        raise UserInputError(f"{path}: shape_meta lacks {', '.join(missing_meta)}; it has "
                             f"{', '.join(sorted(meta)) if isinstance(meta, dict) else repr(meta)}")
    if not isinstance(config, dict) or not isinstance(checkpoint["iteration"], int):
        raise UserInputError(f"{path}: config must be a mapping and iteration an integer, got "
                             f"{type(config).__name__} and {type(checkpoint['iteration']).__name__}")


# --------------------------------------------------------------------------------------------------
# The policy in a checkpoint
# --------------------------------------------------------------------------------------------------
def load_weights(policy: ACTPolicy, state_dict: dict, source: str):
    """Checkpoint weights into a policy built from the config; a mismatch is a config mistake, said as one."""
    camera_embed = policy.state_dict().get("model.camera_embed.weight")
    if camera_embed is not None and "model.camera_embed.weight" not in state_dict:
        # Saved before cameras had an embedding of their own: the model ran as if it were zero.
        state_dict = {**state_dict, "model.camera_embed.weight": torch.zeros_like(camera_embed)}
    try:
        policy.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise UserInputError(f"{source}: its weights do not fit the model the config describes (was a model.* "
                             f"key overridden?): {str(exc).splitlines()[1].strip()}") from None


def policy_from_checkpoint(model: ModelConfig, frame_stack: int, checkpoint: dict, device,
                           source: str = "checkpoint") -> ACTPolicy:
    """Rebuild the policy exactly as it was saved (model, frame_stack: its own config's), weights and normalisation
    included (the EMA weights when the run kept them)."""
    meta = checkpoint["shape_meta"]
    # Placeholder statistics of the right size; the real ones are buffers in the saved state dict.
    placeholder = {"state_mean": np.zeros(meta["state_dim"]), "state_std": np.ones(meta["state_dim"]),
                   "action_mean": np.zeros(meta["action_dim"]), "action_std": np.ones(meta["action_dim"])}
    policy = build_policy(model, meta, placeholder, frame_stack, saved_meta=meta)
    load_weights(policy, checkpoint["ema"] or checkpoint["policy"], source)
    return policy.to(device)


# --------------------------------------------------------------------------------------------------
# Export for sharing: safetensors + JSON, no pickle
# --------------------------------------------------------------------------------------------------
def export_policy(checkpoint: dict, out_dir) -> Path:
    """Write the deployable part of a checkpoint to out_dir: policy.safetensors (the EMA weights when the run
    kept them, else the trained ones; the normalisation statistics are buffers among them: state_mean,
    state_std, action_mean, action_std) and policy.json (format, config, shape_meta, iteration, run_name).
    Both formats load without running code; `mode=eval checkpoint=<out_dir>` evaluates it."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    weights = {name: tensor.contiguous() for name, tensor in (checkpoint["ema"] or checkpoint["policy"]).items()}
    meta = {"format": EXPORT_FORMAT, "run_name": checkpoint["run_name"], "iteration": checkpoint["iteration"],
            "shape_meta": checkpoint["shape_meta"], "config": checkpoint["config"]}
    _write_atomically(out_dir / EXPORT_WEIGHTS, save(weights))
    _write_atomically(out_dir / EXPORT_META, json.dumps(meta, indent=1).encode())
    return out_dir


def load_exported_policy(folder) -> dict:
    """An export_policy folder as a checkpoint dict (policy = its weights, ema = None); see load_checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    weights_path, meta_path = folder / EXPORT_WEIGHTS, folder / EXPORT_META
    if not weights_path.is_file() or not meta_path.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "no such folder"
        raise UserInputError(f"{folder}: an exported policy needs {EXPORT_WEIGHTS} and {EXPORT_META}; found: "
                             f"{found or 'nothing'}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise UserInputError(f"{meta_path}: format is {meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"expected {EXPORT_FORMAT!r}")
    try:
        weights = load_file(weights_path)
    except SafetensorError as exc:
        raise UserInputError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    return {**meta, "policy": weights, "ema": None}


# --------------------------------------------------------------------------------------------------
# Random states, as tensors and plain values
# --------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every random generator's state, as tensors, numbers and strings (loadable with weights_only=True)."""
    version, words, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": (version, torch.tensor(words, dtype=torch.int64), gauss_next),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict):
    """Undo rng_state(); also takes older checkpoints' states (tuples of ints, numpy arrays)."""
    version, words, gauss_next = state["python"]
    random.setstate((version, tuple(int(word) for word in words), gauss_next))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(keys).astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
