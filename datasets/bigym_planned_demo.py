"""Scripted BiGym demo files: BiGym's own lightweight demo, plus the solver's plan and how the demo was made.

BiGym's DemoRecorder records a scripted demo exactly as BiGym records its own: the executed 500 Hz actions, which
re-simulation replays. Two things are added to the same safetensors file (BiGym's loaders ignore them):
  - the tensor "info_planned_target" (T, A): the solver's plan at each physics step, in the action's layout with
    the floating base as absolute targets. With DART noise the executed actions leave the plan and the plan is the
    label (datasets/bigym_solvers.py); without noise the two agree.
  - the metadata entry "act_provenance": {"solver", "solver_version", "noise"}. Scripted demos are cached per
    solver version and noise level (datasets.bigym_demos.scripted_store_root); this is the record inside the file.
Needs BiGym; imported only where BiGym is used.
"""

import json
from pathlib import Path

import numpy as np
from demonstrations.const import GYM_INFO_KEY, SAFETENSORS_INFO_PREFIX
from demonstrations.demo import LightweightDemo
from safetensors import safe_open

PLANNED_KEY = "planned_target"
PROVENANCE_KEY = "act_provenance"


class PlannedDemo(LightweightDemo):
    """A recorded LightweightDemo with the plan (T, A) and the provenance saved alongside its actions."""

    def __init__(self, recorded: LightweightDemo, planned_targets, provenance: dict):
        super().__init__(recorded.metadata, recorded.timesteps)
        self.planned_targets = np.asarray(planned_targets, dtype=np.float64)  # (T, A)
        self.provenance = dict(provenance)
        if len(self.planned_targets) != self.duration:
            raise ValueError(f"{len(self.planned_targets)} planned targets for {self.duration} recorded steps")

    @property
    def _saving_format(self):
        to_save = super()._saving_format
        to_save[GYM_INFO_KEY][PLANNED_KEY] = list(self.planned_targets)
        return to_save

    @property
    def safetensor_metadata(self):
        return super().safetensor_metadata | {PROVENANCE_KEY: json.dumps(self.provenance)}


def read_plan(path: Path) -> tuple[np.ndarray | None, dict | None]:
    """(planned targets (T, A), provenance) of a demo file; (None, None) for a demo without them (e.g. human)."""
    with safe_open(path, framework="np", device="cpu") as f:
        metadata = f.metadata() or {}
        key = SAFETENSORS_INFO_PREFIX + PLANNED_KEY
        planned = f.get_tensor(key) if key in f.keys() else None  # noqa: SIM118 (safe_open is not a dict)
    provenance = json.loads(metadata[PROVENANCE_KEY]) if PROVENANCE_KEY in metadata else None
    return planned, provenance
