"""Camera frames -> the pixels a policy sees: one crop and one resize for every source.

The simulator adapters (env/maniskill_env.py), the recorded-dataset readers (datasets/own_data.py) and the
deployment API (utils/deploy.py) all prepare frames here, so a policy is never trained on pixels prepared one way
and run on pixels prepared another. Frames are channels-last, (..., H, W, C) uint8, as cameras and simulators
deliver them; callers move the channels first afterwards.
"""

import cv2
import numpy as np

from env.errors import UserInputError


def crop_frames(frames: np.ndarray, crop) -> np.ndarray:
    """(..., H, W, C) -> (..., height, width, C): the window crop = [top, left, height, width] of every frame."""
    top, left, height, width = crop
    frame_height, frame_width = frames.shape[-3:-1]
    if top < 0 or left < 0 or top + height > frame_height or left + width > frame_width:
        raise UserInputError(f"image_crop {list(crop)} = [top, left, height, width] does not fit in the "
                             f"{frame_height}x{frame_width} camera images")
    return frames[..., top:top + height, left:left + width, :]


def resize_frames(frames: np.ndarray, size) -> np.ndarray:
    """(..., H, W, C) uint8 -> (..., h, w, C) at size = (h, w); None, or frames already that size: unchanged.

    Shrinking averages the pixels each target pixel covers (cv2.INTER_AREA), so a small object does not flicker in
    and out as it would if every k-th pixel were picked; enlarging interpolates linearly.
    """
    height, width, channels = frames.shape[-3:]
    if size is None or (height, width) == tuple(size):
        return frames
    flat = np.ascontiguousarray(frames.reshape(-1, height, width, channels))
    interpolation = cv2.INTER_AREA if size[0] < height else cv2.INTER_LINEAR
    resized = np.stack([cv2.resize(frame, (size[1], size[0]), interpolation=interpolation) for frame in flat])
    return resized.reshape(*frames.shape[:-3], size[0], size[1], channels)  # cv2 drops a single channel's axis
