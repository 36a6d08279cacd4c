"""YAML configs with command-line overrides.

Each entry script has a default config file that doubles as the schema: a user's `--config` file and
every `key=value` override (nested keys with dots, e.g. `model.d_model=128`) must name a key that exists
there and give a value of the same type. Mistakes stop the run with a message naming the key, the file
and what was expected; misspelled keys get the closest valid names suggested.
"""

import argparse
import difflib
from pathlib import Path

import yaml


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


class ConfigError(ValueError):
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
        raise ConfigError(f"{path}: not valid YAML:\n{exc}") from exc
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
            close = difflib.get_close_matches(dotted_key, valid, n=3, cutoff=0.6)
            close += [k for k in valid if k.endswith("." + parts[-1]) and k not in close]
            hint = f" Did you mean: {', '.join(close)}?" if close else " Valid top-level keys: " + ", ".join(schema)
            raise ConfigError(f"{source}: unknown config key '{dotted_key}'.{hint}")
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


REPO_ROOT = Path(__file__).resolve().parents[1]


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


def load_config(default_path, config_path=None, overrides=(), task_defaults=None) -> Config:
    """default config (schema) <- task defaults <- user config file <- `key=value` overrides.

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
    if task_defaults is None:
        return cfg
    name, values = task_defaults(cfg)
    if not values:
        return cfg
    cfg = merge(values, name)
    yours = [key for key in values if _get(cfg, key) != values[key]]
    print(f"[config] {name}: " + ", ".join(f"{key}={value!r}" for key, value in values.items())
          + (f" (your {', '.join(f'{key}={_get(cfg, key)!r}' for key in yours)} wins)" if yours else ""))
    return cfg


def _get(cfg: Config, dotted_key: str):
    for part in dotted_key.split("."):
        cfg = cfg[part]
    return cfg


def parse_args(default_config: str, description: str, task_defaults=None) -> Config:
    """Command line -> Config (task_defaults: see load_config). `resume=` and `mode=eval checkpoint=` start from
    the checkpoint's own config, so a run continues (or is evaluated) with the settings it was trained with;
    overrides still apply."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any config key can be overridden with key=value, nested keys with "
                                            "dots: total_iters=1000 model.d_model=128 wandb.mode=disabled")
    parser.add_argument("--config", default=default_config, help=f"YAML config (default: {default_config})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    args = parser.parse_args()
    cfg = load_config(default_config, args.config, args.overrides)
    source = cfg.get("resume") or (cfg.get("checkpoint") if cfg.get("mode") == "eval" else None)
    if source:
        from utils.checkpoint import load_checkpoint

        schema = read_yaml(_find(default_config))
        saved = _with_new_keys(schema, load_checkpoint(source)["config"], source)
        cfg = to_config(_apply_overrides(schema, saved, args.overrides))
    elif task_defaults is not None:
        cfg = load_config(default_config, args.config, args.overrides, task_defaults)
    return cfg


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
