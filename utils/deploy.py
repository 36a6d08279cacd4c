"""Run a trained policy in any control loop: a real robot, a simulator, a replay of recorded data.

    from utils.deploy import DeployedPolicy

    policy = DeployedPolicy.from_checkpoint("ckpts/<run>/best.pt")
    policy.reset()                                      # at the start of every episode
    for step in range(max_steps):
        observation = {"state": qpos,                   # (S,) float, raw units, as recorded in the dataset
                       "images": {"cam_high": frame}}   # camera name -> (H, W, 3) uint8 RGB, any resolution
        action = policy.select_action(observation)      # (A,) float32 numpy, raw units
        robot.command(action)

Everything between the raw observation and the raw action happens inside: frames are resized to the training
size with the readers' own resize (env/images.py), state is normalised with the training statistics,
stacked frames are kept, chunks are predicted (z = 0) and turned into one action per step by temporal
ensembling or by playing each chunk open loop (models/policy.py's ChunkedActionExecutor), and the action is
de-normalised. The simulator evaluation (utils/evaluation.py) drives its environments through this same
class, so a loop written against it acts exactly as the evaluation does.

Observations come in two forms; both may carry a leading batch axis E (several robots or environments):
    {"state": (S,) or (E, S), "images": {camera name: (H, W, 3) or (E, H, W, 3) uint8}}   named cameras, resized
    {"state": (S,) or (E, S), "images": (N, 3, H, W) or (E, N, 3, H, W) uint8}             the simulator adapters'
                                                                                          form, at training size
"""

from collections import deque

import numpy as np
import torch

from env.images import resize_frames
from models.policy import ACTPolicy, ChunkedActionExecutor
from utils.checkpoint import load_checkpoint, policy_from_checkpoint
from utils.config import config_from_checkpoint
from utils.schema import DatasetRun, RunConfig


class DeployedPolicy:
    def __init__(self, policy: ACTPolicy, frame_stack: int = 1, temporal_ensemble: bool = True,
                 ensemble_k: float = 0.01, query_frequency: int | None = None, cameras: list[str] | None = None,
                 image_size=None):
        """cameras: the trained camera order, for named-camera observations; image_size [h, w]: what named
        camera frames are resized to (None: used as they come)."""
        self.policy = policy.eval()
        self.device = policy.action_mean.device
        self.frame_stack, self.cameras, self.image_size = frame_stack, cameras, image_size
        self.executor = ChunkedActionExecutor(policy.model.chunk_size, temporal_ensemble, ensemble_k, query_frequency)
        self.history = deque(maxlen=frame_stack)

    @classmethod
    def from_config(cls, policy: ACTPolicy, cfg: RunConfig, cameras: list[str] | None = None,
                    **settings) -> "DeployedPolicy":
        """`policy` executed with the run config's settings (frame_stack, temporal_ensemble, ensemble_k,
        query_frequency; a dataset run's data.image_size for named camera frames). `settings` overrides them by
        name, e.g. temporal_ensemble=False, query_frequency=25."""
        saved = {"frame_stack": cfg.frame_stack, "temporal_ensemble": cfg.temporal_ensemble,
                 "ensemble_k": cfg.ensemble_k, "query_frequency": cfg.query_frequency, "cameras": cameras,
                 "image_size": cfg.data.image_size if isinstance(cfg, DatasetRun) else None}
        return cls(policy, **{**saved, **settings})

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", **settings) -> "DeployedPolicy":
        """The policy of a checkpoint (best.pt, last.pt, iter_*.pt; EMA weights when it has them) with the
        execution settings it was trained with (see from_config) and, for dataset runs, the camera order it was
        trained on. `settings` overrides them by name."""
        checkpoint = load_checkpoint(path)
        cfg = config_from_checkpoint(checkpoint, path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        policy = policy_from_checkpoint(cfg.model, cfg.frame_stack, checkpoint, torch.device(device), str(path))
        cameras = checkpoint["shape_meta"].get("cameras")
        if cameras is None and isinstance(cfg, DatasetRun) and cfg.data.format != "auto":
            cameras = getattr(cfg.data, cfg.data.format).cameras  # older dataset runs wrote them into the config
        return cls.from_config(policy, cfg, cameras, **settings)

    def reset(self):
        """Start a new episode: forget the stacked frames and the chunks in flight."""
        self.executor.reset()
        self.history.clear()

    @torch.no_grad()
    def select_action(self, observation: dict) -> np.ndarray:
        """One control step: observation (see the module docstring) -> action (A,) or (E, A) float32 numpy."""
        state = torch.as_tensor(np.asarray(observation["state"], dtype=np.float32))
        single = state.ndim == 1
        images = self._images(observation.get("images"), single)
        frame = {"state": state[None] if single else state, "images": images}
        frame = {key: value.to(self.device) for key, value in frame.items() if value is not None}
        # The frame stack starts filled with the first observation, as the dataset clamps at an episode's start.
        self.history.extend([frame] * (self.frame_stack if not self.history else 1))
        chunk = None
        if self.executor.needs_new_chunk():
            state = torch.stack([f["state"] for f in self.history], dim=1)  # (E, F, S)
            images = torch.stack([f["images"] for f in self.history], dim=1) if "images" in frame else None
            chunk = self.policy.predict_chunk(state, images)  # (E, K, A); images (E, F, N, C, H, W) uint8
        action = self.executor.act(chunk).cpu().numpy()  # (E, A)
        return action[0] if single else action

    def _images(self, images, single: bool) -> torch.Tensor | None:
        """Either observation form -> (E, N, C, H, W) uint8, or None for a state-only policy."""
        if self.policy.model.num_cameras == 0:
            return None
        if images is None:
            raise ValueError("this policy was trained with cameras: the observation needs 'images'")
        if isinstance(images, dict):
            if self.cameras is None:
                raise ValueError("this checkpoint records no camera names: pass images as an (E, N, C, H, W) array")
            missing = [name for name in self.cameras if name not in images]
            if missing:
                raise ValueError(f"observation images lack camera(s) {missing}; the policy was trained on {self.cameras}")
            per_camera = [np.asarray(images[name]) for name in self.cameras]
            per_camera = [resize_frames(frames[None] if single else frames, self.image_size) for frames in per_camera]
            images = np.stack(per_camera, axis=1).transpose(0, 1, 4, 2, 3)  # (E, N, h, w, 3) -> (E, N, 3, h, w)
            return torch.from_numpy(np.ascontiguousarray(images))
        images = torch.as_tensor(np.asarray(images))
        return images[None] if single else images
