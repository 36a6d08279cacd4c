"""YAML configs with command-line overrides.

Each entry script has a default config file that doubles as the schema: a user's `--config` file and
every `key=value` override (nested keys with dots, e.g. `model.d_model=128`) must name a key that exists
there and give a value of the same type. Mistakes stop the run with a message naming the key, the file
and what was expected; misspelled keys get the closest valid names suggested.
"""

import argparse
import sys
from pathlib import Path

import yaml

from env.errors import UserInputError, did_you_mean

REPO_ROOT = Path(__file__).resolve().parents[1]


class Config(dict):
    """A dict whose keys are also attributes (cfg.model.d_model), for readable code."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{name}'") from None

    def __setattr__(self, name, value):
        self[name] = value

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


class ConfigError(UserInputError):
    pass


def to_config(tree) -> Config:
    return Config({k: to_config(v) if isinstance(v, dict) else v for k, v in tree.items()})


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return tree


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted_keys(value, prefix + key + ".")
    return keys


def _coerce(value, default, key: str, source: str):
    """Check `value` against the type of the schema's `default`; allow int->float and '1e-4'->float."""
    if default is None or value is None:
        return value  # keys whose default is null (paths, optional numbers) take any value or null
    expected = type(default)
    if expected is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if expected is list and isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: key '{key}' expects {expected.__name__} (like {default!r}), "
                      f"got {type(value).__name__} {value!r}")


def _set(schema: dict, tree: dict, dotted_key: str, value, source: str):
    parts = dotted_key.split(".")
    node_schema, node = schema, tree
    for depth, part in enumerate(parts):
        if not isinstance(node_schema, dict) or part not in node_schema:
            valid = _dotted_keys(schema)
            nested = [k for k in valid if k.endswith("." + parts[-1])]  # `d_model=` -> model.d_model
            hint = f" Did you mean: {', '.join(nested)}?" if nested else did_you_mean(dotted_key, valid)
            raise ConfigError(f"{source}: unknown config key '{dotted_key}'."
                              + (hint or " Valid top-level keys: " + ", ".join(schema)))
        if depth == len(parts) - 1:
            if isinstance(node_schema[part], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: key '{dotted_key}' is a section; set its keys, e.g. {dotted_key}.<key>=...")
                for sub_key, sub_value in value.items():
                    _set(schema, tree, f"{dotted_key}.{sub_key}", sub_value, source)
            else:
                node[part] = _coerce(value, node_schema[part], dotted_key, source)
        else:
            node_schema, node = node_schema[part], node[part]


def repo_path(path) -> Path:
    """Relative paths in configs are relative to the repository, wherever the script is started from."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def _find(path) -> Path:
    """A config path as given, else relative to the repository (so scripts run from any folder)."""
    path = Path(path)
    return path if path.exists() or path.is_absolute() else REPO_ROOT / path


def _apply_overrides(schema: dict, tree: dict, overrides) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value (e.g. total_iters=1000)")
        key, text = item.split("=", 1)
        _set(schema, tree, key.strip(), yaml.safe_load(text) if text != "" else None, source="command line")
    return tree


# Ranges the type check cannot express: (dotted key, test, what is expected). Keys absent from a
# simulator's schema are skipped.
VALUE_RULES = [
    *[(key, lambda v: v >= 1, "an integer >= 1") for key in (
        "total_iters", "batch_size", "log_frequency", "val_frequency", "eval_frequency", "save_frequency",
        "num_eval_envs", "frame_stack", "max_episode_steps", "image_size", "control_frequency", "model.chunk_size",
        "model.d_model", "model.nhead", "model.dim_feedforward", "model.num_encoder_layers",
        "model.num_decoder_layers", "model.latent_dim")],
    *[(key, lambda v: v >= 0, "an integer >= 0") for key in (
        "warmup_iters", "num_workers", "num_eval_episodes", "num_video_episodes", "model.num_style_encoder_layers")],
    *[(key, lambda v: v > 0, "a number > 0") for key in ("lr", "grad_clip")],
    *[(key, lambda v: v >= 0, "a number >= 0") for key in (
        "lr_backbone", "weight_decay", "model.kl_weight", "demo_noise")],
    *[(key, lambda v: 0 <= v < 1, "a fraction in [0, 1)") for key in ("val_fraction", "ema_decay", "model.dropout")],
    ("num_demos", lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1"),
    ("mode", lambda v: v in ("train", "eval"), "'train' or 'eval'"),
    ("lr_schedule", lambda v: v in ("cosine", "constant"), "'cosine' or 'constant'"),
    ("action_normalization", lambda v: v in ("mean_std", "min_max"), "'mean_std' or 'min_max'"),
]


def check_values(cfg: "Config", source: str = "config"):
    """Stop on values of the right type but out of range, naming the key and what was expected."""
    for key, is_valid, expected in VALUE_RULES:
        node, parts = cfg, key.split(".")
        for part in parts[:-1]:
            node = node.get(part, {})
        value = node.get(parts[-1])
        if value is not None and not is_valid(value):
            raise ConfigError(f"{source}: key '{key}' must be {expected}, got {value!r}")
    if cfg.model.d_model % cfg.model.nhead:
        raise ConfigError(f"{source}: model.d_model ({cfg.model.d_model}) must be divisible by model.nhead "
                          f"({cfg.model.nhead})")
    if cfg.mode == "eval" and not cfg.checkpoint:
        raise ConfigError(f"{source}: mode=eval needs checkpoint=<path to a .pt file>")


def load_config(default_path, config_path=None, overrides=(), task_defaults=None) -> Config:
    """default config (schema) <- task defaults <- user config file <- `key=value` overrides, range-checked.

    task_defaults(cfg) -> (name, {dotted key: value}) gives defaults that depend on the chosen task (cfg.env_id
    as the user set it), e.g. a ManiSkill task's control mode; they sit below the user's own settings, so a key
    the user sets in a config file or on the command line always wins.
    """
    schema = read_yaml(_find(default_path))
    user_file = {}
    if config_path and _find(config_path).resolve() != _find(default_path).resolve():
        user_file = read_yaml(_find(config_path))

    def merge(task_layer: dict, task_source: str = "") -> Config:
        tree = yaml.safe_load(yaml.safe_dump(schema))  # a deep copy to fill in
        for key, value in task_layer.items():
            _set(schema, tree, key, value, source=task_source)
        for key, value in user_file.items():
            _set(schema, tree, key, value, source=str(config_path))
        return to_config(_apply_overrides(schema, tree, overrides))

    cfg = merge({})
    name, values = task_defaults(cfg) if task_defaults else ("", {})
    if values:
        cfg = merge(values, name)
        yours = [key for key in values if _get(cfg, key) != values[key]]
        print(f"[config] {name}: " + ", ".join(f"{key}={value!r}" for key, value in values.items())
              + (f" (your {', '.join(f'{key}={_get(cfg, key)!r}' for key in yours)} wins)" if yours else ""))
    check_values(cfg, source=str(config_path or default_path) + " + command line")
    return cfg


def _get(cfg: Config, dotted_key: str):
    for part in dotted_key.split("."):
        cfg = cfg[part]
    return cfg


def parse_args(default_config: str, description: str, task_defaults=None) -> tuple[Config, dict | None]:
    """Command line -> (Config, the checkpoint being resumed or evaluated, or None); task_defaults: see
    load_config. `resume=` and `mode=eval checkpoint=` start from the checkpoint's own config, so a run
    continues (or is evaluated) with the settings it was trained with; overrides still apply. The checkpoint
    is read once, here."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any config key can be overridden with key=value, nested keys with "
                                            "dots: total_iters=1000 model.d_model=128 wandb.mode=disabled")
    parser.add_argument("--config", default=default_config, help=f"YAML config (default: {default_config})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    args = parser.parse_args()
    cfg = load_config(default_config, args.config, args.overrides)
    source = cfg.resume or (cfg.checkpoint if cfg.mode == "eval" else None)
    if not source:  # a new run: the task is known now, so its recipe (if any) can fill in defaults
        return (load_config(default_config, args.config, args.overrides, task_defaults) if task_defaults else cfg), None
    from utils.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(repo_path(source))
    schema = read_yaml(_find(default_config))
    saved = _with_new_keys(schema, checkpoint["config"], source)
    cfg = to_config(_apply_overrides(schema, saved, args.overrides))
    check_values(cfg, source=f"{source} (its config) + command line")
    return cfg, checkpoint


def _with_new_keys(schema: dict, saved: dict, source, prefix: str = "") -> dict:
    """A checkpoint's config with keys added to the code since it was saved filled in from the defaults."""
    merged = dict(saved)
    for key, default in schema.items():
        if key not in saved:
            merged[key] = default
            print(f"[config] {source} predates config key '{prefix}{key}': using its default {default!r}")
        elif isinstance(default, dict) and isinstance(saved[key], dict):
            merged[key] = _with_new_keys(default, saved[key], source, f"{prefix}{key}.")
    return merged


def run_main(main):
    """Run an entry script's main(): a user mistake (UserInputError, e.g. a bad key, value or file) ends with
    its one-line message and exit status 2; anything else is a bug and keeps its traceback."""
    try:
        main()
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
