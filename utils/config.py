"""A run's config: the typed defaults of utils/schema.py, YAML files and `key=value` overrides, checked.

Layers, later ones winning:

    utils/schema.py's defaults  <-  the entry script's default file (configs/ACT_<source>_config.yaml, which names
    the source)  <-  the task's recipe  <-  the user's --config file  <-  key=value overrides

A resumed or evaluated run starts from its checkpoint's own config instead of the files (old checkpoints
included: renamed keys are translated by RENAMED, keys added since get their defaults), and may not change the
model's architecture. Every value is checked against its key's type and range (VALUE_RULES) as it is read; a
mistake stops the run in one line naming the key, the value, what was expected and where it came from, with the
closest valid keys suggested for a misspelled one. Nothing is written before the config is complete and checked.

Why hand-written, not OmegaConf or draccus: both check types, but neither suggests keys, neither knows
`Literal` choices or `list | None` unions (OmegaConf 2.3), draccus takes `--key value` flags rather than the
`key=value` habit, and their errors are multi-line; the recipe layer, the checkpoint layer and --print-config's
"where did this value come from" would still be ours. What is left for a library to do is ~60 lines here.
"""

import argparse
import dataclasses
import errno
import os
import signal
import sys
import types
import typing
from pathlib import Path

import yaml

from env.errors import RunStopped, UserInputError, did_you_mean
from models.config import ARCHITECTURE_KEYS
from utils.checkpoint import load_checkpoint
from utils.schema import RUN_CONFIGS, RunConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

# Keys renamed since checkpoints and config files were first written: old name -> new name. Applied to every
# layer, checkpoint configs included, so old files keep loading (with a note saying what to rename).
RENAMED = {
    "action_mode": "action_type",  # BiGym's name for it
    "data.action_type": "action_type",  # own data's name for it
    "amp": "precision",  # a boolean until bf16 became the CPU default
}
# How the values of a renamed key translate, where they changed too: old key -> {old value: new value}.
RENAMED_VALUES = {
    "amp": {True: "bf16", False: "fp32"},
}
# Keys old checkpoints hold that the schema no longer has, and why they can be ignored.
DROPPED = {
    "num_eval_episodes": "dataset runs have no simulator to evaluate in",  # ACT_for_dataset.py used to set it to 0
}


class ConfigError(UserInputError):
    pass


def repo_path(path) -> Path:
    """Relative paths in configs are relative to the repository, wherever the script is started from."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def _find(path) -> Path:
    """A config path as given, else relative to the repository (so scripts run from any folder)."""
    path = Path(path)
    return path if path.exists() or path.is_absolute() else REPO_ROOT / path


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


def _parse_overrides(overrides) -> dict:
    """["key=value", ...] -> {dotted key: YAML-parsed value}."""
    parsed = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value (e.g. total_iters=1000)")
        key, text = item.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(text) if text != "" else None
    return parsed


# --------------------------------------------------------------------------------------------------
# Types: every key's annotation in utils/schema.py, checked on every value set
# --------------------------------------------------------------------------------------------------
def schema_fields(cls, prefix: str = "") -> dict:
    """{dotted key: type} of a config class, sections (dataclasses) included."""
    fields = {}
    for name, annotation in typing.get_type_hints(cls).items():
        fields[prefix + name] = annotation
        if dataclasses.is_dataclass(annotation):
            fields.update(schema_fields(annotation, f"{prefix}{name}."))
    return fields


def _describe(annotation) -> str:
    """A type as the error messages say it: int, int or null, list of str, one of 'train', 'eval'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return annotation.__name__


def _coerce(value, annotation):
    """value as `annotation` (int -> float and '1e-4' -> float allowed), or raise TypeError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg)
                except TypeError:
                    pass
        raise TypeError
    if origin is typing.Literal:
        if value in args and isinstance(value, str):
            return value
        raise TypeError
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_coerce(item, args[0]) for item in value]
    if annotation is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise TypeError from None
    if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
        return value
    raise TypeError


def _check_type(value, annotation, key: str, source: str):
    try:
        return _coerce(value, annotation)
    except TypeError:
        hint = ""
        if typing.get_origin(annotation) is typing.Literal and isinstance(value, str):
            hint = did_you_mean(value, typing.get_args(annotation))
        raise ConfigError(f"{source}: key '{key}' expects {_describe(annotation)}, got {type(value).__name__} "
                          f"{value!r}" + (f".{hint}" if hint else "")) from None


# --------------------------------------------------------------------------------------------------
# Ranges the types cannot express: (dotted key, test, what is expected); keys a run lacks are skipped
# --------------------------------------------------------------------------------------------------
VALUE_RULES = [
    *[(key, lambda v: v >= 1, "an integer >= 1") for key in (
        "total_iters", "batch_size", "log_frequency", "val_frequency", "eval_frequency", "save_frequency",
        "num_eval_envs", "frame_stack", "max_episode_steps", "control_frequency", "query_frequency",
        "model.chunk_size", "model.d_model", "model.nhead", "model.dim_feedforward", "model.num_encoder_layers",
        "model.num_decoder_layers", "model.latent_dim")],
    *[(key, lambda v: v >= 0, "an integer >= 0") for key in (
        "warmup_iters", "kl_warmup_iters", "num_workers", "demo_workers", "num_eval_episodes", "num_video_episodes",
        "keep_checkpoints", "model.num_style_encoder_layers", "model.random_shift")],
    *[(key, lambda v: v > 0, "a number > 0") for key in ("lr", "grad_clip")],
    *[(key, lambda v: v >= 0, "a number >= 0") for key in (
        "lr_backbone", "weight_decay", "ensemble_k", "model.kl_weight", "demo_noise")],
    *[(key, lambda v: 0 <= v < 1, "a fraction in [0, 1)") for key in ("val_fraction", "ema_decay", "model.dropout")],
    *[(key, lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1") for key in ("num_demos", "data.num_episodes")],
    ("image_crop", lambda v: len(v) == 4 and min(v[:2]) >= 0 and min(v[2:]) >= 1,
     "[top, left, height, width]: integers, top and left >= 0, height and width >= 1 (or null)"),
    ("image_size", lambda v: v >= 1 if isinstance(v, int) else len(v) == 2 and min(v) >= 32,
     "an integer >= 1 (square images) or, for ALOHA, [height, width] with integers >= 32"),
    ("data.image_size", lambda v: len(v) == 2 and min(v) >= 32,
     "[height, width] with integers >= 32 (ResNet18 shrinks images 32x) or null"),
    ("model.backbone_stages", lambda v: v in (2, 3, 4), "2, 3 or 4 (ResNet18 up to layer2, layer3 or layer4)"),
]


def _get(tree: dict, dotted_key: str, default=None):
    for part in dotted_key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def check_values(tree: dict, source: str):
    """Stop on values of the right type but out of range, naming the key and what was expected."""
    for key, is_valid, expected in VALUE_RULES:
        value = _get(tree, key)
        if value is not None and not is_valid(value):
            raise ConfigError(f"{source}: key '{key}' must be {expected}, got {value!r}")
    model = tree["model"]
    if model["d_model"] % model["nhead"]:
        raise ConfigError(f"{source}: model.d_model ({model['d_model']}) must be divisible by model.nhead "
                          f"({model['nhead']})")
    if tree["mode"] == "eval" and not tree["checkpoint"]:
        raise ConfigError(f"{source}: mode=eval needs checkpoint=<a .pt file or an exported policy folder>")


def check_complete(tree: dict, source: str):
    """What only the finished config can tell (a task's recipe may set either key)."""
    chunk_size, query_frequency = tree["model"]["chunk_size"], tree["query_frequency"]
    if query_frequency is not None and query_frequency > chunk_size:
        raise ConfigError(f"{source}: query_frequency ({query_frequency}) must be at most model.chunk_size "
                          f"({chunk_size}): open loop plays at most one chunk before querying again")


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------
class Layers:
    """The config of one run as a nested dict being built, with the source of every key a layer set."""

    def __init__(self, cls):
        self.cls, self.fields = cls, schema_fields(cls)
        self.tree = dataclasses.asdict(cls())
        self.sources = {}
        self.default_file = None  # the entry script's default file: its values are defaults a recipe may replace

    def set(self, dotted_key: str, value, source: str):
        """tree[dotted_key] = value, checked against the schema."""
        if dotted_key in RENAMED:
            # Compared, not looked up: a list or a section (unhashable) passes through to the type check below.
            translate = RENAMED_VALUES.get(dotted_key, {}).items()
            new_value = next((new for old, new in translate if old == value and type(old) is type(value)), value)
            print(f"[config] {source}: key '{dotted_key}' is now called '{RENAMED[dotted_key]}'"
                  + (f" ({dotted_key}={value} is {RENAMED[dotted_key]}={new_value})" if new_value != value else ""))
            dotted_key, value = RENAMED[dotted_key], new_value
        if dotted_key not in self.fields:
            raise ConfigError(f"{source}: unknown config key '{dotted_key}'." + self._suggest(dotted_key))
        annotation = self.fields[dotted_key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{dotted_key}' is a section; set its keys, e.g. "
                                  f"{dotted_key}.<key>=...")
            for sub_key, sub_value in value.items():
                self.set(f"{dotted_key}.{sub_key}", sub_value, source)
            return
        if dotted_key == "source" and value != self.cls.source:
            raise ConfigError(f"{source}: source={value!r}, but this is a {self.cls.source} run; "
                              + (f"use the entry script for {value!r} runs" if value in RUN_CONFIGS else
                                 f"expected one of {', '.join(RUN_CONFIGS)}"))
        *parents, leaf = dotted_key.split(".")
        node = self.tree
        for part in parents:
            node = node[part]
        node[leaf] = _check_type(value, annotation, dotted_key, source)
        self.sources[dotted_key] = source

    def set_all(self, tree: dict, source: str):
        for key, value in tree.items():
            self.set(key, value, source)

    def _suggest(self, dotted_key: str) -> str:
        leaf = dotted_key.split(".")[-1]
        nested = [key for key in self.fields if key.endswith("." + leaf)]  # `d_model=` -> model.d_model
        if nested:
            return f" Did you mean: {', '.join(nested)}?"
        hint = did_you_mean(dotted_key, self.fields)
        if hint:
            return hint
        others = [name for name, cls in RUN_CONFIGS.items() if dotted_key in schema_fields(cls)]
        if others:
            return f" It is a key of {', '.join(others)} runs; this is a {self.cls.source} run."
        return " Valid top-level keys: " + ", ".join(key for key in self.fields if "." not in key)

    def build(self) -> RunConfig:
        return _build(self.cls, self.tree)


def _build(cls, tree: dict):
    hints = typing.get_type_hints(cls)
    return cls(**{key: _build(hints[key], value) if dataclasses.is_dataclass(hints[key]) else value
                  for key, value in tree.items()})


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"model": {"d_model": 8}} -> {"model.d_model": 8}; lists stay values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _default_layers(default_path) -> Layers:
    """The schema's defaults of the source the default file names, with that file's values on top."""
    path = _find(default_path)
    tree = read_yaml(path)
    source = tree.get("source")
    if source not in RUN_CONFIGS:
        raise ConfigError(f"{default_path}: key 'source' must name the kind of run, one of "
                          f"{', '.join(RUN_CONFIGS)}; got {source!r}")
    layers = Layers(RUN_CONFIGS[source])
    layers.default_file = str(default_path)
    layers.set_all(tree, layers.default_file)
    return layers


def default_config_file(source: str) -> str:
    """Each source's default file; the entry scripts use it, and deploy fills old checkpoints' new keys from it."""
    return f"configs/ACT_{source}_config.yaml"


def resolve_config(default_path, config_path=None, overrides=(), task_defaults=None) -> tuple[RunConfig, dict,
                                                                                               dict | None]:
    """The run's config, the source of every key a layer set, and the checkpoint being resumed or evaluated (None
    for a new run). task_defaults(cfg) -> (name, {dotted key: value}) gives a task's recipe: defaults that depend
    on the task the user chose, asked once the user's layers are in; it fills only keys they left alone."""
    layers = _default_layers(default_path)
    files = f"{config_path or default_path} + command line"
    if config_path and _find(config_path).resolve() != _find(default_path).resolve():
        layers.set_all(read_yaml(_find(config_path)), str(config_path))
    overrides = _parse_overrides(overrides)
    layers.set_all(overrides, "command line")
    check_values(layers.tree, files)  # before a recipe imports a simulator, before a checkpoint is read
    tree = layers.tree
    saved = tree["resume"] or (tree["checkpoint"] if tree["mode"] == "eval" else None)
    if saved:
        checkpoint = load_checkpoint(repo_path(saved), for_resume=bool(tree["resume"]))
        layers = checkpoint_layers(checkpoint["config"], saved, _default_layers(default_path))
        trained = _flatten(layers.tree)
        layers.set_all(overrides, "command line")
        _refuse_architecture_change(trained, layers.tree, saved)
        check_values(layers.tree, f"{saved} (its config) + command line")
        check_complete(layers.tree, f"{saved} (its config) + command line")
        return layers.build(), layers.sources, checkpoint
    if task_defaults:
        _fill_in_recipe(layers, task_defaults)
        check_values(layers.tree, files)
    check_complete(layers.tree, files)
    return layers.build(), layers.sources, None


def _fill_in_recipe(layers: Layers, task_defaults):
    """The task's recipe into the keys the user did not set; the log names the recipe and any key that overrode it."""
    name, recipe = task_defaults(layers.build())
    yours = [key for key in recipe if key in layers.sources and layers.sources[key] != layers.default_file]
    for key, value in recipe.items():
        if key not in yours:
            layers.set(key, value, name)
    if recipe:
        print(f"[config] {name}: " + ", ".join(f"{key}={value!r}" for key, value in recipe.items())
              + (f" (your {', '.join(f'{key}={_get(layers.tree, key)!r}' for key in yours)} wins)" if yours else ""))


def checkpoint_layers(saved: dict, path, defaults: Layers | None = None) -> Layers:
    """A checkpoint's config over the defaults of its source: renamed keys translated, keys added to the code since
    it was saved at their defaults (said once each), every value checked like a config file's."""
    saved_source = saved.get("source") or _legacy_source(saved)
    defaults = defaults or _default_layers(default_config_file(saved_source))
    if saved_source != defaults.cls.source:
        raise ConfigError(f"{path}: a {saved_source} run's checkpoint; this is the {defaults.cls.source} entry "
                          f"script (use the one for {saved_source})")
    flat = {key: value for key, value in _flatten(saved).items() if key not in DROPPED or key in defaults.fields}
    saved_keys = {RENAMED.get(key, key) for key in flat}
    for key in schema_fields(defaults.cls):
        if key not in saved_keys and key != "source" and not dataclasses.is_dataclass(defaults.fields[key]):
            print(f"[config] {path} predates config key '{key}': using its default {_get(defaults.tree, key)!r}")
    default_flat = _flatten(defaults.tree)
    for key, value in flat.items():
        defaults.set(key, value, f"{path} (its config)")
        if value == default_flat.get(RENAMED.get(key, key)):
            defaults.sources.pop(RENAMED.get(key, key), None)  # only keys off their defaults are marked
    return defaults


def _legacy_source(saved: dict) -> str:
    """The source of a checkpoint written before configs named it, told by keys only that kind of run had."""
    return "dataset" if "data" in saved else "bigym" if "action_mode" in saved else "maniskill"


def _refuse_architecture_change(trained: dict, tree: dict, source: str):
    now = _flatten(tree)
    for key in [f"model.{key}" for key in ARCHITECTURE_KEYS] + ["frame_stack"]:
        if now[key] != trained[key]:
            raise ConfigError(f"command line: {key}={now[key]!r}, but {source} was trained with {trained[key]!r}; "
                              f"a resumed or evaluated run keeps its model's shape (start a new run to change it)")


def load_config(default_path, config_path=None, overrides=(), task_defaults=None) -> RunConfig:
    """resolve_config's config alone."""
    return resolve_config(default_path, config_path, overrides, task_defaults)[0]


def config_from_checkpoint(checkpoint: dict, path) -> RunConfig:
    """The typed config of a loaded checkpoint (utils/deploy.py), old checkpoints included."""
    return checkpoint_layers(checkpoint["config"], path).build()


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------
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


def parse_args(default_config: str, description: str, task_defaults=None) -> tuple[RunConfig, dict | None]:
    """Command line -> (config, the checkpoint being resumed or evaluated, or None); see resolve_config.
    --print-config prints the result with the source of every key not at its default, then exits."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any config key can be overridden with key=value, nested keys with "
                                            "dots: total_iters=1000 model.d_model=128 wandb.mode=disabled")
    parser.add_argument("--config", default=default_config, help=f"YAML config (default: {default_config})")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, each key that is not at its default with where its value "
                             "came from (config file, task recipe, checkpoint, command line), and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    args = parser.parse_args()
    cfg, sources, checkpoint = resolve_config(default_config, args.config, args.overrides, task_defaults)
    if args.print_config:
        print("# the resolved config: a comment names where a value came from, unmarked keys keep the defaults "
              "of utils/schema.py\n" + format_config(cfg.to_dict(), sources))
        sys.exit(0)
    return cfg, checkpoint


class StoppedOutsideTraining(KeyboardInterrupt):
    """SIGTERM outside the training loop (which handles it itself, utils/stop_signals.py), treated as Ctrl-C."""


def _stop_outside_training(signum, frame):
    raise StoppedOutsideTraining()


def run_main(main):
    """Run an entry script's main(): a user mistake (UserInputError, e.g. a bad key, value or file) or a full or
    read-only disk ends with one line and exit status 2; a stopped run (RunStopped: a stop signal, a diverged loss)
    with one line and its own exit status; Ctrl-C or SIGTERM before or after the training loop (making demos,
    reading data, an evaluation-only run) with one line and 130 / 143; anything else is a bug and keeps its
    traceback."""
    signal.signal(signal.SIGTERM, _stop_outside_training)
    try:
        main()
    except KeyboardInterrupt as exc:
        signum = signal.SIGTERM if isinstance(exc, StoppedOutsideTraining) else signal.SIGINT
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped: {signum.name} outside the training loop; nothing is half-written (demo files and "
                  f"checkpoints appear only once complete): the same command goes on from what is there",
                  file=sys.stderr)
        sys.exit(128 + signum)
    except UserInputError as exc:
        message = str(exc)
        if message.startswith("Caught UserInputError in DataLoader worker"):
            # Raised in a DataLoader worker (a recording's file gone mid-run, datasets/frame_store.py): torch
            # re-raises it here with the worker's traceback in the message, whose last line is the one we raised.
            message = message.rstrip().splitlines()[-1].split("UserInputError: ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except RunStopped as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; rank 0 speaks for them
            print(f"stopped: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        print(f"error: {exc.strerror}" + (f": {exc.filename}" if exc.filename else "") + " (checkpoints are written "
              f"atomically: the last good one is intact)", file=sys.stderr)
        sys.exit(2)
