"""``TrainConfig``: the typed schema of an ``ncssm-train`` YAML config, and how it is loaded.

One flat mapping, with the keys of the original ncssm configs. Its defaults are the quickstart
(``configs/quickstart.yaml`` holds the same values, and a test keeps the two equal). Loading is
strict: an unknown key is an error that suggests the nearest known key, a value of the wrong
type is an error naming the key, and ``--override key=value`` reads each value as a YAML scalar
with ``yaml.safe_load`` (nothing is ever evaluated as code).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import reprlib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, key or value."""


@dataclass(frozen=True)
class TrainConfig:
    """Every key of a training config, with the quickstart as defaults.

    Model: ``model_type`` is a registered policy (``ncssm-train --list-policies``); ``mmode`` a
    modeling mode (:data:`ncssm_data.MODES`). S5 reads ``ssm_size`` (P), ``blocks``, ``c_init``,
    ``discretization``, ``dt_min``/``dt_max``, ``conj_sym``, ``clip_eigs``, ``bidirectional``;
    Mamba reads ``d_state`` (N), ``expand``, ``dt_min``/``dt_max``. Every policy's ``make``
    gets ``d_model``, ``n_layers``, ``dropout`` and each key of ``model_kwargs`` as keyword
    arguments (a plugin's own hyper-parameters; see :mod:`ncssm_policies.hookspecs`); for S5 and
    Mamba they go to every block (S5's ``conv_width``, say), except ``in_frames``, which goes to
    the ``SequencePolicy`` (its encoder reads the last K frames). The controller
    (``state_intention_controller``) adds ``int_dim`` (None: the width of the clips'
    ``/latent_mean``) and ``decoder_hidden``; the syllable controller ``embed_dim``.

    Dimensions come from the data. ``in_dim`` (one int per input part) and ``out_dim`` may be
    written down; they are then checked against the data.

    Training: ``epochs`` x ``iters_per_epoch`` steps of batch ``batch_size`` and ``seg_len``
    frames; ``val_steps`` validation batches after each epoch; AdamW with ``learning_rate``
    (``ssm_lr`` and no weight decay for S5's Lambda, B and log-step), linear ``warmup`` steps
    then cosine decay; global-norm clipping at ``grad_clip`` (0: none); ``dropout``;
    ``noise_std`` on training inputs (normalized units).

    Data: ``clip_dir`` (None: the built-in rodent clips, generated on first use; the original
    ncssm's ``root_dir`` is accepted for it, with a warning),
    ``train_frac``, ``preload``, ``norm_method`` (``zscore``, ``minmax`` or ``none``).
    ``syllable_key``: the clip dataset that ``syllable_state_intention`` reads its syllables
    from, in training and in the closed-loop evaluation: ``syllables`` (the clips' own), or
    ``syllables_arhmm`` (the AR-HMM labels ``ncssm-data segment`` writes), or any (T,) dataset
    of integer labels >= 0; a plain dataset name (no "/"). ``dart_noise`` (None: off) trains
    on the built-in clips plus ``dart_copies`` DART rollouts of each by the registered expert
    ``dart_expert`` executing its control plus Gaussian noise of that std (made on first use
    and cached; :mod:`ncssm_env.dart`); for a clip folder of your own, write them into it with
    ``ncssm-data dart``. ``dagger`` (None: off), for a mode that acts: ``{rounds, episodes,
    beta, expert}`` (defaults :data:`DAGGER_DEFAULTS`); see
    :mod:`ncssm_policies.dagger`.

    Checkpoints: every ``ckpt_freq`` epochs (and at the end), the last ``keep_ckpts`` kept,
    plus the best: by val loss (``select: val_loss``), or, for a mode that acts, by the
    closed-loop return score (``select: closed_loop``): ``eval_episodes`` episodes on
    ``eval_envs`` CPU envs of the val clips every ``eval_every`` epochs (and at the end), one
    fixed episode plan, score_return = (R - R_zero) / (R_expert - R_zero).
    ``ckpt_dir`` (None: ``<run folder>/checkpoints``).

    Logging: ``logger`` (``jsonl``, ``tensorboard`` or ``wandb``; JSONL is always written),
    ``project``, ``name``, ``tags``; ``runs_dir`` holds the run folders.

    Closed-loop evaluation: a policy that acts (``state_action``, ``state_intention_controller``,
    ``syllable_state_intention``) ends its run with ``eval_episodes`` episodes on ``eval_envs``
    CPU envs of the held-out clips (``ncssm_policies.rollout.evaluate``; 0 skips it).

    ``test_batch`` trains on the first ``seg_len`` frames of clip ``clip_idx`` only. ``seed``
    drives the split, the batches, the init and dropout.
    """

    # model
    model_type: str = "s5"
    mmode: str = "state_action"
    n_layers: int = 2
    d_model: int = 64
    ssm_size: int = 64
    blocks: int = 4
    c_init: str = "trunc_standard_normal"
    discretization: str = "zoh"
    dt_min: float = 0.1
    dt_max: float = 2.0
    conj_sym: bool = True
    clip_eigs: bool = False
    bidirectional: bool = False
    d_state: int = 16
    expand: int = 2
    model_kwargs: dict = field(default_factory=dict)
    int_dim: int | None = None
    decoder_hidden: list[int] = field(default_factory=lambda: [256, 256])
    embed_dim: int = 16
    in_dim: list[int] | None = None
    out_dim: int | None = None
    # training
    epochs: int = 12
    iters_per_epoch: int = 50
    val_steps: int = 4
    batch_size: int = 16
    seg_len: int = 200
    learning_rate: float = 0.004
    ssm_lr: float = 0.002
    weight_decay: float = 0.01
    warmup: int = 50
    grad_clip: float = 1.0
    dropout: float = 0.1
    noise_std: float = 0.0
    # data
    clip_dir: str | None = None
    train_frac: float = 0.8
    preload: bool = True
    norm_method: str = "zscore"
    syllable_key: str = "syllables"
    dart_noise: float | None = None
    dart_copies: int = 1
    dart_expert: str = "replay"
    dagger: dict | None = None
    # checkpoints
    ckpt_dir: str | None = None
    keep_ckpts: int = 2
    ckpt_freq: int = 1
    # logging
    logger: str = "jsonl"
    project: str = "ncssm"
    name: str = "quickstart"
    tags: list[str] = field(default_factory=list)
    runs_dir: str = "runs"
    # closed-loop evaluation at the end of training (control modes; 0 episodes: none)
    eval_episodes: int = 16
    eval_envs: int = 8
    select: str = "val_loss"
    eval_every: int = 5
    # debugging and seed
    test_batch: bool = False
    clip_idx: int = 0
    seed: int = 0

    def __post_init__(self):
        _check_values(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes) -> "TrainConfig":
        return from_dict({**self.to_dict(), **changes}, where="the config")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
DAGGER_DEFAULTS = {"rounds": 3, "episodes": 32, "beta": 0.5, "expert": "replay"}  # dagger: {...}
LOGGERS = ("jsonl", "tensorboard", "wandb")
NORM_METHODS = ("zscore", "minmax", "none")
# The keys that fix the model's parameters: a checkpoint restores only into the same values.
MODEL_KEYS = ("model_type", "mmode", "n_layers", "d_model", "ssm_size", "blocks", "conj_sym",
              "bidirectional", "d_state", "expand", "model_kwargs", "int_dim", "decoder_hidden",
              "embed_dim")


# ----------------------------------------------------------------------------------------------
# Types
# ----------------------------------------------------------------------------------------------


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_type_name(item)}"
    return {int: "an int", float: "a number", str: "a string", bool: "true/false",
            dict: "a mapping"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp, where: str) -> Any:
    """``value`` as type ``tp`` (ints are accepted for floats), else a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, where)
            except ConfigError:
                pass
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_coerce(key, v, item, where) for v in value]
        if item is int and isinstance(value, int) and not isinstance(value, bool):
            return [value]  # one int for a one-part input
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int past 1e308
                number = math.inf
        elif isinstance(value, str):  # YAML 1.1 reads ``1e-3`` (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if math.isfinite(number):
                return number
            raise ConfigError(f"{where}: key {key!r} must be a finite number, got {value!r}.")
    elif tp is str:
        if isinstance(value, str) and "\x00" not in value:
            return value
        if isinstance(value, str):
            raise ConfigError(f"{where}: key {key!r} must be a string without NUL characters, "
                              f"got {value!r}.")
    elif tp is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    raise ConfigError(
        f"{where}: key {key!r} must be {_type_name(tp)}, got {_short(value)} "
        f"({type(value).__name__})."
    )


_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 60, 60


def _short(value: Any) -> str:
    """``repr(value)`` on one line and at most about 80 characters, for messages that quote
    what a user wrote (an override of 2,000 brackets, say)."""
    return " ".join(_REPR.repr(value).split())


def _check_values(cfg: TrainConfig) -> None:
    def positive(*keys):
        for k in keys:
            if getattr(cfg, k) < 1:
                raise ConfigError(f"Config key {k!r} must be >= 1, got {getattr(cfg, k)!r}.")

    positive("n_layers", "d_model", "ssm_size", "blocks", "d_state", "expand", "embed_dim",
             "epochs", "iters_per_epoch", "val_steps", "batch_size", "seg_len", "keep_ckpts",
             "ckpt_freq", "eval_envs", "eval_every")
    for k in ("int_dim", "out_dim", "in_dim", "decoder_hidden"):  # widths: None, an int, a list
        v = getattr(cfg, k)
        if any(d < 1 for d in (v if isinstance(v, list) else [] if v is None else [v])):
            raise ConfigError(f"Config key {k!r} must hold widths >= 1, got {v!r}.")
    if not 0 <= cfg.seed < 2**32:  # numpy refuses a negative seed, jax one past 64 bits
        raise ConfigError(f"Config key 'seed' must be an int in [0, 2**32), got {cfg.seed!r}.")
    if cfg.clip_idx < 0:
        raise ConfigError(f"Config key 'clip_idx' must be >= 0, got {cfg.clip_idx!r}.")
    if cfg.select not in ("val_loss", "closed_loop"):
        raise ConfigError(f"Config key 'select' must be 'val_loss' or 'closed_loop', got "
                          f"{cfg.select!r}.")
    if cfg.select == "closed_loop":
        from ncssm_data.modes import MODES

        if cfg.mmode in MODES and not MODES[cfg.mmode].acts:
            raise ConfigError(f"Config key 'select' is 'closed_loop', but mode {cfg.mmode!r} does "
                              f"not act, so it has no closed-loop score; use 'val_loss'.")
        if cfg.eval_episodes < 1:
            raise ConfigError("Config key 'select' is 'closed_loop', which needs eval_episodes "
                              ">= 1.")
    if cfg.eval_episodes < 0:
        raise ConfigError(f"Config key 'eval_episodes' must be >= 0, got {cfg.eval_episodes!r}.")
    for k in ("learning_rate", "ssm_lr", "weight_decay", "grad_clip", "dropout", "noise_std",
              "warmup"):
        if getattr(cfg, k) < 0:
            raise ConfigError(f"Config key {k!r} must be >= 0, got {getattr(cfg, k)!r}.")
    if not 0.0 < cfg.dt_min <= cfg.dt_max:
        raise ConfigError(f"Config keys dt_min and dt_max need 0 < dt_min <= dt_max, got "
                          f"{cfg.dt_min!r} and {cfg.dt_max!r}.")
    if not 0.0 < cfg.train_frac < 1.0:
        raise ConfigError(f"Config key 'train_frac' must be in (0, 1), got {cfg.train_frac!r}.")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"Config key 'dropout' must be in [0, 1), got {cfg.dropout!r}.")
    if cfg.logger not in LOGGERS:
        raise ConfigError(f"Config key 'logger' must be one of {list(LOGGERS)}, got {cfg.logger!r}.")
    if cfg.norm_method not in NORM_METHODS:
        raise ConfigError(
            f"Config key 'norm_method' must be one of {list(NORM_METHODS)}, got {cfg.norm_method!r}.")
    from ncssm_data.modes import MODES

    if cfg.mmode not in MODES:
        raise ConfigError(
            f"Config key 'mmode' is {cfg.mmode!r}; expected one of {list(MODES)}.")
    if not cfg.syllable_key or "/" in cfg.syllable_key:
        raise ConfigError(f"Config key 'syllable_key' must be a plain dataset name (non-empty, "
                          f"no '/'), got {cfg.syllable_key!r}.")
    if cfg.dart_noise is not None:
        if not cfg.dart_noise >= 0:
            raise ConfigError(f"Config key 'dart_noise' must be a standard deviation >= 0 or "
                              f"null, got {cfg.dart_noise!r}.")
        if cfg.clip_dir is not None:
            raise ConfigError("Config key 'dart_noise' makes DART rollouts of the built-in clips "
                              "(clip_dir null); for your clips write them into the folder with "
                              f"'ncssm-data dart --clip-dir {cfg.clip_dir} --noise "
                              f"{cfg.dart_noise:g}' and leave dart_noise null.")
    if cfg.dagger is not None:
        _check_dagger(cfg)
    if cfg.dart_copies < 1:
        raise ConfigError(f"Config key 'dart_copies' must be >= 1, got {cfg.dart_copies!r}.")
    if not cfg.name or any(c in cfg.name for c in "/\\") or cfg.name in (".", ".."):
        raise ConfigError(f"Config key 'name' must be a plain folder name, got {cfg.name!r}.")


def _check_dagger(cfg) -> None:
    """One-sentence :class:`ConfigError` for a ``dagger`` mapping that cannot run."""
    from ncssm_data.modes import MODES

    unknown = sorted(set(cfg.dagger) - set(DAGGER_DEFAULTS))
    if unknown:
        raise ConfigError(f"Config key 'dagger' has unknown key {unknown[0]!r}; known keys: "
                          f"{', '.join(DAGGER_DEFAULTS)}.")
    s = {**DAGGER_DEFAULTS, **cfg.dagger}
    for key in ("rounds", "episodes"):
        if not (isinstance(s[key], int) and not isinstance(s[key], bool) and s[key] >= 1):
            raise ConfigError(f"Config key 'dagger.{key}' must be an int >= 1, got {s[key]!r}.")
    beta = s["beta"]
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 <= beta <= 1):
        raise ConfigError(f"Config key 'dagger.beta' must be a probability in [0, 1], got "
                          f"{beta!r}.")
    if not (isinstance(s["expert"], str) and s["expert"]):
        raise ConfigError(f"Config key 'dagger.expert' must name a registered expert, got "
                          f"{s['expert']!r}.")
    if cfg.mmode in MODES and not MODES[cfg.mmode].acts:
        raise ConfigError(f"Config key 'dagger' asks for DAgger, but mode {cfg.mmode!r} does not "
                          f"act, so there are no actions for an expert to label; use a mode "
                          f"that acts or dagger: null.")
    if cfg.test_batch:
        raise ConfigError("Config key 'dagger' rolls the policy out on the training clips, "
                          "which test_batch: true replaces by one segment; use one or the other.")
    if cfg.epochs < s["rounds"] + 1:
        raise ConfigError(f"Config key 'dagger' asks for {s['rounds']} rounds, which need "
                          f"epochs >= {s['rounds'] + 1} (a round after every epochs / "
                          f"(rounds + 1) epochs), but epochs is {cfg.epochs}.")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _unknown_key(key: str, where: str, fields=FIELDS) -> ConfigError:
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}."
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


# Old names still read: the original ncssm's key -> ours. Each use warns.
ALIASES = {"root_dir": "clip_dir"}


def _renamed(values: dict, fields, where: str) -> dict:
    """``values`` with each :data:`ALIASES` key that ``fields`` lacks renamed, with a warning."""
    out = dict(values)
    for old, new in ALIASES.items():
        if old in out and old not in fields and new in fields:
            if new in out:
                raise ConfigError(f"{where}: keys {old!r} and {new!r} name the same setting; "
                                  f"keep {new!r}.")
            warnings.warn(f"{where}: config key {old!r} is now {new!r}; {old!r} still works.",
                          FutureWarning, stacklevel=3)
            out[new] = out.pop(old)
    return out


def from_dict(values: dict, where: str = "the config", cls=TrainConfig):
    """A checked ``cls`` (a config dataclass; TrainConfig by default) from a mapping; missing
    keys take their defaults; an old key name (:data:`ALIASES`) is renamed with a warning."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got "
                          f"{type(values).__name__}.")
    values = _renamed(values, [f.name for f in dataclasses.fields(cls)], where)
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(str(key), where, fields)
        _check_size(key, value, where)
        kwargs[key] = _coerce(key, value, hints[key], where)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # a config class's own check (SegmentConfig's raise ValueError)
        raise ConfigError(str(err)) from None


MAX_DEPTH, MAX_ITEMS = 32, 100_000  # the most a config value may nest, and hold in all


def _check_size(key: str, value: Any, where: str) -> None:
    """A ConfigError for a value that contains itself, nests deeper than :data:`MAX_DEPTH` or
    holds more than :data:`MAX_ITEMS` items once YAML aliases are expanded (``&a [..]`` used
    as ``[*a, *a]``, nine times over, is a billion): printing or saving it would never end."""
    count = 0
    ancestors: list[int] = []

    def walk(v: Any) -> None:
        nonlocal count
        count += 1
        if count > MAX_ITEMS:
            raise ConfigError(f"{where}: key {key!r} holds more than {MAX_ITEMS} values (YAML "
                              f"aliases expanded).")
        if not isinstance(v, (dict, list, tuple, set, frozenset)):
            return
        if id(v) in ancestors:
            raise ConfigError(f"{where}: key {key!r} contains itself (a YAML alias inside its "
                              f"own anchor).")
        if len(ancestors) >= MAX_DEPTH:
            raise ConfigError(f"{where}: key {key!r} nests more than {MAX_DEPTH} levels deep.")
        ancestors.append(id(v))
        for item in (x for kv in v.items() for x in kv) if isinstance(v, dict) else v:
            walk(item)
        ancestors.pop()

    walk(value)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses flow collections (``[``, ``{``) nested more than
    :data:`MAX_DEPTH` deep: PyYAML's scanner takes cubic time in that depth (``a: [[[[...``
    of 10 kB would scan for minutes) before its parser runs out of recursion."""

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"found collections nested more than {MAX_DEPTH} deep",
                self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


def _load_yaml(text: str) -> Any:
    """``text`` read by :class:`_Loader`; PyYAML's other failures (``2001-13-45`` as a date,
    ``!!int x``, ``!!bool x``, block nesting past Python's recursion limit) raise a YAMLError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError:
        raise
    except RecursionError:
        raise yaml.YAMLError("found collections nested too deeply") from None
    except (ValueError, KeyError, TypeError, OverflowError) as err:
        why = f"{type(err).__name__}: {err}" if isinstance(err, KeyError) else str(err)
        raise yaml.YAMLError(f"found a value that cannot be read ({why})") from None


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; a missing file or a syntax error is one ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"Cannot read config {path}: {err.strerror or err}.") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"Config {path} is not UTF-8 text (byte {err.start}: "
                          f"{err.object[err.start:err.start + 1]!r}).") from None
    try:
        values = _load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"Config {path} is not valid YAML{line}: {problem}.") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"Config {path} must hold a mapping of keys to values, got "
                          f"{type(values).__name__}.")
    return values


def parse_overrides(overrides) -> dict:
    """``["key=value", ...]`` -> ``{key: value}``, each value read as YAML by ``safe_load``.

    The value is data, never code: ``x=__import__('os')`` is the string ``"__import__('os')"``
    (and ``x`` an unknown key).
    """
    values = {}
    for item in overrides or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"Override {item!r} must be written key=value.")
        try:
            values[key] = _load_yaml(text) if text.strip() else None
        except yaml.YAMLError:
            values[key] = text  # not YAML: a plain string
    return values


def load_config(path: str | Path | None = None, overrides=(), cls=TrainConfig):
    """The ``cls`` config in ``path`` (None: the defaults, for TrainConfig the quickstart) with
    ``overrides`` applied."""
    values = read_yaml(path) if path is not None else {}
    where = f"Config {path}" if path is not None else "The config"
    fields = [f.name for f in dataclasses.fields(cls)]
    extra = _renamed(parse_overrides(overrides), fields, "Override")
    for key in extra:
        if key not in fields:
            raise _unknown_key(key, "Override", fields)
    cfg = from_dict({**values, **extra}, where=where, cls=cls)
    check_output_paths(cfg, where)
    return cfg


OUTPUT_KEYS = ("runs_dir", "ckpt_dir", "out_dir")  # the config keys that name where to write


def check_output_paths(cfg, where: str) -> None:
    """The rule for an output folder a config names (:data:`OUTPUT_KEYS`): a relative path is
    taken from the current folder and must stay inside it, so ``..`` may not climb out of it;
    an absolute path is taken as it is."""
    for key in OUTPUT_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, str) and not os.path.isabs(value) and \
                os.path.normpath(value).split(os.sep)[0] == os.pardir:
            raise ConfigError(f"{where}: key {key!r} is {_short(value)}, which leaves the current "
                              f"folder; write an absolute path to put outputs outside it.")


def model_mismatch(saved: dict, current: dict) -> list[str]:
    """The :data:`MODEL_KEYS` whose values differ, each as ``key: saved -> current``."""
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in MODEL_KEYS
            if saved.get(k) != current.get(k)]
