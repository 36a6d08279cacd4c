"""Shared fixtures: real ManiSkill demonstrations generated once per test session (no mocks)."""

import pytest

from datasets.maniskill_demos import default_demo_path, generate_demos


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    return tmp_path_factory.mktemp("demos")


def _demos(demo_root, obs_mode: str, num_demos: int):
    path = default_demo_path(demo_root, "PickCube-v1", obs_mode, "pd_ee_delta_pos", num_demos)
    return generate_demos("PickCube-v1", num_demos, obs_mode, "pd_ee_delta_pos", path)


@pytest.fixture(scope="session")
def pickcube_state_demos(demo_root):
    """4 real motion-planned PickCube-v1 demos replayed to state obs + pd_ee_delta_pos."""
    return _demos(demo_root, "state", 4)


@pytest.fixture(scope="session")
def pickcube_rgb_demos(demo_root):
    """2 real PickCube-v1 demos replayed to rgb obs (128x128 base_camera) + pd_ee_delta_pos."""
    return _demos(demo_root, "rgb", 2)
