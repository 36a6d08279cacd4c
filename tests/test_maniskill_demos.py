"""Real ManiSkill demonstrations made inside the test with the motion planner + replay tool."""

import json

import h5py
import numpy as np
import pytest
import torch

from datasets.maniskill_demos import generate_demos, load_maniskill_demos
from datasets.replay_buffer import ChunkDataset


def test_state_demos_load_with_expected_shapes(pickcube_state_demos):
    episodes = load_maniskill_demos(pickcube_state_demos, 4, "state", "pd_ee_delta_pos")
    assert len(episodes) == 4
    for episode in episodes:
        steps = len(episode["actions"])
        assert 20 < steps < 200
        assert episode["state"].shape == (steps, 42) and episode["actions"].shape == (steps, 4)
        assert np.abs(episode["actions"][:, :3]).max() <= 1.0  # pd_ee_delta_pos targets are normalised
    meta = json.loads(pickcube_state_demos.with_suffix(".json").read_text())
    assert all(ep["success"] for ep in meta["episodes"])


def test_rgb_demos_load_with_images(pickcube_rgb_demos):
    episodes = load_maniskill_demos(pickcube_rgb_demos, 2, "rgb", "pd_ee_delta_pos", cameras=["base_camera"])
    steps = len(episodes[0]["actions"])
    assert episodes[0]["images"].shape == (steps, 1, 3, 128, 128) and episodes[0]["images"].dtype == np.uint8
    assert episodes[0]["images"].std() > 10  # a rendered scene, not a blank frame
    batch = ChunkDataset(episodes, chunk_size=8, action_type="delta")[np.array([0, steps - 1])]
    assert batch["images"].shape == (2, 1, 1, 3, 128, 128) and batch["images"].dtype == torch.uint8
    assert batch["is_pad"][1].tolist() == [False] + [True] * 7


def test_generation_is_idempotent(pickcube_state_demos, capsys):
    before = pickcube_state_demos.stat().st_mtime_ns
    generate_demos("PickCube-v1", 4, "state", "pd_ee_delta_pos", pickcube_state_demos)
    assert pickcube_state_demos.stat().st_mtime_ns == before
    assert "nothing to do" in capsys.readouterr().out


def test_mismatched_control_mode_names_file_and_modes(pickcube_state_demos):
    with pytest.raises(ValueError, match=r"control_mode='pd_ee_delta_pos'.*'pd_joint_pos'") as info:
        load_maniskill_demos(pickcube_state_demos, 4, "state", "pd_joint_pos")
    assert str(pickcube_state_demos) in str(info.value)


def test_too_few_episodes_is_an_error(pickcube_state_demos):
    with pytest.raises(ValueError, match="holds 4 episodes.*num_demos=10"):
        load_maniskill_demos(pickcube_state_demos, 10, "state", "pd_ee_delta_pos")


def test_corrupt_file_names_the_file(pickcube_state_demos, tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not an hdf5 file")
    broken.with_suffix(".json").write_text(pickcube_state_demos.with_suffix(".json").read_text())
    with pytest.raises(OSError, match="broken.h5.*not a readable HDF5"):
        load_maniskill_demos(broken, 1, "state", "pd_ee_delta_pos")
    with h5py.File(tmp_path / "empty.h5", "w") as h5:
        h5.create_group("traj_0")
    (tmp_path / "empty.json").write_text(pickcube_state_demos.with_suffix(".json").read_text())
    with pytest.raises(KeyError, match="empty.h5.*missing dataset"):
        load_maniskill_demos(tmp_path / "empty.h5", 1, "state", "pd_ee_delta_pos")
