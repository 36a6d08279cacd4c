"""YAML configs with command-line overrides.

Each entry script has a default config file that doubles as the schema: a user's `--config` file and
every `key=value` override (nested keys with dots, e.g. `model.d_model=128`) must name a key that exists
there and give a value of the same type. Mistakes stop the run with a message naming the key, the file
and what was expected; misspelled keys get the closest valid names suggested.
"""

import argparse
import copy
import errno
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


def _set(schema: dict, tree: dict, dotted_key: str, value, source: str, sources: dict):
    """tree[dotted_key] = value, checked against the schema; sources[leaf key] = source for every key it sets."""
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
                    _set(schema, tree, f"{dotted_key}.{sub_key}", sub_value, source, sources)
            else:
                node[part] = _coerce(value, node_schema[part], dotted_key, source)
                sources[dotted_key] = source
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


def _parse_overrides(overrides) -> dict:
    """["key=value", ...] -> {dotted key: YAML-parsed value}."""
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value (e.g. total_iters=1000)")
        key, text = item.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(text) if text != "" else None
    return parsed


# Ranges the type check cannot express: (dotted key, test, what is expected). Keys absent from a
# simulator's schema are skipped.
VALUE_RULES = [
    *[(key, lambda v: v >= 1, "an integer >= 1") for key in (
        "total_iters", "batch_size", "log_frequency", "val_frequency", "eval_frequency", "save_frequency",
        "num_eval_envs", "frame_stack", "max_episode_steps", "image_size", "control_frequency", "model.chunk_size",
        "model.d_model", "model.nhead", "model.dim_feedforward", "model.num_encoder_layers",
        "model.num_decoder_layers", "model.latent_dim")],
    *[(key, lambda v: v >= 0, "an integer >= 0") for key in (
        "warmup_iters", "kl_warmup_iters", "num_workers", "demo_workers", "num_eval_episodes", "num_video_episodes",
        "keep_checkpoints", "model.num_style_encoder_layers")],
    *[(key, lambda v: v > 0, "a number > 0") for key in ("lr", "grad_clip")],
    *[(key, lambda v: v >= 0, "a number >= 0") for key in (
        "lr_backbone", "weight_decay", "model.kl_weight", "demo_noise")],
    *[(key, lambda v: 0 <= v < 1, "a fraction in [0, 1)") for key in ("val_fraction", "ema_decay", "model.dropout")],
    ("num_demos", lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1"),
    ("image_crop", lambda v: isinstance(v, list) and len(v) == 4 and all(isinstance(x, int) for x in v)
     and min(v[:2]) >= 0 and min(v[2:]) >= 1, "[top, left, height, width]: integers, top and left >= 0, height "
     "and width >= 1 (or null)"),
    ("model.backbone_stages", lambda v: v in (3, 4), "3 or 4 (ResNet18 up to layer3 or layer4)"),
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
        raise ConfigError(f"{source}: mode=eval needs checkpoint=<a .pt file or an exported policy folder>")


def resolve_config(default_path, config_path=None, overrides=(), task_defaults=None) -> tuple[Config, dict]:
    """The config of a new run, merged once, later layers winning:

        default config (the schema)  <-  the task's recipe  <-  the user's config file  <-  key=value overrides

    task_defaults(cfg) -> (name, {dotted key: value}) gives the recipe, defaults that depend on the chosen task
    (e.g. a ManiSkill task's control mode). It needs cfg.env_id as the user set it, so it is asked once the user's
    layers are in, and fills only the keys they left alone. Returns the range-checked config and, for every key a
    layer set, that layer's name.
    """
    schema = read_yaml(_find(default_path))
    tree, sources = _user_layers(schema, default_path, config_path, overrides)
    if task_defaults:
        _fill_in_recipe(schema, tree, sources, task_defaults)
    cfg = to_config(tree)
    check_values(cfg, source=str(config_path or default_path) + " + command line")
    return cfg, sources


def _user_layers(schema: dict, default_path, config_path, overrides) -> tuple[dict, dict]:
    """The defaults <- the user's config file <- key=value overrides, and the source of every key they set."""
    tree, sources = copy.deepcopy(schema), {}
    if config_path and _find(config_path).resolve() != _find(default_path).resolve():
        for key, value in read_yaml(_find(config_path)).items():
            _set(schema, tree, key, value, str(config_path), sources)
    for key, value in _parse_overrides(overrides).items():
        _set(schema, tree, key, value, "command line", sources)
    # Checked now as well as once complete: a mistake stops the run before a task recipe imports a simulator.
    check_values(to_config(tree), source=str(config_path or default_path) + " + command line")
    return tree, sources


def _fill_in_recipe(schema: dict, tree: dict, sources: dict, task_defaults):
    """The task's recipe into the keys the user did not set; the log names the recipe and any key that overrode it."""
    name, recipe = task_defaults(to_config(tree))
    yours = [key for key in recipe if key in sources]
    for key, value in recipe.items():
        if key not in yours:
            _set(schema, tree, key, value, name, sources)
    if recipe:
        print(f"[config] {name}: " + ", ".join(f"{key}={value!r}" for key, value in recipe.items())
              + (f" (your {', '.join(f'{key}={_get(tree, key)!r}' for key in yours)} wins)" if yours else ""))


def load_config(default_path, config_path=None, overrides=(), task_defaults=None) -> Config:
    """resolve_config without the sources."""
    return resolve_config(default_path, config_path, overrides, task_defaults)[0]


def _get(tree: dict, dotted_key: str):
    for part in dotted_key.split("."):
        tree = tree[part]
    return tree


def format_config(cfg: dict, sources: dict, prefix: str = "") -> str:
    """The config as YAML, every key a layer set marked with where its value came from."""
    lines, indent = [], "  " * prefix.count(".")
    for key, value in cfg.items():
        if isinstance(value, dict):
            lines += [f"{indent}{key}:", format_config(value, sources, f"{prefix}{key}.")]
            continue
        line = f"{indent}{key}: " + yaml.safe_dump([value], default_flow_style=True, width=1000).strip()[1:-1]
        lines.append(f"{line:<40}  # {sources[prefix + key]}" if prefix + key in sources else line)
    return "\n".join(lines)


def parse_args(default_config: str, description: str, task_defaults=None) -> tuple[Config, dict | None]:
    """Command line -> (Config, the checkpoint being resumed or evaluated, or None); task_defaults: see
    resolve_config. `resume=` and `mode=eval checkpoint=` start from the checkpoint's own config, so a run
    continues (or is evaluated) with the settings it was trained with; overrides still apply. The checkpoint
    is read once, here. --print-config prints the result with the source of every key not at its default, then
    exits."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any config key can be overridden with key=value, nested keys with "
                                            "dots: total_iters=1000 model.d_model=128 wandb.mode=disabled")
    parser.add_argument("--config", default=default_config, help=f"YAML config (default: {default_config})")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, each key that is not at its default with where its value "
                             "came from (config file, task recipe, checkpoint, command line), and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    args = parser.parse_args()
    schema = read_yaml(_find(default_config))
    tree, sources = _user_layers(schema, default_config, args.config, args.overrides)
    source = tree["resume"] or (tree["checkpoint"] if tree["mode"] == "eval" else None)
    if source:
        cfg, sources, checkpoint = _config_from_checkpoint(schema, source, args.overrides, for_resume=bool(tree["resume"]))
    else:  # a new run: the task is known, so its recipe (if any) can fill in defaults
        if task_defaults:
            _fill_in_recipe(schema, tree, sources, task_defaults)
        cfg, checkpoint = to_config(tree), None
        check_values(cfg, source=f"{args.config} + command line")
    if args.print_config:
        print(f"# the resolved config: a comment names where a value came from, unmarked keys keep the defaults "
              f"of {default_config}\n" + format_config(cfg, sources))
        sys.exit(0)
    return cfg, checkpoint


def _config_from_checkpoint(schema: dict, source: str, overrides, for_resume: bool) -> tuple[Config, dict, dict]:
    """A checkpoint's own config (keys added since filled in from the defaults) <- key=value overrides."""
    from utils.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(repo_path(source), for_resume=for_resume)
    tree = _with_new_keys(schema, checkpoint["config"], source)
    sources = {key: f"{source} (its config)" for key in _keys_off_default(schema, tree)}
    for key, value in _parse_overrides(overrides).items():
        _set(schema, tree, key, value, "command line", sources)
    cfg = to_config(tree)
    check_values(cfg, source=f"{source} (its config) + command line")
    return cfg, sources, checkpoint


def _keys_off_default(schema: dict, tree: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose value in tree differs from the schema's (or that the schema no longer has)."""
    keys = []
    for key, value in tree.items():
        default = schema.get(key) if isinstance(schema, dict) else None
        if isinstance(value, dict):
            keys += _keys_off_default(default, value, f"{prefix}{key}.")
        elif value != default:
            keys.append(prefix + key)
    return keys


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
    """Run an entry script's main(): a user mistake (UserInputError, e.g. a bad key, value or file) or a full or
    read-only disk ends with one line and exit status 2; anything else is a bug and keeps its traceback."""
    try:
        main()
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        print(f"error: {exc.strerror}" + (f": {exc.filename}" if exc.filename else "") + " (checkpoints are written "
              f"atomically: the last good one is intact)", file=sys.stderr)
        sys.exit(2)
