"""Run a trained policy in any control loop: a real robot, a simulator, a replay of recorded data.

    from utils.deploy import DeployedPolicy             # from outside this repository: see deploy/act_deploy.py

    policy = DeployedPolicy.from_checkpoint("ckpts/<run>/best.pt")   # or an exported folder (utils/checkpoint.py)
    policy.reset()                                      # at the start of every episode
    for step in range(max_steps):
        observation = {"state": qpos,                   # (S,) float, raw units, as recorded in the dataset
                       "images": {"cam_high": frame}}   # camera name -> (H, W, 3) uint8 RGB 0..255, any resolution
        action = policy.select_action(observation)      # (A,) float32 numpy, raw units
        robot.command(action)

Everything between the raw observation and the raw action happens inside: frames are cut and resized to the
training size with the readers' own crop and resize (env/images.py), state is normalised with the training
statistics, stacked frames are kept, chunks are predicted (z = 0) and turned into one action per step by temporal
ensembling or by playing each chunk open loop (models/policy.py's ChunkedActionExecutor), and the action is
de-normalised. The simulator evaluation (utils/evaluation.py) drives its environments through this same
class, so a loop written against it acts exactly as the evaluation does.

Observations come in two forms; both may carry a leading batch axis E (several robots or environments):
    {"state": (S,) or (E, S), "images": {camera name: (H, W, 3) or (E, H, W, 3) uint8}}   named cameras, resized
    {"state": (S,) or (E, S), "images": (N, 3, H, W) or (E, N, 3, H, W) uint8}             the simulator adapters'
                                                                                          form, at training size
Every observation is checked against what the policy was trained on (state size, camera names, frame layout,
dtype) before it reaches the model: a mistake raises ObservationError, one line saying what differs. Floats in
0..1, channel-first frames or a state of the wrong robot would otherwise give wrong actions without a word.
"""

from collections import deque

import numpy as np
import torch

from env.errors import UserInputError
from env.images import crop_frames, resize_frames
from models.policy import ACTPolicy, ChunkedActionExecutor
from utils.checkpoint import load_checkpoint, policy_from_checkpoint
from utils.config import config_from_checkpoint
from utils.schema import DatasetRun, RunConfig


class ObservationError(ValueError):
    """An observation that does not match what the policy was trained on; the message is one line."""


def camera_preparation(cfg: RunConfig) -> tuple[list[int] | None, list[int] | None]:
    """(crop [top, left, height, width] or None, size [height, width] or None) that turn a camera's frame into
    the pixels the run trained on, as the run's reader or simulator adapter prepared them."""
    if isinstance(cfg, DatasetRun):
        return None, cfg.data.image_size
    size = getattr(cfg, "image_size", None)
    return getattr(cfg, "image_crop", None), [size, size] if isinstance(size, int) else size


class DeployedPolicy:
    def __init__(self, policy: ACTPolicy, frame_stack: int = 1, temporal_ensemble: bool = True,
                 ensemble_k: float = 0.01, query_frequency: int | None = None, cameras: list[str] | None = None,
                 image_size=None, image_crop=None):
        """cameras: the trained camera order, for named-camera observations; image_crop [top, left, height, width]
        and image_size [h, w]: how named camera frames are cut and resized to the training size (None: not cut /
        used at the size they come, which must then be the training size)."""
        self.policy = policy.eval()
        self.device = policy.action_mean.device
        self.frame_stack, self.cameras = frame_stack, cameras
        self.image_crop, self.image_size = image_crop, image_size
        self.state_dim = policy.state_mean.shape[0]
        self.num_cameras = policy.model.num_cameras // frame_stack
        self.image_channels = policy.model.image_channels if self.num_cameras else None
        # The training size when the settings say it: a resize gives it, else a crop's window.
        self.trained_size = tuple(image_size) if image_size else tuple(image_crop[2:]) if image_crop else None
        self.executor = ChunkedActionExecutor(policy.model.chunk_size, temporal_ensemble, ensemble_k, query_frequency)
        self.history = deque(maxlen=frame_stack)

    @classmethod
    def from_config(cls, policy: ACTPolicy, cfg: RunConfig, cameras: list[str] | None = None,
                    **settings) -> "DeployedPolicy":
        """`policy` executed with the run config's settings (frame_stack, temporal_ensemble, ensemble_k,
        query_frequency; the crop and size camera frames are prepared with). `settings` overrides them by name,
        e.g. temporal_ensemble=False, query_frequency=25."""
        image_crop, image_size = camera_preparation(cfg)
        saved = {"frame_stack": cfg.frame_stack, "temporal_ensemble": cfg.temporal_ensemble,
                 "ensemble_k": cfg.ensemble_k, "query_frequency": cfg.query_frequency, "cameras": cameras,
                 "image_size": image_size, "image_crop": image_crop}
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
        recorded_size = checkpoint["shape_meta"].get("image_size")  # [h, w] the model saw (newer checkpoints)
        if recorded_size and camera_preparation(cfg)[1] is None:
            settings = {"image_size": recorded_size, **settings}  # frames at another size are resized to it
        return cls.from_config(policy, cfg, cameras, **settings)

    def reset(self):
        """Start a new episode: forget the stacked frames and the chunks in flight."""
        self.executor.reset()
        self.history.clear()

    @torch.no_grad()
    def select_action(self, observation: dict) -> np.ndarray:
        """One control step: observation (see the module docstring) -> action (A,) or (E, A) float32 numpy."""
        state = self._state(observation)
        single = state.ndim == 1
        images = self._images(observation.get("images"), single, 1 if single else len(state))
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

    def _state(self, observation) -> torch.Tensor:
        """observation["state"] -> (S,) or (E, S) float32, checked."""
        if not isinstance(observation, dict) or "state" not in observation:
            raise ObservationError(f"the observation must be a dict with 'state' (and 'images' for a camera policy);"
                                   f" got {type(observation).__name__}"
                                   f"{' with keys ' + str(sorted(observation)) if isinstance(observation, dict) else ''}")
        state = np.asarray(observation["state"])
        if not (np.issubdtype(state.dtype, np.floating) or np.issubdtype(state.dtype, np.integer)):
            raise ObservationError(f"observation['state'] has dtype {state.dtype}; expected numbers")
        if state.ndim not in (1, 2) or state.shape[-1] != self.state_dim:
            raise ObservationError(f"observation['state'] has shape {state.shape}; the policy was trained on "
                                   f"{self.state_dim} numbers per step: ({self.state_dim},) or (E, {self.state_dim})")
        if not np.isfinite(state).all():
            raise ObservationError(f"observation['state'] holds NaN or inf at {np.argwhere(~np.isfinite(state))[0]}")
        return torch.as_tensor(state.astype(np.float32))

    def _images(self, images, single: bool, batch: int) -> torch.Tensor | None:
        """Either observation form -> (E, N, C, H, W) uint8, or None for a state-only policy."""
        if self.num_cameras == 0:
            return None
        if images is None:
            raise ObservationError(f"this policy was trained with {self.num_cameras} camera(s)"
                                   f"{' ' + str(self.cameras) if self.cameras else ''}: the observation needs 'images'")
        if isinstance(images, dict):
            return self._named_images(images, single, batch)
        images = np.asarray(images)
        expected = (self.num_cameras, self.image_channels, *(self.trained_size or ("H", "W")))
        where = "observation['images']"
        _check_pixels(images, where)
        layout_ok = images.ndim == (4 if single else 5) and images.shape[-4:-2] == expected[:2] and (
            self.trained_size is None or images.shape[-2:] == self.trained_size)
        if not layout_ok or (not single and len(images) != batch):
            shown = ", ".join(map(str, expected))
            raise ObservationError(f"{where} has shape {images.shape}; expected ({shown}) or (E, {shown}) with E = "
                                   f"the state's {batch}, or a dict of camera name -> (H, W, 3) frames")
        return torch.from_numpy(np.ascontiguousarray(images[None] if single else images))

    def _named_images(self, images: dict, single: bool, batch: int) -> torch.Tensor:
        """{camera name: (H, W, 3) or (E, H, W, 3) uint8} -> (E, N, 3, h, w) uint8 in the trained camera order."""
        if self.cameras is None:
            raise ObservationError("this checkpoint records no camera names: pass images as an (N, C, H, W) or "
                                   "(E, N, C, H, W) uint8 array in the trained camera order")
        missing = [name for name in self.cameras if name not in images]
        if missing:
            raise ObservationError(f"observation['images'] lacks camera(s) {missing}: it has {sorted(images)}, the "
                                   f"policy was trained on {self.cameras}")
        per_camera = []
        for name in self.cameras:
            frames, where = np.asarray(images[name]), f"observation['images']['{name}']"
            _check_pixels(frames, where)
            if frames.ndim != (3 if single else 4) or frames.shape[-1] != 3 or (not single and len(frames) != batch):
                hint = " (channels first? expected channels last)" if frames.ndim >= 3 and frames.shape[-3] == 3 else ""
                raise ObservationError(f"{where} has shape {frames.shape}{hint}; expected an RGB frame (H, W, 3), or "
                                       f"(E, H, W, 3) with E = the state's {batch}")
            frames = frames[None] if single else frames
            if self.image_crop:
                try:
                    frames = crop_frames(frames, self.image_crop)
                except UserInputError as error:
                    raise ObservationError(f"{where}: {error}") from None
            if self.trained_size and not self.image_size and frames.shape[1:3] != self.trained_size:
                raise ObservationError(f"{where} is {frames.shape[1]}x{frames.shape[2]} after the crop; the policy "
                                       f"was trained on {self.trained_size[0]}x{self.trained_size[1]}")
            per_camera.append(resize_frames(frames, self.image_size))
        sizes = {frames.shape[1:3] for frames in per_camera}
        if len(sizes) > 1:
            raise ObservationError(f"the cameras' frames come out at different sizes {sorted(sizes)}; this policy "
                                   f"keeps them as they come (no image_size), so send them at one size")
        images = np.stack(per_camera, axis=1).transpose(0, 1, 4, 2, 3)  # (E, N, h, w, 3) -> (E, N, 3, h, w)
        return torch.from_numpy(np.ascontiguousarray(images))


def _check_pixels(frames: np.ndarray, where: str):
    """Camera pixels are uint8 0..255, as cameras and the training data deliver them."""
    if frames.dtype == np.uint8:
        return
    if np.issubdtype(frames.dtype, np.floating) and frames.size:
        low, high = float(np.nanmin(frames)), float(np.nanmax(frames))
        scale = " (0..1 floats: send (frame * 255).round().astype(np.uint8))" if high <= 1.0 else ""
        raise ObservationError(f"{where} is {frames.dtype} with values {low:.3g}..{high:.3g}; expected uint8 RGB "
                               f"0..255{scale}")
    raise ObservationError(f"{where} has dtype {frames.dtype}; expected uint8 RGB 0..255")
