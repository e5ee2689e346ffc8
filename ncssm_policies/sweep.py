"""Optuna sweeps: ``ncssm-train --sweep configs/sweep.yaml [--workers N] [--slurm] [--storage URL]
[--report]``.

A sweep is one Optuna study in a database (SQLite by default, any SQLAlchemy URL otherwise). The
launcher opens the study and queues the trials still owed (``n_trials`` in all, counting those
already there); workers, local processes or a SLURM job array, each pop one queued trial at a
time, sample its hyper-parameters from the sweep's search space, train it into its own run folder
``<runs_dir>/<name>/trials/<number>/`` and tell the study its objective. Workers never create a
trial, so the study ends with exactly ``n_trials`` trials however many workers ran. A worker that
dies leaves its trial RUNNING until its heartbeat goes stale; any other worker (or the launcher)
then fails it, or re-queues it when ``retries`` allow.

The end report, also ``--report`` alone: ``trials.md`` (the trials sorted by objective),
``best.yaml`` (the best trial's full training config, for ``ncssm-train --config``) and Optuna's
optimization-history and parameter-importance plots, in ``<runs_dir>/<name>/``.

This module does not import :mod:`ncssm_policies.train` (train's ``main`` dispatches here, and the
house's import contracts forbid the cycle): the training function comes in as ``train_fn``, with
the signature of :func:`ncssm_policies.train.train`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ncssm_policies.config import ConfigError, TrainConfig, _unknown_key, from_dict, load_config, \
    read_yaml

# The sweep YAML's keys and their defaults (configs/sweep.yaml documents each one).
SPEC_DEFAULTS: dict[str, Any] = {
    "name": None, "config": None, "overrides": {}, "n_trials": 20, "objective": "val_loss",
    "pruner": "median", "storage": None, "retries": 0, "heartbeat_s": 10, "seed": 0,
    "runs_dir": None, "plots": True, "slurm": {}, "space": None,
}
OBJECTIVES = {"val_loss": "minimize", "closed_loop_score": "maximize"}
PRUNERS = ("median", "none")
# The fields of each distribution type (besides ``type`` and ``when``): required, optional.
DISTRIBUTIONS = {"float": ({"low", "high"}, {"log", "step"}),
                 "int": ({"low", "high"}, {"log", "step"}),
                 "categorical": ({"choices"}, set())}
# Keys a sweep sets itself, so neither the search space nor the overrides may.
OWN_KEYS = ("name", "ckpt_dir")
SQLITE_TIMEOUT_S = 60  # how long a worker waits for SQLite's write lock


def _quiet_optuna():
    """Import optuna with its INFO logs and experimental-feature warnings off."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# ----------------------------------------------------------------------------------------------
# The sweep YAML
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One search-space key: a distribution over a TrainConfig field, sampled only ``when`` the
    earlier keys it names took one of the listed values."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: dict = field(default_factory=dict)  # key -> allowed values (a list)

    def active(self, params: dict) -> bool:
        return all(params.get(k) in allowed for k, allowed in self.when.items())


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep YAML: the study's settings, the base training config and the space."""

    path: Path
    name: str
    base: TrainConfig
    n_trials: int
    objective: str
    pruner: str
    storage: str | None
    retries: int
    heartbeat_s: int
    seed: int
    runs_dir: Path
    plots: bool
    slurm: dict
    space: dict[str, Param]
    raw_space: dict  # as written, stored with the study

    @property
    def folder(self) -> Path:
        """``<runs_dir>/<name>``: the study's database (by default), trials and report."""
        return self.runs_dir / self.name

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _param(key: str, value: Any, earlier: dict[str, Param], where: str) -> Param:
    """The checked :class:`Param` of space key ``key``; a ConfigError naming it otherwise."""
    at = f"{where}: space key {key!r}"
    if not isinstance(value, dict):
        raise ConfigError(f"{at} must be a mapping like {{type: float, low: 0.0001, high: 0.01}}, "
                          f"got {value!r}.")
    kind = value.get("type")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{at} has type {kind!r}; expected one of {list(DISTRIBUTIONS)}.")
    required, optional = DISTRIBUTIONS[kind]
    given = set(value) - {"type", "when"}
    if required - given:
        raise ConfigError(f"{at} (type {kind}) lacks {sorted(required - given)[0]!r}; expected "
                          f"the fields {sorted(required | optional)}.")
    if given - required - optional:
        raise ConfigError(f"{at} (type {kind}) has the unknown field "
                          f"{sorted(given - required - optional)[0]!r}; expected the fields "
                          f"{sorted(required | optional)}.")
    when = value.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{at}: 'when' must map earlier space keys to values, got {when!r}.")
    allowed = {}
    for k, v in when.items():
        if k not in earlier:
            raise ConfigError(f"{at}: 'when' names {k!r}, which is not a space key defined "
                              f"before it; expected one of {list(earlier) or 'none (it is first)'}.")
        if earlier[k].type != "categorical":
            raise ConfigError(f"{at}: 'when' names {k!r}, which is not categorical; expected a "
                              f"categorical key.")
        vs = v if isinstance(v, list) else [v]
        bad = [x for x in vs if x not in earlier[k].choices]
        if not vs or bad:
            raise ConfigError(f"{at}: 'when' asks for {k}={bad[0] if bad else v!r}, which is not "
                              f"among its choices {list(earlier[k].choices)}.")
        allowed[k] = vs
    if kind == "categorical":
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{at}: 'choices' must be a non-empty list, got {choices!r}.")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise ConfigError(f"{at}: 'choices' must be scalars (numbers, strings, true/false, "
                              f"null), got {choices!r}.")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{at}: 'choices' lists a value twice: {choices!r}.")
        return Param(key, kind, choices=tuple(choices), when=allowed)
    low, high, log, step = value["low"], value["high"], value.get("log", False), value.get("step")
    if kind == "int" and not all(isinstance(x, int) and not isinstance(x, bool)
                                 for x in (low, high) + ((step,) if step is not None else ())):
        raise ConfigError(f"{at} (type int) needs integer low, high (and step), got low={low!r}, "
                          f"high={high!r}{f', step={step!r}' if step is not None else ''}.")
    if kind == "float":
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            low, high = (float(x) if isinstance(x, str) else x for x in (low, high))
            step = float(step) if isinstance(step, str) else step
        except ValueError:
            pass
        if not (_number(low) and _number(high) and (step is None or _number(step))):
            raise ConfigError(f"{at} (type float) needs numbers for low and high, got "
                              f"low={low!r}, high={high!r}.")
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    if not isinstance(log, bool):
        raise ConfigError(f"{at}: 'log' must be true or false, got {log!r}.")
    if not low < high:
        raise ConfigError(f"{at} needs low < high, got low={low!r}, high={high!r}.")
    if log and low <= 0:
        raise ConfigError(f"{at} has log: true, which needs low > 0, got low={low!r}.")
    if step is not None and (step <= 0 or (log and kind == "float")):
        raise ConfigError(f"{at}: 'step' must be > 0 and cannot go with log: true (float), got "
                          f"step={step!r}.")
    return Param(key, kind, low, high, log, step, when=allowed)


def parse_space(space: Any, base: TrainConfig, where: str) -> dict[str, Param]:
    """The checked search space: each key a TrainConfig field, each distribution well formed,
    and each end of each range (every choice) a config that passes the config's own checks."""
    from ncssm_policies.config import FIELDS

    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: 'space' must map TrainConfig keys to distributions, like "
                          f"learning_rate: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}.")
    out: dict[str, Param] = {}
    for key, value in space.items():
        if key not in FIELDS:
            raise _unknown_key(str(key), f"{where}: space", FIELDS)
        if key in OWN_KEYS:
            raise ConfigError(f"{where}: space key {key!r} is set by the sweep itself; expected "
                              f"any other TrainConfig key.")
        out[key] = p = _param(key, value, out, where)
        values = p.choices if p.type == "categorical" else (p.low, p.high)
        conditions = {k: v[0] for k, v in p.when.items()}
        for v in values:
            try:
                base.replace(**conditions, **{key: v})
            except ConfigError as err:
                raise ConfigError(f"{where}: space key {key!r} can take {v!r}, which the training "
                                  f"config refuses: {err}") from None
    return out


def load_spec(path: str | Path, storage: str | None = None) -> SweepSpec:
    """The checked sweep in YAML file ``path`` (``storage``, when given, replaces its own)."""
    path = Path(path)
    raw = read_yaml(path)
    where = f"Sweep {path}"
    for key in raw:
        if key not in SPEC_DEFAULTS:
            raise _unknown_key(str(key), where, SPEC_DEFAULTS)
    s = {**SPEC_DEFAULTS, **raw}
    name = s["name"] or path.stem
    if not isinstance(name, str) or any(c in name for c in "/\\") or name in (".", ".."):
        raise ConfigError(f"{where}: 'name' must be a plain folder name, got {name!r}.")
    for key, ok, what in [
        ("n_trials", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
         "an int >= 1"),
        ("retries", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
         "an int >= 0"),
        ("heartbeat_s", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
         "an int >= 1 (seconds)"),
        ("seed", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
         "an int or null"),
        ("objective", lambda v: v in OBJECTIVES, f"one of {list(OBJECTIVES)}"),
        ("pruner", lambda v: v in PRUNERS, f"one of {list(PRUNERS)}"),
        ("storage", lambda v: v is None or (isinstance(v, str) and v), "a database URL or null"),
        ("config", lambda v: v is None or isinstance(v, str), "a config path or null"),
        ("runs_dir", lambda v: v is None or isinstance(v, str), "a folder or null"),
        ("plots", lambda v: isinstance(v, bool), "true or false"),
        ("overrides", lambda v: isinstance(v, dict), "a mapping of TrainConfig keys to values"),
        ("slurm", lambda v: isinstance(v, dict), "a mapping of submitit parameters"),
    ]:
        if not ok(s[key]):
            raise ConfigError(f"{where}: key {key!r} must be {what}, got {s[key]!r}.")
    base = load_config(path.parent / s["config"] if s["config"] else None)
    for key in s["overrides"]:
        if key in OWN_KEYS:
            raise ConfigError(f"{where}: overrides key {key!r} is set by the sweep itself.")
    base = from_dict({**base.to_dict(), **s["overrides"]}, where=f"{where}: overrides")
    if base.ckpt_dir is not None:
        raise ConfigError(f"{where}: the base config sets ckpt_dir {base.ckpt_dir!r}, which every "
                          f"trial would share; a sweep keeps each trial's checkpoints in its run "
                          f"folder, so set ckpt_dir: null.")
    if s["objective"] == "closed_loop_score":
        from ncssm_data.modes import MODES

        if not MODES[base.mmode].acts or base.eval_episodes < 1:
            raise ConfigError(f"{where}: objective closed_loop_score needs a base config whose "
                              f"mode acts and eval_episodes >= 1 (got mmode {base.mmode!r}, "
                              f"eval_episodes {base.eval_episodes}); use objective: val_loss.")
    space = parse_space(s["space"], base, where)
    return SweepSpec(path, name, base, s["n_trials"], s["objective"], s["pruner"],
                     storage or s["storage"], s["retries"], s["heartbeat_s"], s["seed"],
                     Path(s["runs_dir"] or base.runs_dir).absolute(), s["plots"], s["slurm"],
                     space, s["space"])


def sample(trial, space: dict[str, Param]) -> dict:
    """The trial's values of the active space keys (a key whose ``when`` fails is skipped)."""
    params: dict = {}
    for p in space.values():
        if not p.active(params):
            continue
        if p.type == "float":
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            params[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
        else:
            params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return params


def trial_config(spec: SweepSpec, params: dict, number: int) -> TrainConfig:
    """The config of trial ``number``: the base (with the overrides) and the sampled values."""
    return spec.base.replace(**params, name=f"{spec.name}-{number}")


# ----------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------


def _shown(url: str) -> str:
    """The URL with any password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: shown as written
        return url


def storage_url(spec: SweepSpec) -> str:
    """The study's database: the spec's (or --storage's) URL, else SQLite in the sweep folder."""
    return spec.storage or f"sqlite:///{spec.folder / 'study.db'}"


def open_storage(spec: SweepSpec, url: str):
    """Optuna's RDBStorage of ``url`` with the sweep's heartbeat and retries; a URL that cannot
    be opened is one ConfigError."""
    _quiet_optuna()
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    kwargs = {}
    if url.startswith("sqlite"):  # concurrent workers wait for the write lock
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    try:
        return RDBStorage(
            url, heartbeat_interval=spec.heartbeat_s, grace_period=2 * spec.heartbeat_s,
            failed_trial_callback=(RetryFailedTrialCallback(max_retry=spec.retries)
                                   if spec.retries > 0 else None), **kwargs)
    except Exception as err:  # a driver missing, a refused connection, an unknown dialect, ...
        cause = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
        raise ConfigError(f"Sweep storage {_shown(url)!r} cannot be opened: {cause}.") from None


def open_study(spec: SweepSpec, url: str, create: bool = True):
    """The sweep's study in ``url``: created (``create``) or loaded. Refuses a database that
    holds a study of another name, and a study of this name made with another space or
    objective."""
    optuna = _quiet_optuna()
    if create and url.startswith("sqlite:///"):
        try:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # then SQLite says why it cannot open the file
    # One process at a time makes the schema and the study: two that open a new SQLite
    # database at once both insert its schema version, and the second fails.
    sqlite = url.startswith("sqlite:///") and Path(url.removeprefix("sqlite:///")).parent.is_dir()
    with _exclusive(url) if sqlite else contextlib.nullcontext():
        return _open_study(spec, url, create, optuna)


def _open_study(spec: SweepSpec, url: str, create: bool, optuna):
    from optuna.pruners import MedianPruner, NopPruner
    from optuna.samplers import TPESampler

    storage = open_storage(spec, url)
    names = [s.study_name for s in storage.get_all_studies()]
    others = [n for n in names if n != spec.name]
    if others:
        raise ConfigError(f"Sweep storage {_shown(url)!r} already holds study {others[0]!r}, so "
                          f"it cannot also take study {spec.name!r}; give sweep {spec.name!r} its "
                          f"own database (storage: or --storage), or name it {others[0]!r} to "
                          f"continue that one.")
    if not names and not create:
        raise ConfigError(f"Sweep storage {_shown(url)!r} holds no study {spec.name!r} yet; run "
                          f"the sweep first.")
    sampler = TPESampler(seed=spec.seed)
    pruner = MedianPruner() if spec.pruner == "median" else NopPruner()
    study = optuna.create_study(storage=storage, study_name=spec.name, sampler=sampler,
                                pruner=pruner, direction=spec.direction, load_if_exists=True)
    fingerprint = {"space": spec.raw_space, "objective": spec.objective}
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", fingerprint)
    elif json.loads(json.dumps(fingerprint)) != stored:
        what = "search space" if stored.get("space") != json.loads(
            json.dumps(spec.raw_space)) else "objective"
        raise ConfigError(f"Sweep study {spec.name!r} in {_shown(url)!r} was made with another "
                          f"{what} than {spec.path}'s; restore it, or give the sweep a new name.")
    return study


def counted(trials) -> list:
    """The trials that count toward ``n_trials``: all but the failed ones that were retried."""
    from optuna.trial import TrialState

    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return [t for t in trials if not (t.state == TrialState.FAIL and t.number in retried)]


def enqueue(study, n_trials: int) -> int:
    """Queue the trials the study still owes (``n_trials`` minus those it has); their number."""
    owed = n_trials - len(counted(study.get_trials(deepcopy=False)))
    for _ in range(max(owed, 0)):
        study.enqueue_trial({}, skip_if_exists=False)
    return max(owed, 0)


@contextlib.contextmanager
def _exclusive(url: str):
    """For a SQLite database ``url``, hold an exclusive lock on ``<database>.lock`` (SQLite ignores the
    row lock, SELECT ... FOR UPDATE, that makes Optuna's state changes atomic on a server
    database, so two workers could claim the same trial); else nothing."""
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(url.removeprefix("sqlite:///") + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fail_stale(study, url: str) -> None:
    """Optuna's ``fail_stale_trials`` (FAIL each RUNNING trial whose heartbeat is stale, and
    re-queue it when ``retries`` allow), one process at a time so a trial is retried once."""
    import optuna

    with _exclusive(url):
        optuna.storages.fail_stale_trials(study)


def pop_trial(study, url: str):
    """A queued trial, now RUNNING and owned by this process, or None when none is queued.

    What ``Study.ask`` does first, but it never makes a fresh trial: each WAITING trial is
    claimed by the one atomic WAITING -> RUNNING update that another worker may win first.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    with _exclusive(url):
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    storage.record_heartbeat(trial_id)  # stale from now on if this dies
                    return optuna.Trial(study, trial_id)
            except UpdateFinishedTrialError:
                continue
    return None


class Heartbeat:
    """A thread that records a trial's heartbeat every ``interval`` seconds while it runs."""

    def __init__(self, storage, trial_id: int, interval: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, interval),
                                        daemon=True)

    def _beat(self, storage, trial_id, interval):
        while not self._stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a busy database: the next beat tries again
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------------


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items()) or "-"


def _value(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def _best(study, direction: str):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    return (min if direction == "minimize" else max)(done, key=lambda t: t.value)


def run_trial(spec: SweepSpec, study, trial, train_fn: Callable, worker: str = "") -> None:
    """Train one popped trial and tell the study: COMPLETE with its objective, PRUNED, or FAIL
    (the one-line reason in user attr ``error``). Records the user attrs ``run_dir``, ``worker``,
    ``config``, ``train_s`` (seconds in training) and ``overhead_s`` (seconds of bookkeeping:
    sampling, attrs, reports and prune checks, not counting the final tell)."""
    import optuna
    from optuna.samplers import TPESampler
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    storage = study._storage
    run_dir = spec.folder / "trials" / str(trial.number)
    state, value, reason, params, train_s, callback_s = TrialState.FAIL, None, None, {}, 0.0, 0.0
    with Heartbeat(storage, trial._trial_id, spec.heartbeat_s):
        try:
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("worker", worker or f"{socket.gethostname()}:{os.getpid()}")
            # One sampler seed per trial: workers that share the sweep's seed must not draw
            # the same values, and a trial's draw is the same whichever worker makes it.
            study.sampler = TPESampler(seed=None if spec.seed is None else spec.seed + trial.number)
            params = sample(trial, spec.space)
            cfg = trial_config(spec, params, trial.number)
            trial.set_user_attr("config", cfg.to_dict())
            losses: list[float] = []

            def on_epoch(epoch, step, val_loss, scores):
                nonlocal callback_s
                c0 = time.perf_counter()
                losses.append(float(val_loss))
                point = (val_loss if spec.objective == "val_loss" else
                         (scores or {}).get("closed_loop_score"))
                if point is not None and math.isfinite(point):
                    trial.report(float(point), epoch)
                    if trial.should_prune():
                        callback_s += time.perf_counter() - c0
                        raise optuna.TrialPruned(f"pruned after epoch {epoch}")
                callback_s += time.perf_counter() - c0

            t1 = time.perf_counter()
            try:
                result = train_fn(cfg, run_dir=run_dir, progress=False, plots=spec.plots,
                                  on_epoch=on_epoch)
            finally:
                train_s = time.perf_counter() - t1 - callback_s
            if spec.objective == "val_loss":
                value = min(losses) if losses else float(result.val_loss)
            else:
                score = (result.closed_loop or {}).get("score_return")
                value = score.get("mean") if isinstance(score, dict) else score
                if value is None:
                    raise ConfigError("the run has no closed-loop score_return")
            if not math.isfinite(value):
                raise ValueError(f"the objective is {value}")
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except Exception as err:
            lines = str(err).strip().splitlines()
            reason = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
        except KeyboardInterrupt:
            reason = "interrupted"
            raise
        finally:
            seconds = time.perf_counter() - t0
            try:
                if reason:
                    trial.set_user_attr("error", reason)
                trial.set_user_attr("train_s", round(train_s, 4))
                trial.set_user_attr("overhead_s", round(seconds - train_s, 4))
                study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:
                reason = "failed as stale by another process while it ran (heartbeat too short?)"
                state = TrialState.FAIL
    _progress(spec, study, trial.number, state, value, params, seconds, reason)


def _progress(spec, study, number, state, value, params, seconds, reason) -> None:
    """The one line a worker prints for each trial it finished."""
    from optuna.trial import TrialState

    trials = counted(study.get_trials(deepcopy=False))
    done = sum(t.state.is_finished() for t in trials)
    best = _best(study, spec.direction)
    line = (f"trial {number} {state.name} {spec.objective} {_value(value)} [{_fmt(params)}] "
            f"{seconds:.1f} s; best {_value(best.value if best else None)}"
            f"{f' (trial {best.number})' if best else ''}; {done}/{spec.n_trials} done")
    if state == TrialState.FAIL and reason:
        line += f"; {reason}"
    print(line, flush=True)


def work(spec: SweepSpec, url: str, train_fn: Callable, worker: str = "") -> int:
    """A worker: fail stale trials, pop a queued one, run it; until none is queued. Returns the
    number of trials it ran."""
    _quiet_optuna()
    study = open_study(spec, url, create=False)
    n = 0
    while True:
        fail_stale(study, url)
        trial = pop_trial(study, url)
        if trial is None:
            return n
        run_trial(spec, study, trial, train_fn, worker)
        n += 1


def _worker_command(spec: SweepSpec, url: str) -> list[str]:
    """The command of one worker process (its id is appended): ncssm-train's hidden
    ``--sweep-worker`` mode, which has the training function at hand."""
    return [sys.executable, "-m", "ncssm_policies.train", "--sweep", str(spec.path.absolute()),
            "--storage", url, "--sweep-worker"]


def _died(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _unfinished(study) -> tuple[list, list]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return ([t for t in trials if t.state == TrialState.RUNNING],
            [t for t in trials if t.state == TrialState.WAITING])


def settle(spec: SweepSpec, study, url: str, train_fn: Callable | None) -> None:
    """After the workers: wait out the grace period of trials left RUNNING and fail them as
    stale; run any trial re-queued by ``retries`` here; report what could not be settled."""
    _quiet_optuna()
    running, _ = _unfinished(study)
    if running:
        grace = 2 * spec.heartbeat_s + 1
        print(f"{len(running)} trial(s) still RUNNING ({', '.join(str(t.number) for t in running)}); "
              f"failing them once their heartbeat is {grace} s old", flush=True)
        deadline = time.monotonic() + grace + 2
        while running and time.monotonic() < deadline:
            time.sleep(0.5)
            fail_stale(study, url)
            running, _ = _unfinished(study)
    _, waiting = _unfinished(study)
    if waiting and train_fn is not None:
        print(f"{len(waiting)} re-queued trial(s) left; running them here", flush=True)
        work(spec, url, train_fn, worker="launcher")
    running, waiting = _unfinished(study)
    if running or waiting:
        print(f"Left unfinished: {len(running)} RUNNING, {len(waiting)} WAITING (a worker may "
              f"still run elsewhere); the next launch goes on with them.", flush=True)


def launch_local(spec: SweepSpec, url: str, workers: int, train_fn: Callable) -> None:
    """Run the queued trials on ``workers`` local processes (in this one for 1); a worker that
    dies is reported in one line and the others go on."""
    _quiet_optuna()
    if workers == 1:
        work(spec, url, train_fn)
        return
    procs = [subprocess.Popen(_worker_command(spec, url) + [str(i)]) for i in range(workers)]
    study = open_study(spec, url, create=False)
    try:
        alive = dict(enumerate(procs))
        last_check = time.monotonic()
        while alive:
            time.sleep(0.2)
            for i, proc in list(alive.items()):
                code = proc.poll()
                if code is None:
                    continue
                del alive[i]
                if code != 0:
                    print(f"Worker {i} (pid {proc.pid}) {_died(code)}; the others go on.",
                          flush=True)
            if time.monotonic() - last_check > spec.heartbeat_s:
                fail_stale(study, url)
                last_check = time.monotonic()
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait()
        raise


def launch_slurm(spec: SweepSpec, url: str, workers: int) -> None:
    """Submit ``workers`` workers as one submitit job array (SLURM, or ``cluster: local`` for
    submitit's local executor), print the job ids and wait for the jobs."""
    import shutil

    params = dict(spec.slurm)
    cluster = params.pop("cluster", "slurm")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(f"--slurm submits with sbatch, which is not on PATH; run from a SLURM "
                          f"login node, or set slurm: {{cluster: local}} in {spec.path} to try "
                          f"the job array locally.")
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=spec.folder / "slurm", cluster=cluster)
        executor.update_parameters(**params, slurm_array_parallelism=workers)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(f"Sweep {spec.path}: key 'slurm' cannot be used: "
                          f"{str(err).strip().splitlines()[0]}") from None
    command = submitit.helpers.CommandFunction(_worker_command(spec, url), cwd=os.getcwd())
    jobs = executor.map_array(command, [str(i) for i in range(workers)])
    print(f"Submitted {len(jobs)} {cluster} worker job(s): {', '.join(j.job_id for j in jobs)} "
          f"(logs in {spec.folder / 'slurm'})", flush=True)
    for i, job in enumerate(jobs):
        try:
            out = job.result()
            if out:
                print(out, flush=True)
        except Exception as err:
            lines = str(err).strip().splitlines()
            print(f"Worker job {job.job_id} failed: {lines[-1] if lines else type(err).__name__}",
                  flush=True)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def trial_overheads(study) -> dict:
    """Per-trial time split of the finished trials (for benchmarks): their count, and the
    medians of ``train_s`` (in training) and ``overhead_s`` (the sweep's bookkeeping)."""
    attrs = [t.user_attrs for t in study.get_trials(deepcopy=False) if t.state.is_finished()
             and "overhead_s" in t.user_attrs]
    med = (lambda k: statistics.median(a[k] for a in attrs)) if attrs else (lambda k: None)
    return {"trials": len(attrs), "median_train_s": med("train_s"),
            "median_overhead_s": med("overhead_s")}


def _sorted(trials, direction: str) -> list:
    sign = 1 if direction == "minimize" else -1
    return sorted(trials, key=lambda t: (t.value is None, sign * (t.value or 0.0), t.number))


def table(spec: SweepSpec, study) -> str:
    """The trials sorted by objective (best first), as a Markdown table."""
    rows = [f"| trial | state | {spec.objective} | params | run folder |",
            "|---:|---|---:|---|---|"]
    for t in _sorted(study.get_trials(deepcopy=False), spec.direction):
        note = f" ({t.user_attrs['error']})" if "error" in t.user_attrs else ""
        rows.append(f"| {t.number} | {t.state.name}{note} | {_value(t.value)} | "
                    f"{_fmt(t.params)} | {t.user_attrs.get('run_dir', '-')} |")
    return "\n".join(rows)


def _plots(study, folder: Path) -> list[Path]:
    """Optuna's optimization-history and parameter-importance plots, as PNGs in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncssm_policies.plots import save_figure
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    out = []
    ax = ovm.plot_optimization_history(study)
    path = folder / "optimization_history.png"
    save_figure(ax.figure, path, bbox_inches="tight")
    plt.close(ax.figure)
    out.append(path)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        print(f"No parameter-importance plot: it needs >= 2 complete trials, the study has "
              f"{len(complete)}.")
        return out
    try:
        ax = ovm.plot_param_importances(study)
    except Exception as err:  # e.g. no parameter varied across the complete trials
        print(f"No parameter-importance plot: {str(err).strip().splitlines()[0]}")
        return out
    path = folder / "param_importances.png"
    save_figure(ax.figure, path, bbox_inches="tight")
    plt.close(ax.figure)
    out.append(path)
    return out


def report(spec: SweepSpec, study) -> str:
    """Write ``trials.md``, ``best.yaml`` and the plots into the sweep folder; the text printed."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    text = table(spec, study)
    (spec.folder / "trials.md").write_text(f"# Sweep {spec.name}\n\n{text}\n")
    lines = [f"Sweep {spec.name}: {len(study.get_trials(deepcopy=False))} trials", text]
    best = _best(study, spec.direction)
    if best is not None:
        cfg = from_dict(best.user_attrs["config"], where=f"trial {best.number}'s config")
        cfg = cfg.replace(name=f"{spec.name}-best")
        (spec.folder / "best.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        lines.append(f"Best: trial {best.number}, {spec.objective} {_value(best.value)} "
                     f"[{_fmt(best.params)}]; its config: {spec.folder / 'best.yaml'}")
    else:
        lines.append("No trial completed, so no best.yaml.")
    o = trial_overheads(study)
    if o["trials"]:
        lines.append(f"Per trial (median of {o['trials']}): {o['median_train_s']:.2f} s training, "
                     f"{o['median_overhead_s']:.3f} s sweep bookkeeping")
    lines += [f"  {p}" for p in [spec.folder / "trials.md", *_plots(study, spec.folder)]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def run_sweep(path: str | Path, train_fn: Callable, workers: int = 1, slurm: bool = False,
              storage: str | None = None) -> tuple[SweepSpec, Any]:
    """Open (or continue) the sweep in YAML ``path``, queue the trials it still owes, run them
    on ``workers`` local processes or a SLURM job array, and settle the study; (spec, study)."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}.")
    spec = load_spec(path, storage)
    url = storage_url(spec)
    study = open_study(spec, url)
    queued = enqueue(study, spec.n_trials)
    print(f"Sweep {spec.name}: {spec.n_trials} trials ({queued} queued now) in {_shown(url)}, "
          f"on {workers} {'SLURM' if slurm else 'local'} worker(s)", flush=True)
    if slurm:
        launch_slurm(spec, url, workers)
    else:
        launch_local(spec, url, workers, train_fn)
    settle(spec, study, url, train_fn)
    return spec, study


def main(args, train_fn: Callable) -> int:
    """``ncssm-train --sweep``: ``args`` are ncssm-train's parsed arguments (``sweep``,
    ``workers``, ``slurm``, ``storage``, ``report``, ``sweep_worker``)."""
    try:
        if getattr(args, "sweep_worker", None) is not None:
            spec = load_spec(args.sweep, args.storage)
            work(spec, storage_url(spec), train_fn, worker=f"{socket.gethostname()}:"
                 f"{os.getpid()} (worker {args.sweep_worker})")
            return 0
        if args.report:
            spec = load_spec(args.sweep, args.storage)
            url = storage_url(spec)
            if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
                raise ConfigError(f"Sweep {spec.name!r} has no database at "
                                  f"{url.removeprefix('sqlite:///')} yet; run the sweep first.")
            study = open_study(spec, url, create=False)
        else:
            spec, study = run_sweep(args.sweep, train_fn, args.workers, args.slurm, args.storage)
        print(report(spec, study))
    except (ConfigError, ValueError, OSError) as err:
        print(f"ncssm-train: error: {err}", file=sys.stderr)
        return 2
    return 0
