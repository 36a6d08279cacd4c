import subprocess
import sys

import pytest
import yaml

from utils.config import REPO_ROOT, ConfigError, load_config, parse_args

DEFAULT = "configs/ACT_maniskill_config.yaml"


def test_overrides_nested_keys_and_types():
    cfg = load_config(DEFAULT, "configs/ACT_maniskill_state_config.yaml",
                      ["total_iters=12", "model.d_model=64", "lr=1e-3", "cameras=[a, b]", "wandb.mode=disabled"])
    assert cfg.total_iters == 12 and cfg.model.d_model == 64 and cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.cameras == ["a", "b"] and cfg.wandb.mode == "disabled" and cfg.obs_mode == "state"


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'total_iter'.*Did you mean: total_iters"):
        load_config(DEFAULT, None, ["total_iter=5"])
    with pytest.raises(ConfigError, match=r"'model.dmodel'.*model.d_model"):
        load_config(DEFAULT, None, ["model.dmodel=5"])


def test_bad_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"key 'batch_size' expects int.*got str 'big'"):
        load_config(DEFAULT, None, ["batch_size=big"])
    with pytest.raises(ConfigError, match=r"key 'capture_video' expects bool"):
        load_config(DEFAULT, None, ["capture_video=3"])


def test_bad_key_in_a_config_file_names_the_file(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("batch_sise: 8\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: unknown config key 'batch_sise'.*batch_size"):
        load_config(DEFAULT, user)


def run_script(*args):
    return subprocess.run([sys.executable, "ACT_for_Maniskill.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_script_reports_config_errors():
    result = run_script("total_iter=5")
    assert result.returncode != 0 and "Did you mean: total_iters" in result.stderr
    result = run_script("env_id=PickCub-v1", "wandb.mode=disabled")
    assert result.returncode != 0 and "unknown ManiSkill env_id 'PickCub-v1'" in result.stderr
    assert "PickCube-v1" in result.stderr


def test_checkpoint_config_gains_keys_added_later(capsys):
    """A checkpoint saved before a config key existed resumes / evaluates with that key's default."""
    from utils.config import _with_new_keys, read_yaml

    schema = read_yaml(REPO_ROOT / DEFAULT)
    saved = {k: v for k, v in schema.items() if k != "seed"}
    saved["model"] = {k: v for k, v in schema["model"].items() if k != "latent_dim"}
    saved["total_iters"] = 7
    merged = _with_new_keys(schema, saved, "old.pt")
    assert merged["seed"] == schema["seed"] and merged["model"]["latent_dim"] == schema["model"]["latent_dim"]
    assert merged["total_iters"] == 7  # what the checkpoint says still wins
    assert "old.pt predates config key 'model.latent_dim'" in capsys.readouterr().out


@pytest.mark.parametrize("args, expected", [
    (["batch_size=-4"], "key 'batch_size' must be an integer >= 1, got -4"),
    (["model.chunk_size=0"], "key 'model.chunk_size' must be an integer >= 1, got 0"),
    (["val_fraction=1.5"], "key 'val_fraction' must be a fraction in [0, 1), got 1.5"),
    (["model.nhead=3"], "model.d_model (256) must be divisible by model.nhead (3)"),
    (["image_crop=[32, 24, 80]"], "key 'image_crop' must be [top, left, height, width]"),
    (["image_crop=[-1, 0, 80, 80]"], "key 'image_crop' must be [top, left, height, width]"),
    (["model.backbone_stages=2"], "key 'model.backbone_stages' must be 3 or 4"),
    (["mode=eval"], "mode=eval needs checkpoint="),
    (["resume=ckpts/no-such-run/last.pt"], "checkpoint not found"),
])
def test_user_mistakes_end_with_one_line_and_no_traceback(args, expected):
    result = run_script(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and expected in result.stderr


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("total_iters: 10\nmodel: [d_model: 3\n")
    result = run_script("--config", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bad}: not valid YAML (line" in result.stderr


def test_print_config_shows_the_resolved_config_and_where_each_value_came_from(monkeypatch, capsys):
    """One merge: defaults <- task recipe <- config file <- command line. The recipe is asked once, with the task
    the user chose, and fills only what the user left alone; --print-config prints the result, then exits."""
    asked = []

    def recipe(cfg):
        asked.append(cfg.env_id)
        return "test recipe", {"control_mode": "pd_joint_pos", "max_episode_steps": 7}

    monkeypatch.setattr(sys, "argv", ["ACT_for_Maniskill.py", "--config", "configs/ACT_maniskill_state_config.yaml",
                                      "env_id=PushCube-v1", "max_episode_steps=9", "model.d_model=64",
                                      "--print-config"])
    with pytest.raises(SystemExit) as exit_info:
        parse_args(DEFAULT, "test", task_defaults=recipe)
    assert exit_info.value.code == 0 and asked == ["PushCube-v1"]
    out = capsys.readouterr().out
    printed = yaml.safe_load(out[out.index("# the resolved config"):])
    expected = load_config(DEFAULT, "configs/ACT_maniskill_state_config.yaml",
                           ["env_id=PushCube-v1", "max_episode_steps=9", "model.d_model=64"], task_defaults=recipe)
    assert printed == expected.to_dict()
    assert (printed["control_mode"], printed["max_episode_steps"]) == ("pd_joint_pos", 9)  # the command line wins
    source = {line.split(":")[0].strip(): line.split("# ")[1] for line in out.splitlines() if "  # " in line}
    assert source["control_mode"] == "test recipe" and source["max_episode_steps"] == "command line"
    assert source["env_id"] == source["d_model"] == "command line"
    assert source["batch_size"] == "configs/ACT_maniskill_state_config.yaml"
    assert "seed" not in source and "lr_backbone" not in source  # at their defaults: unmarked
