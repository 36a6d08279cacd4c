import numpy as np
import pytest
import torch

from datasets.chunk_dataset import ChunkDataset, compute_stats, infer_action_type, make_train_loader, split_episodes


def two_episodes():
    """Episode A: 4 steps with actions 1..4, episode B: 2 steps with actions 10, 20 (1-d actions)."""
    return [
        {"state": np.arange(4, dtype=np.float32)[:, None], "actions": np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)},
        {"state": np.array([[100.0], [101.0]], np.float32), "actions": np.array([[10.0], [20.0]], np.float32)},
    ]


def test_absolute_actions_pad_with_the_last_action():
    data = ChunkDataset(two_episodes(), chunk_size=3, action_type="absolute")
    batch = data[np.array([2, 3, 4, 5])]
    expected = [[3, 4, 4], [4, 4, 4], [10, 20, 20], [20, 20, 20]]
    np.testing.assert_array_equal(batch["actions"][..., 0].numpy(), expected)
    np.testing.assert_array_equal(batch["is_pad"].numpy(), [[0, 0, 1], [0, 1, 1], [0, 0, 1], [0, 1, 1]])


def test_delta_actions_pad_with_zeros():
    data = ChunkDataset(two_episodes(), chunk_size=3, action_type="delta")
    batch = data[np.array([2, 3, 4, 5])]
    expected = [[3, 4, 0], [4, 0, 0], [10, 20, 0], [20, 0, 0]]
    np.testing.assert_array_equal(batch["actions"][..., 0].numpy(), expected)
    np.testing.assert_array_equal(batch["is_pad"].numpy(), [[0, 0, 1], [0, 1, 1], [0, 0, 1], [0, 1, 1]])


def test_no_padding_inside_an_episode():
    batch = ChunkDataset(two_episodes(), chunk_size=3, action_type="absolute")[np.array([0, 1])]
    np.testing.assert_array_equal(batch["actions"][..., 0].numpy(), [[1, 2, 3], [2, 3, 4]])
    assert not batch["is_pad"].any()


def test_frame_stack_clamps_at_episode_start():
    data = ChunkDataset(two_episodes(), chunk_size=2, action_type="absolute", frame_stack=2)
    batch = data[np.array([0, 3, 4, 5])]
    np.testing.assert_array_equal(batch["state"][..., 0].numpy(), [[0, 0], [2, 3], [100, 100], [100, 101]])


def test_action_type_from_control_mode():
    assert infer_action_type("pd_ee_delta_pos") == "delta"
    assert infer_action_type("pd_joint_pos") == "absolute"
    with pytest.raises(ValueError, match="action_type"):
        ChunkDataset(two_episodes(), 3, "relative")


def test_split_holds_out_whole_episodes_deterministically():
    train, val = split_episodes(20, 0.1, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == list(range(20))
    assert split_episodes(20, 0.1, seed=3) == (train, val)


def test_stats_floor_constant_dimensions():
    stats = compute_stats(two_episodes())
    assert stats["action_std"][0] > 1 and stats["state_std"].shape == (1,)
    constant = [{"state": np.ones((5, 2), np.float32), "actions": np.ones((5, 1), np.float32)}]
    assert compute_stats(constant)["state_std"].min() == pytest.approx(1e-2)


def test_loader_gives_identical_batches_with_workers():
    data = ChunkDataset(two_episodes(), chunk_size=3, action_type="absolute")
    def first_batches(num_workers):
        loader = iter(make_train_loader(data, batch_size=4, seed=7, num_workers=num_workers))
        return [next(loader) for _ in range(3)]
    for a, b in zip(first_batches(0), first_batches(2)):
        for key in a:
            assert torch.equal(a[key], b[key])
