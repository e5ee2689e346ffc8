"""Checkpoints of a training run (orbax), and ``load_policy`` to evaluate one.

A run's checkpoint folder holds two orbax ``CheckpointManager`` folders of the same layout:

- ``periodic/<step>/``: saved every ``ckpt_freq`` epochs and at the end; the last
  ``keep_ckpts`` are kept;
- ``best/<step>/``: the checkpoint of the lowest val loss so far (one kept).

Each step holds the items ``params`` and ``train`` (optimizer state, step, base RNG key), both
``StandardSave`` pytrees, and the JSON items ``config`` (the full :class:`TrainConfig`),
``norm`` (normalization method and stats, exact float32 values) and ``meta`` (data dims, epoch,
val loss, best val loss). Saves are synchronous, and orbax commits a step only once it is
complete, so a run killed mid-save leaves the last good checkpoint intact.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ncssm_data.errors import write_error
from ncssm_policies.config import ALIASES, FIELDS, TrainConfig, from_dict, model_mismatch

KINDS = ("periodic", "best")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of another model."""


def _manager(root: Path, kind: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
    # cleanup_tmp_directories: a save killed midway leaves orbax's temp folder, removed here
    # by the next manager (the run folder's lock keeps any other writer out).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=create)
    return ocp.CheckpointManager(root / kind, options=options)


def norm_to_json(normalizer) -> dict | None:
    if normalizer is None:
        return None
    tree = normalizer.tree()
    as_list = lambda p: {k: np.asarray(v, np.float32).tolist() for k, v in p.items()}  # noqa: E731
    return {"mode": normalizer.mode.name, "method": normalizer.method,
            "tree": {"x_in": [as_list(p) for p in tree["x_in"]], "x_tgt": as_list(tree["x_tgt"])}}


def norm_from_json(data: dict | None):
    if data is None:
        return None
    from ncssm_data.normalize import Normalizer

    return Normalizer(data["mode"], data["method"], data["tree"])


class Checkpoints:
    """The periodic and best managers of one run's checkpoint folder ``root``."""

    def __init__(self, root: str | Path, keep_ckpts: int):
        self.root = Path(root).resolve()
        self.periodic = _manager(self.root, "periodic", keep_ckpts)
        self.best = _manager(self.root, "best", 1)
        self.keep = {"periodic": keep_ckpts, "best": 1}

    def latest(self) -> tuple[str, int] | None:
        """(kind, step) of the newest checkpoint in either manager, or None."""
        found = [(m.latest_step(), kind) for kind, m in (("periodic", self.periodic),
                                                           ("best", self.best))]
        found = [(s, k) for s, k in found if s is not None]
        if not found:
            return None
        step, kind = max(found)
        return kind, step

    def save(self, kind: str, step: int, params, train, config: TrainConfig, norm: dict | None,
             meta: dict) -> None:
        manager = self.periodic if kind == "periodic" else self.best
        if step not in manager.all_steps():
            # Saved from the host: a checkpoint restores on any number of devices.
            try:
                manager.save(step, args=ocp.args.Composite(
                    params=ocp.args.StandardSave(jax.device_get(params)),
                    train=ocp.args.StandardSave(jax.device_get(train)),
                    config=ocp.args.JsonSave(config.to_dict()),
                    norm=ocp.args.JsonSave(norm),
                    meta=ocp.args.JsonSave(_jsonable(meta)),
                ))
                manager.wait_until_finished()
            except Exception as err:  # noqa: BLE001 - a full disk, a read-only folder, ...
                refused = write_error(self.root / kind / str(step), err, "checkpoint")
                if refused is None:
                    raise
                for tmp in (self.root / kind).glob(f"{step}.orbax-checkpoint-tmp*"):
                    shutil.rmtree(tmp, ignore_errors=True)  # no part of it remains
                raise refused from None
        # A run killed between a save's commit and orbax's removal of the oldest leaves one
        # checkpoint too many; its rerun (which finds this step saved) removes it.
        for old in sorted(manager.all_steps())[:-self.keep[kind]]:
            manager.delete(old)

    def close(self) -> None:
        self.periodic.close()
        self.best.close()


def _jsonable(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def read_json_items(step_dir: Path) -> dict:
    """The JSON items (config, norm, meta) of one checkpoint step folder, read as plain files."""
    items = {}
    for name in ("config", "norm", "meta"):
        path = step_dir / name / "metadata"
        try:
            items[name] = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"Checkpoint {step_dir} has no readable {name!r} item ({path}): {err}.") from None
    return items


def check_same_model(saved: dict, config: TrainConfig, where: str) -> None:
    """Raise CheckpointError naming every model key that differs between ``saved`` and ``config``."""
    diff = model_mismatch(saved, config.to_dict())
    if diff:
        raise CheckpointError(
            f"Checkpoint {where} is of another model; mismatched keys (saved -> this config): "
            f"{'; '.join(diff)}.")


def restore(manager: ocp.CheckpointManager, step: int, params_target, train_target, where: str):
    """(params, train) restored, as numpy arrays, into the shapes and dtypes of the targets."""
    try:
        out = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(host_target(params_target)),
            train=ocp.args.StandardRestore(host_target(train_target)),
        ))
    except Exception as err:  # orbax raises many types for a tree of another shape
        raise CheckpointError(
            f"Checkpoint {where} step {step} does not fit this model's parameters or optimizer "
            f"state: {str(err).splitlines()[0] if str(err) else type(err).__name__}.") from None
    _check_fits(out["params"], params_target, f"{where} step {step}")
    return out["params"], out["train"]


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadedPolicy:
    """A trained policy ready for evaluation.

    ``model`` is the Flax module: ``model.apply({"params": params}, x)`` over (B, T, D)
    normalized inputs, ``model.apply({"params": params}, carry, x_t, method="step")`` one step.
    ``normalizer`` (None when trained unnormalized) maps data to model units and back.
    ``dims`` is ``{"x_in": [...], "x_tgt": D}``; ``config`` the full training config.
    """

    model: Any
    params: Any
    normalizer: Any
    config: TrainConfig
    dims: dict
    step: int
    path: Path


def _resolve_root(path: Path) -> Path:
    """The folder that holds ``periodic/`` and ``best/``: a run folder or its checkpoints."""
    for cand in (path, path / "checkpoints"):
        if any((cand / k).is_dir() for k in KINDS):
            return cand
    return path


def load_policy(ckpt_dir: str | Path, which: str = "best") -> LoadedPolicy:
    """The policy, params and normalization stats of a run, ready for evaluation.

    ``ckpt_dir``: a run folder, its ``checkpoints`` folder, or a custom ``ckpt_dir``.
    ``which``: ``"best"`` (lowest val loss; falls back to the newest when there is none) or
    ``"latest"``.
    """
    from ncssm_policies.build import build_model, model_init_params  # as training built it

    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}.")
    path = Path(ckpt_dir)
    if not path.is_dir():
        raise CheckpointError(f"No checkpoint folder at {path}.")
    root = _resolve_root(path).resolve()
    steps = {k: sorted(int(p.name) for p in (root / k).iterdir() if p.name.isdigit())
             for k in KINDS if (root / k).is_dir()}
    if not any(steps.values()):
        raise CheckpointError(
            f"{path} holds no checkpoints (expected periodic/<step>/ or best/<step>/ folders).")
    if which == "best" and steps.get("best"):
        kind, step = "best", steps["best"][-1]
    else:
        kind, step = max(((k, s[-1]) for k, s in steps.items() if s), key=lambda ks: ks[1])
    step_dir = root / kind / str(step)
    items = read_json_items(step_dir)
    unknown = sorted(set(items["config"]) - set(FIELDS) - set(ALIASES)) \
        if isinstance(items["config"], dict) else []
    if unknown:
        raise CheckpointError(
            f"Checkpoint {step_dir} was written by a newer ncssm (or another version): its config "
            f"has the key(s) {', '.join(map(repr, unknown[:5]))}, which this version does not "
            f"know; load it with the ncssm that wrote it.")
    try:
        config = from_dict(items["config"], where=f"the config saved in {step_dir}")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    dims = items["meta"].get("dims")
    if not isinstance(dims, dict):
        raise CheckpointError(f"Checkpoint {step_dir} has no data dims in its meta item.")
    if not (step_dir / "params").is_dir():
        held = sorted(p.name for p in step_dir.iterdir() if p.is_dir())
        raise CheckpointError(f"Checkpoint {step_dir} has no 'params' item; it holds "
                              f"{', '.join(held) or 'none'}.")
    model = build_model(config, dims)
    try:  # the policy's own code (a plugin's, say) runs here for the first time
        target = model_init_params(model, dims)
    except Exception as err:  # noqa: BLE001 - any failure of the policy is one sentence
        raise CheckpointError(
            f"Policy {config.model_type!r} of checkpoint {step_dir} fails on inputs of widths "
            f"{dims.get('x_in')}: {_first_line(err)}.") from None
    manager = _manager(root, kind, 1, create=False)
    try:
        params = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(host_target(target))))["params"]
    except Exception as err:
        raise CheckpointError(
            f"Checkpoint {step_dir} cannot be restored into the model its config describes: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}.") from None
    finally:
        manager.close()
    _check_fits(params, target, step_dir)
    return LoadedPolicy(model, params, norm_from_json(items["norm"]), config, dims, step, step_dir)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _check_fits(restored, target, where) -> None:
    """A CheckpointError naming the first parameter whose shape (or presence) differs between
    what was restored and the model: orbax restores the saved arrays as they are."""
    def leaves(tree) -> dict:
        return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.shape(x)
                for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    saved, want = leaves(restored), leaves(target)
    for name in sorted(saved.keys() | want.keys()):
        if saved.get(name) != want.get(name):
            shape = lambda d: "absent" if name not in d else f"of shape {d[name]}"  # noqa: E731
            raise CheckpointError(
                f"Checkpoint {where} cannot be restored into the model its config describes: "
                f"parameter {name} is {shape(saved)} in the checkpoint but {shape(want)} in "
                f"the model.")


def host_target(tree):
    """Zeros as numpy arrays shaped like ``tree`` (arrays or ShapeDtypeStructs): a restore
    template that asks orbax for host arrays, whatever devices saved them."""
    return jax.tree.map(lambda x: np.zeros(np.shape(x), x.dtype), tree)


