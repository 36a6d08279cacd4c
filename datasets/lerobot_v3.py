"""LeRobotDataset format v3.0 (Hugging Face LeRobot), read with pyarrow (parquet) and PyAV (FFmpeg's decoders).

    meta/info.json                            codebase_version, fps, features {key: dtype, shape, names},
                                              the data_path / video_path templates
    meta/episodes/chunk-*/file-*.parquet      one row per episode: length, and for every video key the file
                                              (chunk_index, file_index) and the episode's span in it
                                              (from_timestamp, to_timestamp)
    data/chunk-*/file-*.parquet               one row per frame: episode_index, frame_index, timestamp, index
                                              and the non-video features (observation.state, action, ...)
    videos/<key>/chunk-*/file-*.mp4           several episodes back to back in each file
An episode's frame at `timestamp` is the video frame at from_timestamp + timestamp. Keys are configurable
(configs/ACT_dataset_config.yaml, data.lerobot); cameras default to every video feature.
"""

import json
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq

from env.errors import UserInputError, did_you_mean


def read_info(folder: Path) -> dict:
    path = folder / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path}: not readable as JSON ({exc}); expected LeRobot's dataset description") from None
    version = str(info.get("codebase_version", "unknown"))
    if not version.startswith("v3."):
        raise UserInputError(f"{path}: codebase_version {version}; expected v3.0 (convert a v2.1 dataset with "
                             f"LeRobot's `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30`)")
    return info


def _check_feature(info: dict, key: str, folder: Path, dtypes: tuple):
    features = info["features"]
    if key not in features:
        raise UserInputError(f"{folder / 'meta' / 'info.json'}: no feature '{key}' (it has: {', '.join(features)})."
                             + did_you_mean(key, features))
    if features[key]["dtype"] not in dtypes:
        hint = (" (images stored inside the parquet files are not read: record with use_videos=True)"
                if features[key]["dtype"] == "image" else "")
        raise UserInputError(f"{folder / 'meta' / 'info.json'}: feature '{key}' has dtype {features[key]['dtype']}; "
                             f"expected {' or '.join(dtypes)}{hint}")


def _parquet_rows(files: list[Path], columns: list[str]) -> dict:
    """Columns of several parquet files, concatenated, as numpy arrays ((n, D) for list columns)."""
    tables = [pq.read_table(path, columns=columns) for path in files]
    out = {}
    for column in columns:
        values = [table.column(column).combine_chunks() for table in tables]
        if hasattr(values[0], "flatten"):  # list columns: one vector per row
            out[column] = np.concatenate([np.asarray(v.flatten()).reshape(len(v), -1) for v in values])
        else:
            out[column] = np.concatenate([v.to_numpy(zero_copy_only=False) for v in values])
    return out


def scan(folder: Path, state_keys: list[str], action_key: str, cameras: list[str] | None,
         num_episodes: int = -1) -> list[dict]:
    """First pass: state, actions, camera shapes and video spans of every episode, no images."""
    info = read_info(folder)
    for key in state_keys:
        _check_feature(info, key, folder, ("float32", "float64"))
    _check_feature(info, action_key, folder, ("float32", "float64"))
    video_keys = sorted(key for key, feature in info["features"].items() if feature["dtype"] == "video")
    for key in cameras if cameras is not None else video_keys:
        _check_feature(info, key, folder, ("video",))
    meta_files = sorted((folder / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    data_files = sorted((folder / "data").glob("chunk-*/file-*.parquet"))
    if not meta_files or not data_files:
        raise UserInputError(f"{folder}: no meta/episodes/chunk-*/file-*.parquet or data/chunk-*/file-*.parquet "
                             f"files; expected a LeRobotDataset v3.0 folder")
    span_columns = [f"videos/{key}/{part}" for key in video_keys
                    for part in ("chunk_index", "file_index", "from_timestamp")]
    meta = _parquet_rows(meta_files, ["episode_index", "length", "data/chunk_index", "data/file_index", *span_columns])
    frames = _parquet_rows(data_files, ["episode_index", "frame_index", "timestamp", *state_keys, action_key])
    order = np.lexsort((frames["frame_index"], frames["episode_index"]))  # by episode, then by step
    frames = {key: values[order] for key, values in frames.items()}

    episodes = []
    rows = np.argsort(meta["episode_index"])
    for row in rows[:num_episodes] if num_episodes > 0 else rows:
        episode_index = int(meta["episode_index"][row])
        data_file = info["data_path"].format(chunk_index=int(meta["data/chunk_index"][row]),
                                             file_index=int(meta["data/file_index"][row]))
        source = f"{folder / data_file} (episode {episode_index})"
        begin, end = np.searchsorted(frames["episode_index"], [episode_index, episode_index + 1])
        if end - begin != meta["length"][row]:
            raise UserInputError(f"{source}: {end - begin} rows, meta/episodes says {meta['length'][row]}; expected "
                                 f"one row per frame")
        videos = {}  # camera key -> (video file, the episode's start time in it)
        for key in video_keys:
            file = info["video_path"].format(video_key=key, chunk_index=int(meta[f"videos/{key}/chunk_index"][row]),
                                             file_index=int(meta[f"videos/{key}/file_index"][row]))
            videos[key] = (file, float(meta[f"videos/{key}/from_timestamp"][row]))
        episodes.append({
            "source": source,
            "state": np.concatenate([frames[key][begin:end] for key in state_keys], axis=1).astype(np.float32),
            "actions": frames[action_key][begin:end].astype(np.float32),
            "camera_shapes": {key: tuple(info["features"][key]["shape"]) for key in video_keys},
            "timestamps": frames["timestamp"][begin:end].astype(np.float64),
            "videos": videos,
        })
    return episodes


def read_frames(folder: Path, episodes: list[dict], cameras: list[str]):
    """Second pass: yields (episode index, camera index, step, frame (1, H, W, 3) uint8). Each video file is
    decoded once, front to back, handing out the frames the episodes ask for."""
    fps = read_info(folder)["fps"]
    for camera, key in enumerate(cameras):
        wanted = {}  # video file -> {frame number in the file: [(episode index, step), ...]}
        for index, episode in enumerate(episodes):
            file, start = episode["videos"][key]
            for step, timestamp in enumerate(episode["timestamps"]):
                wanted.setdefault(file, {}).setdefault(round((start + timestamp) * fps), []).append((index, step))
        for file, frames in sorted(wanted.items()):
            path = folder / file
            if not path.is_file():
                raise UserInputError(f"{path}: missing; meta/episodes names it as the video of '{key}'")
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"  # FFmpeg's frame threads
                for frame in container.decode(stream):
                    for index, step in frames.pop(round(frame.time * fps), ()):
                        yield index, camera, step, frame.to_ndarray(format="rgb24")[None]
                    if not frames:
                        break
            if frames:
                number, [(index, step), *_] = min(frames.items())
                raise UserInputError(f"{path}: no frame at {number / fps:.3f} s, which {episodes[index]['source']} "
                                     f"step {step} needs; expected a frame per data row")
