"""What a camera policy sees: cropped and resized images, the camera-mode state vector, the random-shift
augmentation, and the backbone's feature grid."""

import json

import h5py
import numpy as np
import torch
import pytest
import torch.nn.functional as F

from datasets.maniskill_demos import load_maniskill_demos
from env.errors import UserInputError
from env.images import crop_frames, resize_frames
from env.maniskill_env import ManiSkillEnv
from models.act import ResNet18Backbone
from models.policy import random_shift


def test_resize_by_two_is_the_mean_of_each_2x2_block():
    frames = np.random.default_rng(0).integers(0, 256, (3, 2, 8, 8, 4), dtype=np.uint8)  # (T, N, H, W, C)
    blocks = frames.reshape(3, 2, 4, 2, 4, 2, 4).astype(np.float64).mean(axis=(3, 5))
    resized = resize_frames(frames, (4, 4))
    assert resized.dtype == np.uint8 and resized.shape == (3, 2, 4, 4, 4)
    assert np.abs(resized.astype(np.float64) - blocks).max() <= 0.5  # rounded to the nearest integer
    assert resize_frames(frames, (8, 8)) is frames and resize_frames(frames, None) is frames  # untouched


def test_random_shift_is_a_crop_of_the_edge_padded_image_with_its_own_offset_per_image():
    torch.manual_seed(0)
    images = torch.rand(6, 2, 3, 10, 12)
    pad = 3
    shifted = random_shift(images, pad)
    assert shifted.shape == images.shape
    offsets = set()
    for b in range(6):
        for n in range(2):
            padded = F.pad(images[b, n][None], (pad,) * 4, mode="replicate")[0]
            matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                       if torch.equal(padded[:, dy:dy + 10, dx:dx + 12], shifted[b, n])]
            assert matches, f"image ({b}, {n}) is not a crop of its padded original"
            offsets.add(matches[0])
    assert len(offsets) > 3  # 12 independent draws out of 49 offsets: not one shift for the whole batch


def test_camera_state_is_proprioception_and_goal_only_in_demos_and_rollouts(pickcube_rgb_demos):
    """The demo loader and the environment adapter build the same 28-d state (qpos 9, qvel 9, goal_pos 3,
    tcp_pose 7; no is_grasped, no object pose) and the same 64x64 images for the same start."""
    episode = load_maniskill_demos(pickcube_rgb_demos, 1, "rgb", "pd_ee_delta_pos", ["base_camera"], image_size=64)[0]
    with h5py.File(pickcube_rgb_demos, "r") as h5:
        obs = h5["traj_0"]["obs"]
        expected = np.concatenate([obs["agent"]["qpos"][0], obs["agent"]["qvel"][0], obs["extra"]["goal_pos"][0],
                                   obs["extra"]["tcp_pose"][0]])
        assert "is_grasped" in obs["extra"]  # recorded by ManiSkill, left out on purpose
    assert episode["state"].shape[1] == 28
    np.testing.assert_allclose(episode["state"][0], expected, rtol=1e-6)
    assert episode["images"].shape[1:] == (1, 3, 64, 64)

    seed = json.loads(pickcube_rgb_demos.with_suffix(".json").read_text())["episodes"][0]["episode_seed"]
    env = ManiSkillEnv("PickCube-v1", 1, "rgb", "pd_ee_delta_pos", ["base_camera"], max_episode_steps=5,
                       image_size=64)
    first = env.reset(seed=seed)
    env.close()
    np.testing.assert_allclose(first["state"][0], episode["state"][0], atol=1e-5)
    assert first["images"].shape == (1, 1, 3, 64, 64)
    # The same scene rendered again: the images agree up to renderer noise.
    assert np.abs(first["images"][0].astype(int) - episode["images"][0].astype(int)).mean() < 2.0


def test_crop_then_resize_is_the_same_view_in_demos_and_rollouts(pickcube_rgb_demos):
    crop = [32, 24, 80, 80]  # [top, left, height, width] of the 128x128 base camera
    episode = load_maniskill_demos(pickcube_rgb_demos, 1, "rgb", "pd_ee_delta_pos", ["base_camera"], image_size=40,
                                   image_crop=crop)[0]
    with h5py.File(pickcube_rgb_demos, "r") as h5:
        raw = h5["traj_0"]["obs"]["sensor_data"]["base_camera"]["rgb"][0]  # (128, 128, 3)
    expected = resize_frames(raw[None, 32:112, 24:104], (40, 40)).transpose(0, 3, 1, 2)  # (1, 3, 40, 40)
    np.testing.assert_array_equal(episode["images"][0], expected)

    seed = json.loads(pickcube_rgb_demos.with_suffix(".json").read_text())["episodes"][0]["episode_seed"]
    env = ManiSkillEnv("PickCube-v1", 1, "rgb", "pd_ee_delta_pos", ["base_camera"], max_episode_steps=5,
                       image_size=40, image_crop=crop)
    first = env.reset(seed=seed)
    env.close()
    assert first["images"].shape == (1, 1, 3, 40, 40)
    assert np.abs(first["images"][0].astype(int) - episode["images"][0].astype(int)).mean() < 2.0

    with pytest.raises(UserInputError, match=r"image_crop \[100, 0, 40, 40\].*128x128"):
        crop_frames(raw[None], [100, 0, 40, 40])


def test_shorter_backbones_are_the_full_trunk_stopped_after_layer3_or_layer2():
    torch.manual_seed(0)
    full = ResNet18Backbone(3, pretrained=False, frozen_batchnorm=False, stages=4).eval()
    images = torch.rand(2, 3, 80, 80) * 255
    normalised = (images / 255.0 - full.pixel_mean) / full.pixel_std
    assert full(images).shape == (2, 512, 3, 3)  # the paper's trunk: 80/32 rounds up to a 3x3 grid
    # stages, channels, grid (80/16: 5x5; 80/8: 10x10), trunk children (conv1, bn1, relu, maxpool, layer1..)
    for stages, channels, grid, children in ((3, 256, 5, 7), (2, 128, 10, 6)):
        short = ResNet18Backbone(3, pretrained=False, frozen_batchnorm=False, stages=stages).eval()
        short.load_state_dict(full.state_dict(), strict=False)  # the same weights for the stages both have
        with torch.no_grad():
            features = short(images)
            expected = full.trunk[:children](normalised)
        assert features.shape == (2, channels, grid, grid) and short.out_channels == channels
        torch.testing.assert_close(features, expected)
