import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from models.policy import build_policy
from utils.checkpoint import save_checkpoint
from utils.config import (RENAMED, REPO_ROOT, ConfigError, Layers, _flatten, checkpoint_layers, load_config,
                          parse_args, schema_fields)
from utils.deploy import DeployedPolicy
from utils.run_setup import prepare_data, start_run
from utils.schema import RUN_CONFIGS
from utils.training import train

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
    saved = load_config(DEFAULT).to_dict()
    del saved["seed"], saved["model"]["latent_dim"]
    saved["total_iters"] = 7
    cfg = checkpoint_layers(saved, "old.pt").build()
    assert cfg.seed == 1 and cfg.model.latent_dim == 32
    assert cfg.total_iters == 7  # what the checkpoint says still wins
    assert "old.pt predates config key 'model.latent_dim'" in capsys.readouterr().out


OLD_CONFIGS = json.loads((REPO_ROOT / "tests/data/configs_at_18d30e4.json").read_text())


@pytest.mark.parametrize("source", ["maniskill", "bigym", "dataset"])
def test_configs_written_before_the_typed_schema_still_load(source, capsys):
    """Checkpoint configs as commit 18d30e4 wrote them (one per entry script; the dataset one with the format and
    cameras its loader wrote back, and the num_eval_episodes=0 its script injected): the source is told from
    their keys, renamed keys are translated, and every value is kept."""
    saved = OLD_CONFIGS[source]
    cfg = checkpoint_layers(saved, "old.pt").build()
    assert cfg.source == source
    kept = {key: value for key, value in _flatten(saved).items() if key not in RENAMED and key != "num_eval_episodes"}
    assert {key: _flatten(cfg.to_dict())[key] for key in kept} == kept
    assert cfg.action_type == (saved.get("action_mode") or saved.get("data", {}).get("action_type") or "auto")
    assert saved["amp"] is False and cfg.precision == "fp32"  # trained in fp32, so resumed in fp32: resume stays exact
    if source != "maniskill":
        assert "is now called 'action_type'" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["maniskill", "bigym", "dataset"])
def test_checkpoints_written_before_the_typed_schema_still_deploy(source, tmp_path):
    """A checkpoint whose config is as 18d30e4 wrote it loads in DeployedPolicy (which imports no training code)
    and acts; an old dataset run's camera order comes from its config, where its loader had written it."""
    saved = OLD_CONFIGS[source]
    cfg = checkpoint_layers(saved, "old.pt").build()
    cameras = 1 if source == "dataset" else 0
    meta = {"state_dim": 5, "action_dim": 3, "num_cameras": cameras, "image_channels": 3, "frozen_batchnorm": False}
    stats = {"state_mean": np.zeros(5), "state_std": np.ones(5), "action_mean": np.zeros(3), "action_std": np.ones(3)}
    model = dataclasses.replace(cfg.model, d_model=32, nhead=4, dim_feedforward=32, pretrained_backbone=False)
    policy = build_policy(model, meta, stats, cfg.frame_stack)
    saved = {**saved, "model": dataclasses.asdict(model)}
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"policy": policy.state_dict(), "ema": None, "config": saved, "shape_meta": meta,
                           "iteration": 3, "run_name": "old"})
    deployed = DeployedPolicy.from_checkpoint(path, device="cpu")
    observation = {"state": np.zeros(5, np.float32)}
    if source == "dataset":
        assert deployed.cameras == ["cam_high"] and deployed.image_size == [120, 160]
        observation["images"] = {"cam_high": np.zeros((240, 320, 3), np.uint8)}
    assert deployed.select_action(observation).shape == (3,)


def test_every_key_is_type_checked_even_where_the_default_is_null():
    for source, cls in RUN_CONFIGS.items():
        layers = Layers(cls)
        for key, annotation in schema_fields(cls).items():
            if dataclasses.is_dataclass(annotation) or key == "source":
                continue
            with pytest.raises(ConfigError, match=f"key '{key}' expects"):
                layers.set(key, {"not": "a value"}, "test")


def test_old_names_in_a_config_file_load_and_say_what_to_rename(tmp_path, capsys):
    old = tmp_path / "old_bigym.yaml"
    old.write_text("action_mode: delta\namp: true\n")
    cfg = load_config("configs/ACT_bigym_config.yaml", old)
    assert (cfg.action_type, cfg.precision) == ("delta", "bf16")
    log = capsys.readouterr().out
    assert f"{old}: key 'action_mode' is now called 'action_type'" in log
    assert f"{old}: key 'amp' is now called 'precision' (amp=True is precision=bf16)" in log
    with pytest.raises(ConfigError, match=r"key 'precision' expects one of 'auto', 'bf16', 'fp32', got list \[1\]"):
        load_config("configs/ACT_maniskill_config.yaml", None, ["amp=[1]"])
    with pytest.raises(ConfigError, match="It is a key of maniskill, bigym, aloha runs; this is a dataset run"):
        load_config("configs/ACT_dataset_config.yaml", None, ["env_id=PickCube-v1"])


def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path):
    """resume= with a different model shape stops in one line before start_run rewrites config.yaml and
    run_info.json (and before any demo is looked for)."""
    from test_same_training import OVERRIDES, episodes

    cfg = load_config(DEFAULT, "configs/ACT_maniskill_state_config.yaml",
                      OVERRIDES + [f"ckpt_dir={tmp_path}", f"video_dir={tmp_path / 'videos'}"])
    run = start_run(cfg, None)
    data = prepare_data(cfg, episodes(), "delta")
    train(cfg, run, build_policy(cfg.model, data.shape_meta, data.stats), data)
    before = {name: (run.ckpt_dir / name).read_bytes() for name in ("config.yaml", "run_info.json")}

    result = run_script(f"resume={run.ckpt_dir / 'last.pt'}", "model.d_model=256")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert ("model.d_model=256, but" in result.stderr and "was trained with 32" in result.stderr
            and len(result.stderr.strip().splitlines()) == 1)
    assert {name: (run.ckpt_dir / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("args, expected", [
    (["batch_size=-4"], "key 'batch_size' must be an integer >= 1, got -4"),
    (["model.chunk_size=0"], "key 'model.chunk_size' must be an integer >= 1, got 0"),
    (["val_fraction=1.5"], "key 'val_fraction' must be a fraction in [0, 1), got 1.5"),
    (["model.nhead=3"], "model.d_model (256) must be divisible by model.nhead (3)"),
    (["image_crop=[32, 24, 80]"], "key 'image_crop' must be [top, left, height, width]"),
    (["image_crop=[-1, 0, 80, 80]"], "key 'image_crop' must be [top, left, height, width]"),
    (["model.backbone_stages=1"], "key 'model.backbone_stages' must be 2, 3 or 4"),
    (["query_frequency=abc"], "key 'query_frequency' expects int or null, got str 'abc'"),
    (["image_size=abc"], "key 'image_size' expects int or null, got str 'abc'"),
    (["image_crop=abc"], "key 'image_crop' expects a list of int or null, got str 'abc'"),
    (["query_frequency=40", "model.chunk_size=30"], "query_frequency (40) must be at most model.chunk_size (30)"),
    (["obs_mode=rbg"], "key 'obs_mode' expects one of 'state', 'rgb', 'rgbd', got str 'rbg'. Did you mean: rgb"),
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
