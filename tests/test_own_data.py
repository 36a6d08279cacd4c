"""Training from a dataset folder: ALOHA-layout HDF5 written here, a LeRobotDataset written by LeRobot itself,
the entry script end to end (train, best.pt by validation L1, exact resume), and bad input."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from lerobot_dataset_writer import STATE_DIM, frame

from datasets.aloha_hdf5 import write_episode
from datasets.chunk_dataset import ChunkDataset, make_train_loader, split_episodes
from datasets.frame_store import FramesOnTheFly
from datasets.own_data import choose_frames, detect_format, load_own_episodes
from env.errors import UserInputError
from env.images import resize_frames
from utils.config import REPO_ROOT
from utils.deploy import DeployedPolicy

CAMERAS = ["cam_high", "cam_left_wrist"]
TINY = ["wandb.mode=disabled", "batch_size=8", "warmup_iters=2", "model.d_model=32", "model.dim_feedforward=64",
        "model.chunk_size=8", "model.num_encoder_layers=1", "model.num_decoder_layers=1",
        "model.num_style_encoder_layers=1", "model.pretrained_backbone=false", "data.image_size=[32,48]",
        "log_frequency=5", "val_fraction=0.25"]


def aloha_frames(episode: int, length: int, height: int = 60, width: int = 80) -> dict:
    """Per camera (T, H, W, 3) uint8: a square that moves with the step on a background set by the episode."""
    frames = {}
    for index, name in enumerate(CAMERAS):
        video = np.full((length, height, width, 3), 40 * episode + 100 * index, np.uint8)
        for step in range(length):
            video[step, 10:30, 2 * step % (width - 20):2 * step % (width - 20) + 20] = (250, 30 * index, 90)
        frames[name] = video
    return frames


def write_aloha(folder: Path, num_episodes: int = 4, jpeg_quality: int | None = 90, **changes) -> Path:
    """episode_<i>.hdf5 files of 24-27 steps: qpos = sin waves, action = the next qpos."""
    folder.mkdir(parents=True, exist_ok=True)
    for episode in range(num_episodes):
        length = 24 + episode
        steps = np.arange(length)[:, None]
        qpos = np.sin(steps / 6 + np.arange(5) + episode).astype(np.float32)
        write_episode(folder / f"episode_{episode}.hdf5", qpos, np.roll(qpos, -1, axis=0), aloha_frames(episode, length),
                      qvel=np.cos(steps / 6 + np.arange(5)), jpeg_quality=jpeg_quality, **changes)
    return folder


def run_script(*args, expect: int = 0):
    result = subprocess.run([sys.executable, "ACT_for_dataset.py", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_aloha_reader_resizes_raw_frames_exactly_and_jpeg_rows_closely(tmp_path):
    raw = write_aloha(tmp_path / "raw", 2, jpeg_quality=None)
    jpeg = write_aloha(tmp_path / "jpeg", 2, jpeg_quality=90)
    keys = (["observations/qpos", "observations/qvel"], "action", None, [32, 40])
    raw_episodes, cameras = load_own_episodes(raw, "aloha_hdf5", *keys)
    jpeg_episodes, _ = load_own_episodes(jpeg, "aloha_hdf5", *keys)
    assert cameras == sorted(CAMERAS)
    for episode, (from_raw, from_jpeg) in enumerate(zip(raw_episodes, jpeg_episodes)):
        recorded = aloha_frames(episode, 24 + episode)
        expected = np.stack([resize_frames(recorded[name], (32, 40)) for name in cameras], axis=1)  # (T, N, h, w, 3)
        expected = expected.transpose(0, 1, 4, 2, 3)  # (T, N, 3, h, w)
        assert from_raw["images"].shape == (24 + episode, 2, 3, 32, 40)
        assert np.array_equal(from_raw["images"], expected)
        error = np.abs(from_jpeg["images"].astype(int) - expected).mean()
        assert 0 < error < 3  # lossy, but the same picture in the same channel order
        assert from_raw["state"].shape == (24 + episode, 10)  # qpos + qvel
        assert np.array_equal(from_raw["actions"][:-1], from_raw["state"][1:, :5])  # action = next qpos


def test_real_episodes_pair_each_step_with_the_previous_action(tmp_path):
    folder = write_aloha(tmp_path / "real", 1, sim=False)
    shifted, _ = load_own_episodes(folder, "aloha_hdf5", ["observations/qpos"], "action", [], None)
    plain, _ = load_own_episodes(folder, "aloha_hdf5", ["observations/qpos"], "action", [], None,
                                 shift_real_actions=False)
    assert np.array_equal(shifted[0]["actions"][1:], plain[0]["actions"][:-1])
    assert np.array_equal(shifted[0]["actions"][0], plain[0]["actions"][0]) and "images" not in shifted[0]


@pytest.fixture(scope="module")
def aloha_run(tmp_path_factory):
    """One short training run of the entry script on 4 JPEG-compressed ALOHA episodes."""
    out = tmp_path_factory.mktemp("own_data")
    folder = write_aloha(out / "my_task")
    common = [f"data.path={folder}", f"ckpt_dir={out / 'ckpts'}", *TINY, "val_frequency=10", "save_frequency=10",
              "exp_name=own", "total_iters=20"]
    log = run_script(*common).stdout
    (run_dir,) = (out / "ckpts").iterdir()
    return {"out": out, "folder": folder, "run_dir": run_dir, "log": log, "common": common}


def test_training_from_a_folder_writes_checkpoints_and_picks_best_by_validation_l1(aloha_run):
    run_dir = aloha_run["run_dir"]
    assert run_dir.name.startswith("own-my_task-1-")
    for name in ("config.yaml", "best.pt", "last.pt", "iter_0000010.pt", "iter_0000020.pt", "training_curves.png"):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = {row["iteration"]: row["val/l1"] for row in rows if "val/l1" in row}
    assert sorted(val) == [10, 20]
    best = torch.load(run_dir / "best.pt", weights_only=False)
    assert best["best"]["metric"] == "val/l1" and best["iteration"] == min(val, key=val.get)
    assert best["best"]["score"] == pytest.approx(-min(val.values()))
    split = best["split"]
    assert len(split["val"]) == 1 and len(split["train"]) == 3 and not set(split["train"]) & set(split["val"])
    # What deployment needs to know, found in the folder, is recorded beside the config; the config stays as given.
    assert best["shape_meta"]["cameras"] == sorted(CAMERAS)
    assert best["config"]["data"]["format"] == "auto" and best["config"]["data"]["aloha_hdf5"]["cameras"] is None


def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(aloha_run, tmp_path):
    run_dir = aloha_run["run_dir"]
    log = run_script(*aloha_run["common"], f"resume={run_dir / 'iter_0000010.pt'}", f"ckpt_dir={tmp_path}").stdout
    assert "at iteration 10" in log
    uninterrupted = torch.load(run_dir / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / run_dir.name / "last.pt", weights_only=False)  # the run keeps its name
    assert uninterrupted["iteration"] == resumed["iteration"] == 20
    for name, tensor in uninterrupted["policy"].items():
        assert torch.equal(tensor, resumed["policy"][name]), name
    for state_a, state_b in zip(uninterrupted["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)


def test_deployed_policy_resizes_camera_frames_as_the_reader_did(aloha_run):
    """A control loop hands full-size JPEG-decoded frames by camera name; the action must be the one the policy
    predicts from the training buffer's (resized) images of that step."""
    deployed = DeployedPolicy.from_checkpoint(aloha_run["run_dir"] / "best.pt", device="cpu")
    episodes, cameras = load_own_episodes(aloha_run["folder"], "aloha_hdf5", ["observations/qpos"], "action", None,
                                          [32, 48], num_episodes=1)
    with h5py.File(aloha_run["folder"] / "episode_0.hdf5") as file:
        live = {name: cv2.imdecode(file[f"observations/images/{name}"][0], cv2.IMREAD_COLOR) for name in cameras}
        qpos = file["observations/qpos"][0]
    deployed.reset()
    action = deployed.select_action({"state": qpos, "images": live})
    chunk = deployed.policy.predict_chunk(torch.from_numpy(episodes[0]["state"][None, :1]),
                                          torch.from_numpy(episodes[0]["images"][None, :1]))  # (1, K, A)
    assert action.shape == (5,) and np.array_equal(action, chunk[0, 0].numpy())


def make_bad(folder: Path, case: str) -> Path:
    """Two good episodes, then the second one broken as `case` says (or an empty folder)."""
    if case == "empty":
        folder.mkdir(parents=True)
        return folder
    write_aloha(folder, 2, jpeg_quality=None)
    bad = folder / "episode_1.hdf5"
    if case == "other_shape":
        write_episode(bad, np.zeros((5, 5)), np.zeros((5, 5)), {name: np.zeros((5, 30, 40, 3), np.uint8) for name in CAMERAS})
        return folder
    with h5py.File(bad, "a") as file:
        if case == "missing_action":
            del file["action"]
        elif case == "other_cameras":
            del file["observations/images/cam_left_wrist"]
        elif case == "nan_action":
            file["action"][7, 2] = np.nan
    return folder


@pytest.mark.parametrize("case, expected", [
    ("missing_action", "episode_1.hdf5: no dataset '/action'; expected (T, A) actions"),
    ("other_cameras", "episode_1.hdf5: cameras ['cam_high'], but"),
    ("other_shape", "episode_1.hdf5: camera 'cam_high' has frames of shape (30, 40, 3)"),
    ("nan_action", "episode_1.hdf5: /action step 7 (dimension 2) is nan; expected finite numbers"),
    ("empty", "it is empty; expected one of the two"),
])
def test_bad_input_is_named_by_file_key_and_step(tmp_path, case, expected):
    folder = make_bad(tmp_path / "data", case)
    with pytest.raises(UserInputError) as error:
        load_own_episodes(folder, detect_format(folder), ["observations/qpos"], "action", None, [32, 32])
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("case, overrides, expected", [
    ("missing_action", [], "episode_1.hdf5: no dataset '/action'"),
    ("nan_action", ["data.format=aloha"], "key 'data.format' expects one of 'auto', 'aloha_hdf5', 'lerobot', got str 'aloha'"),
])
def test_bad_input_stops_the_script_with_one_line_and_writes_nothing(tmp_path, case, overrides, expected):
    folder = make_bad(tmp_path / "data", case)
    result = run_script(f"data.path={folder}", f"ckpt_dir={tmp_path / 'ckpts'}", *TINY, *overrides, expect=2)
    assert expected in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "ckpts").exists()


# --------------------------------------------------------------------------------------------------
# Frames read from the files per batch (data.frames=disk) instead of held in RAM
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("jpeg_quality", [90, None])
def test_frames_read_per_batch_equal_the_frames_held_in_ram(tmp_path, jpeg_quality):
    """Every sample, stacked frames clamped at episode starts and chunks padded at episode ends included, and a
    batch drawn by a DataLoader worker (which opens its own files), for JPEG rows and raw frames."""
    folder = write_aloha(tmp_path / "data", 3, jpeg_quality)
    keys = (["observations/qpos"], "action", None, [30, 36])  # 60x80 averaged down by a non-integer factor
    in_ram, on_the_fly = (ChunkDataset(load_own_episodes(folder, "aloha_hdf5", *keys, frames=frames)[0], 6,
                                       "absolute", frame_stack=3) for frames in ("ram", "disk"))
    assert isinstance(on_the_fly.frames, FramesOnTheFly)
    every_sample = np.arange(len(in_ram))  # 24 + 25 + 26 steps
    expected, read = in_ram[every_sample], on_the_fly[every_sample]
    assert read["images"].shape == (75, 3, 2, 3, 30, 36)
    for name in expected:
        assert torch.equal(expected[name], read[name]), name
    drawn = next(iter(make_train_loader(on_the_fly, 16, seed=3, num_workers=1)))
    assert torch.equal(drawn["images"], next(iter(make_train_loader(in_ram, 16, seed=3, num_workers=0)))["images"])


def test_training_with_frames_read_per_batch_ends_as_with_frames_in_ram(aloha_run, tmp_path):
    """The same run as aloha_run (frames in RAM, data.frames=auto on 4 small episodes), its frames decoded per batch
    in a DataLoader worker: the same batches, so the same weights, bit for bit."""
    log = run_script(*aloha_run["common"], f"ckpt_dir={tmp_path}", "data.frames=disk", "num_workers=1").stdout
    assert "[data] frames: read from the files per batch" in log and "[data] frames: in RAM" in aloha_run["log"]
    (run_dir,) = tmp_path.iterdir()
    losses = [json.loads(line)["train/loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert len(losses) == 4 and losses[-1] < losses[0]
    in_ram = torch.load(aloha_run["run_dir"] / "last.pt", weights_only=False)["policy"]
    on_the_fly = torch.load(run_dir / "last.pt", weights_only=False)["policy"]
    for name, tensor in in_ram.items():
        assert torch.equal(tensor, on_the_fly[name]), name


def test_a_file_removed_mid_run_stops_it_with_one_line_naming_the_file(tmp_path):
    """Removed once the run has scanned it (its folder exists). 40 episodes, 36 of them for training: more than a
    worker keeps open, so the file is opened again after its removal even if it was open by then, and the error is
    raised in the DataLoader worker."""
    folder = write_aloha(tmp_path / "data", 40, jpeg_quality=None)
    removed = folder / f"episode_{split_episodes(40, 0.1, seed=1)[0][0]}.hdf5"
    run = subprocess.Popen([sys.executable, "ACT_for_dataset.py", f"data.path={folder}", f"ckpt_dir={tmp_path / 'ckpts'}",
                            *TINY, "val_fraction=0.1", "data.frames=disk", "num_workers=1", "total_iters=2000",
                            "val_frequency=2000", "save_frequency=2000"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    while run.poll() is None and not any((tmp_path / "ckpts").glob("*")):
        time.sleep(0.1)
    removed.unlink()
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2 and "Traceback" not in stderr, stderr  # above the error: the progress bar
    assert stderr.splitlines()[-1].startswith(f"error: {removed}: removed while training reads its frames")


def test_a_changed_file_is_named_when_its_frames_are_read(tmp_path):
    folder = write_aloha(tmp_path / "data", 2)
    episodes, _ = load_own_episodes(folder, "aloha_hdf5", ["observations/qpos"], "action", None, [30, 40],
                                    frames="disk")
    dataset = ChunkDataset(episodes, 6, "absolute")
    os.utime(folder / "episode_1.hdf5", ns=(0, 0))  # as if re-recorded: another modification time
    assert dataset[[0, 5]]["images"].shape == (2, 1, 2, 3, 30, 40)  # episode 0 is as it was
    with pytest.raises(UserInputError, match=f"^{re.escape(str(folder))}/episode_1.hdf5: changed since the run scanned"):
        dataset[[30]]


def test_frames_go_to_ram_when_they_fit_and_are_read_per_batch_when_they_do_not(tmp_path):
    small, huge = 100, 10**9  # frames of 4 cameras at 120x160: 23 MB, 230 TB
    assert choose_frames("auto", "aloha_hdf5", small, 4, 120, 160, tmp_path) == "ram"
    assert choose_frames("auto", "aloha_hdf5", huge, 4, 120, 160, tmp_path) == "disk"
    assert choose_frames("disk", "aloha_hdf5", small, 4, 120, 160, tmp_path) == "disk"
    with pytest.raises(UserInputError, match="or set data.frames=disk"):
        choose_frames("ram", "aloha_hdf5", huge, 4, 120, 160, tmp_path)
    with pytest.raises(UserInputError, match="data.frames=disk: .* is a LeRobot dataset, whose mp4 videos are only"):
        choose_frames("disk", "lerobot", small, 4, 120, 160, tmp_path)


# --------------------------------------------------------------------------------------------------
# LeRobotDataset v3.0, written by LeRobot
# --------------------------------------------------------------------------------------------------
LEROBOT_SITE = REPO_ROOT / "benchmarks" / ".lerobot_site"


@pytest.fixture(scope="module")
def lerobot_folder(tmp_path_factory):
    if not (LEROBOT_SITE / "lerobot").is_dir():
        pytest.skip("LeRobot is not installed: run benchmarks/install_lerobot.sh (into benchmarks/.lerobot_site)")
    folder = tmp_path_factory.mktemp("lerobot") / "pick"
    # From outside the repository: our `datasets` package would shadow Hugging Face's there.
    subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "lerobot_dataset_writer.py"), str(folder), "3"],
                   cwd=folder.parent, env={**os.environ, "PYTHONPATH": str(LEROBOT_SITE)}, check=True,
                   capture_output=True, timeout=600)
    return folder


def test_lerobot_dataset_reads_back_what_lerobot_wrote(lerobot_folder):
    episodes, cameras = load_own_episodes(lerobot_folder, "lerobot", ["observation.state"], "action", None, None)
    assert cameras == ["observation.images.top", "observation.images.wrist"] and len(episodes) == 3
    for index, episode in enumerate(episodes):
        steps = np.arange(20 + index)[:, None]
        expected_state = index * 100 + steps + np.arange(STATE_DIM) / 10
        np.testing.assert_allclose(episode["state"], expected_state, rtol=1e-6)
        np.testing.assert_allclose(episode["actions"], expected_state + 0.5, rtol=1e-6)
        top = np.stack([frame(index, step) for step in range(20 + index)]).transpose(0, 3, 1, 2)
        # AV1 is lossy, but each decoded frame is the one of its step (red levels 8 apart), in RGB order.
        for decoded, written in ((episode["images"][:, 0], top), (episode["images"][:, 1], 255 - top)):
            per_frame_error = np.abs(decoded.astype(int) - written).mean(axis=(2, 3))  # (T, 3 channels)
            assert per_frame_error.max() < 4  # a neighbouring step would be 8 off (colour conversion: up to 3)


def test_lerobot_dataset_trains_from_one_command(lerobot_folder, tmp_path):
    log = run_script(f"data.path={lerobot_folder}", f"ckpt_dir={tmp_path}", *TINY, "total_iters=10",
                     "val_frequency=10", "save_frequency=10").stdout
    assert "(lerobot): 3 episodes, 63 steps" in log and "[val @ 10]" in log
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "best.pt").is_file()
