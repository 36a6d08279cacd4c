"""Checkpoints that survive kills: written to a temp file in the same folder, then atomically renamed."""

import os
import random
from pathlib import Path

import numpy as np
import torch

from env.errors import UserInputError


def save_checkpoint(path, payload: dict):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())  # the bytes are on disk before the rename makes them visible
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half of one


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserInputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = {"policy", "config", "shape_meta", "iteration"} - set(payload)
    if missing:
        raise UserInputError(f"{path}: not an ACT_Implementation checkpoint (missing {sorted(missing)})")
    return payload


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
