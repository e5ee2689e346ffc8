"""``ncssm-train``: teacher-forced training of a policy on clips, with exact resume.

The loop: ``epochs`` x ``iters_per_epoch`` jitted steps of MSE on normalized segments, then
``val_steps`` validation batches (the same ones every epoch), then checkpoints. Batch ``k``,
the dropout key of step ``k`` and everything else follow from the config's ``seed`` and ``k``,
so a resumed run sees exactly the batches an uninterrupted one would and ends bit-identical.

Run folder ``<runs_dir>/<name>-<YYYYmmdd-HHMMSS>/`` (see the README): ``config.yaml``,
``metrics.jsonl``, ``checkpoints/{periodic,best}/<step>/``, ``learning_curve.png``,
``pred_vs_true.png``, ``summary.json``, and ``tensorboard/`` or ``wandb/`` on request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncssm_data import locks
from ncssm_data.clips import atomic_write_text
from ncssm_policies.build import build_model, data_dims, dummy_input, resolve_clip_dir
from ncssm_policies.config import ConfigError, TrainConfig, load_config


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN or Inf loss, say); the message says why and what is kept."""


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def make_datasets(cfg: TrainConfig, root: Path, normalizer, start_step: int):
    from ncssm_data.dataset import ClipDataset

    norm = normalizer if normalizer is not None else (
        None if cfg.norm_method == "none" else cfg.norm_method)
    train = train_dataset(cfg, root, norm, start_step)
    val = ClipDataset(root, split="val", normalizer=train.normalizer,
                      n_syllables=train.n_syllables, **_dataset_args(cfg))
    return train, val


def _dataset_args(cfg: TrainConfig) -> dict:
    from ncssm_policies import distributed

    # With several processes, each reads only its own rows of every global batch.
    return dict(batch_size=cfg.batch_size, train_frac=cfg.train_frac, seg_len=cfg.seg_len,
                preload=cfg.preload, test_batch=cfg.test_batch, mmode=cfg.mmode,
                clip_idx=cfg.clip_idx, seed=cfg.seed, syllable_key=cfg.syllable_key,
                shard=distributed.shard())


def train_dataset(cfg: TrainConfig, root: Path, normalizer, start_step: int,
                  n_syllables: int | None = None):
    """The training :class:`ClipDataset` of ``cfg`` over the clips of ``root``."""
    from ncssm_data.dataset import ClipDataset

    return ClipDataset(root, split="train", noise_std=cfg.noise_std, normalizer=normalizer,
                       start_step=start_step, n_syllables=n_syllables, **_dataset_args(cfg))


# ----------------------------------------------------------------------------------------------
# Optimizer and steps
# ----------------------------------------------------------------------------------------------

SSM_PARAMS = ("Lambda_re", "Lambda_im", "B", "log_step")  # S5's, as the S5 paper treats them


def param_labels(params):
    """``"ssm"`` for S5's Lambda, B and log-step; ``"no_decay"`` for biases, norms, D and
    Mamba's A_log; ``"decay"`` for the rest (the kernels)."""
    import jax

    def label(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        last = names[-1]
        if any(n.startswith("ssm") for n in names[:-1]) and last in SSM_PARAMS:
            return "ssm"
        if last in ("bias", "scale", "D", "A_log", "conv_bias") or leaf.ndim < 2:
            return "no_decay"
        return "decay"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: TrainConfig, total_steps: int):
    """global-norm clipping, then AdamW by group, each with linear warmup then cosine decay."""
    import optax

    def schedule(peak):
        warm = min(cfg.warmup, max(total_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(0.0, peak, warm, max(total_steps, warm + 1),
                                                  end_value=0.0)

    groups = {
        "decay": optax.adamw(schedule(cfg.learning_rate), weight_decay=cfg.weight_decay),
        "no_decay": optax.adamw(schedule(cfg.learning_rate), weight_decay=0.0),
        "ssm": optax.adamw(schedule(cfg.ssm_lr), weight_decay=0.0),
    }
    # The chain's structure never depends on the values, so a resumed run may change them.
    clip = optax.clip_by_global_norm(cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    return optax.chain(clip, optax.multi_transform(groups, param_labels)), schedule(cfg.learning_rate)


def make_steps(model, tx):
    """Jitted ``train_step(params, opt_state, key, step, x_in, x_tgt) -> (params, opt_state,
    loss)`` and ``eval_step(params, x_in, x_tgt) -> (mse, sse (D,), sum (D,), sumsq (D,))``."""
    import jax
    import jax.numpy as jnp
    import optax

    def loss_fn(params, x_in, x_tgt, key):
        y = model.apply({"params": params}, x_in, train=True, rngs={"dropout": key})
        return jnp.mean(jnp.square(y - x_tgt))

    @jax.jit
    def train_step(params, opt_state, key, step, x_in, x_tgt):
        loss, grads = jax.value_and_grad(loss_fn)(params, x_in, x_tgt,
                                                  jax.random.fold_in(key, step))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def eval_step(params, x_in, x_tgt):
        y = model.apply({"params": params}, x_in)
        err = jnp.square(y - x_tgt)
        over = tuple(range(x_tgt.ndim - 1))
        return (jnp.mean(err), jnp.sum(err, over), jnp.sum(x_tgt, over),
                jnp.sum(jnp.square(x_tgt), over))

    return train_step, eval_step


# ----------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------


class NullLogger:
    """The logger of every process but process 0: logs nothing."""

    path = None

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _drop_partial_line(path: Path) -> None:
    """Cut ``path`` back to its last complete line (a run killed mid-write leaves a part)."""
    try:
        with path.open("rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


class Logger:
    """Metrics to ``metrics.jsonl`` always, and to TensorBoard or W&B when ``logger`` asks."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        _drop_partial_line(self.path)  # what a killed run was writing when it died
        self._file = self.path.open("a")
        self._tb = self._wandb = None
        if cfg.logger == "tensorboard":
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ConfigError("logger: tensorboard needs the tensorboardX package "
                                  "(pip install tensorboardX).") from None
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        elif cfg.logger == "wandb":
            try:
                import wandb
            except ImportError:
                raise ConfigError("logger: wandb needs the wandb package (pip install wandb); "
                                  "set WANDB_MODE=offline to log without an account.") from None
            (run_dir / "wandb").mkdir(exist_ok=True)
            self._wandb = wandb.init(project=cfg.project, name=run_dir.name, tags=list(cfg.tags),
                                     config=cfg.to_dict(), dir=str(run_dir), reinit=True)

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["step"]
        scalars = {k: v for k, v in record.items()
                   if k not in ("step", "epoch") and isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What a finished run wrote and measured."""

    run_dir: Path
    step: int
    train_loss: float
    val_loss: float
    val_r2: dict
    paths: dict = field(default_factory=dict)
    resumed_from: int | None = None
    closed_loop: dict | None = None  # the summary of the closed-loop evaluation, if any


def new_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.runs_dir) / f"{cfg.name}-{stamp}"
    run_dir, k = base, 1
    while run_dir.exists():
        run_dir, k = Path(f"{base}-{k}"), k + 1
    return run_dir


def _shardings(batch_size: int):
    """(replicated, batch-sharded) NamedShardings over every device of every process, or None
    on one device. The devices are ordered by process, so process ``p`` holds rows
    ``[p B / P, (p + 1) B / P)`` of each batch: the rows its dataset reads."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    n, procs = jax.device_count(), jax.process_count()
    if n == 1:
        return None
    if batch_size % n:
        where = f"{n} devices" + (f" of the {procs} processes" if procs > 1 else "")
        raise ConfigError(f"Config key 'batch_size' is {batch_size}, which the {where} "
                          f"cannot split evenly; use a multiple of {n}.")
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = Mesh(np.array(devices), ("data",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def _put(tree, sharding):
    """``tree`` (host or single-device arrays, the same on every process) as global arrays of
    ``sharding``; each process supplies only the pieces its own devices hold."""
    import jax

    if sharding is None:
        return jax.device_put(tree)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def _put_rows(batch, sharding):
    """This process's rows of a global batch (``batch``, as its dataset yields them) as global
    arrays split over the devices of every process."""
    import jax

    if sharding is None:
        return jax.device_put(batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def r2_scores(sse: np.ndarray, total: np.ndarray, sumsq: np.ndarray, n: int) -> dict:
    """R^2 per target dim from sums over ``n`` frames (dims of ~zero variance are NaN), their
    mean over dims, and the variance-weighted R^2 of the whole target."""
    sst = sumsq - total**2 / n
    ok = sst > 1e-8 * n
    per_dim = np.where(ok, 1.0 - sse / np.where(ok, sst, 1.0), np.nan)
    return {"mean": float(np.nanmean(per_dim)) if ok.any() else float("nan"),
            "weighted": float(1.0 - sse[ok].sum() / sst[ok].sum()) if ok.any() else float("nan"),
            "per_dim": [None if not math.isfinite(v) else float(v) for v in per_dim]}


@dataclass
class Setup:
    """What a run starts from: its config and folders, its datasets and the dims they give,
    and, when it resumes, the checkpoint's ``(kind, step)`` and its JSON items."""

    cfg: TrainConfig
    run_dir: Path
    ckpt_root: Path
    clip_dir: Path
    train_ds: Any
    val_ds: Any
    dims: dict
    resume: tuple[str, int] | None = None
    saved: dict | None = None
    on_epoch: Any = None  # see train()
    shard: Any = None  # (replicated, batch-sharded) shardings; None on one device


@dataclass
class State:
    """The live training state: params, optimizer state, dropout key, best val loss so far."""

    params: Any
    opt_state: Any
    key: Any
    best_val: float = math.inf
    best_score: float = -math.inf  # select: closed_loop


def train(cfg: TrainConfig, run_dir: str | Path | None = None, progress: bool = True,
          plots: bool = True, on_epoch=None) -> RunResult:
    """Train ``cfg``. With ``run_dir`` holding checkpoints, resume from its newest one.

    ``on_epoch(epoch, step, val_loss, scores)``, when given, is called after each epoch's
    validation and checkpoints (``scores``: the closed-loop scores of that epoch, or None); an
    exception it raises (a sweep pruning the trial, say) ends the run there, checkpoints kept.
    """
    from ncssm_policies import checkpoint as ckpt
    from ncssm_policies import distributed
    from ncssm_policies.build import preflight

    preflight(cfg)  # a plugin's policy that breaks the contract, refused before any data loads
    multi = _check_multiprocess(cfg)
    shard = _shardings(cfg.batch_size)  # refuses a batch the devices cannot split, first
    if multi:
        distributed.barrier("start")  # every process looks for checkpoints before any writes
    # Every process writes to process 0's run folder; process 0 makes built-in clips first.
    run_dir = Path(distributed.share_text(
        "run_dir", None if not distributed.is_main() else
        str(run_dir if run_dir is not None else new_run_dir(cfg))))
    # One writer per run folder: a second ncssm-train on it is refused, naming this one.
    with locks.writing(run_dir) if distributed.is_main() else contextlib.nullcontext():
        return _train(cfg, run_dir, multi, shard, progress, plots, on_epoch)


def _train(cfg, run_dir, multi, shard, progress, plots, on_epoch) -> RunResult:
    from ncssm_policies import checkpoint as ckpt
    from ncssm_policies import distributed

    ckpt_root = Path(cfg.ckpt_dir) if cfg.ckpt_dir else run_dir / "checkpoints"
    if multi and not distributed.is_main():
        distributed.barrier("clips")
    clip_dir = resolve_clip_dir(cfg)
    if multi and distributed.is_main():
        distributed.barrier("clips")

    # Resume: the newest checkpoint of this run folder, if any.
    resume = None
    if ckpt_root.is_dir() and any((ckpt_root / k).is_dir() for k in ckpt.KINDS):
        manager = ckpt.Checkpoints(ckpt_root, cfg.keep_ckpts)
        resume = manager.latest()
        manager.close()
    saved = None
    if resume is not None:
        saved = ckpt.read_json_items(ckpt_root / resume[0] / str(resume[1]))
        ckpt.check_same_model(saved["config"], cfg, str(ckpt_root))

    normalizer = ckpt.norm_from_json(saved["norm"]) if saved else None
    train_ds, val_ds = make_datasets(cfg, clip_dir, normalizer, resume[1] if resume else 0)
    setup = Setup(cfg, run_dir, ckpt_root, clip_dir, train_ds, val_ds, {}, resume, saved,
                  on_epoch, shard)
    try:
        setup.dims = dims = data_dims(cfg, train_ds)
        if saved and saved["meta"].get("dims") != dims:
            raise ckpt.CheckpointError(
                f"Checkpoint {ckpt_root} was trained on data of dims {saved['meta'].get('dims')}, "
                f"but {clip_dir} gives {dims}.")
        if cfg.dagger is not None:
            from ncssm_policies import dagger

            dagger.check_clips(train_ds.store, clip_dir)
            dagger.make_expert(cfg, train_ds.store.body or "rodent")  # refused before training
        return run(setup, progress, plots)
    finally:
        setup.train_ds.close()
        val_ds.close()


def _check_multiprocess(cfg: TrainConfig) -> bool:
    """True with several processes; refuses what only one process can do."""
    import jax

    if jax.process_count() == 1:
        return False
    if cfg.dagger is not None or cfg.select == "closed_loop":
        key = "dagger" if cfg.dagger is not None else "select: closed_loop"
        raise ConfigError(f"Config key {key!r} rolls the policy out during training, which runs "
                          f"on one process; train it without --num-processes (or srun -n 1).")
    return True


def run(setup: Setup, progress: bool = True, plots: bool = True) -> RunResult:
    """The run, top to bottom: build the model and optimizer, start (or restore) the state,
    train epoch by epoch with validation and checkpoints, then write the plots and summary and
    evaluate closed loop."""
    import jax
    from tqdm.auto import tqdm

    from ncssm_env.jax_cache import enable_compilation_cache
    from ncssm_policies import checkpoint as ckpt
    from ncssm_policies import distributed

    cfg = setup.cfg
    main_process = distributed.is_main()  # logs, plots and writes the summary
    enable_compilation_cache()  # a second run of the same shapes loads its compiled step
    model = build_model(cfg, setup.dims)
    total = cfg.epochs * cfg.iters_per_epoch
    tx, lr_schedule = make_optimizer(cfg, total)
    if main_process:
        setup.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(setup.run_dir / "config.yaml", _yaml(cfg))
    manager = ckpt.Checkpoints(setup.ckpt_root, cfg.keep_ckpts)
    state, start = _start(setup, model, tx, manager)

    shard = setup.shard
    put_batch = lambda batch: _put_rows(batch, shard and shard[1])  # noqa: E731
    train_step, eval_step = make_steps(model, tx)
    val_host = [next(setup.val_ds) for _ in range(cfg.val_steps)]  # this process's rows
    val_batches = [put_batch(batch) for batch in val_host]
    norm_json = ckpt.norm_to_json(setup.train_ds.normalizer)
    logger = Logger(cfg, setup.run_dir) if main_process else NullLogger()
    bar = tqdm(total=total, initial=start, desc=f"ncssm-train {cfg.name}", unit="step",
               disable=not (progress and main_process), dynamic_ncols=True)
    train_loss, val_loss, r2 = float("nan"), float("nan"), {}
    try:
        rounds = None if cfg.dagger is None else _dagger_resume(setup, model, state, start,
                                                                 logger)
        for epoch in range(start // cfg.iters_per_epoch, cfg.epochs):
            train_loss = _train_epoch(setup, state, epoch, train_step, put_batch, lr_schedule,
                                      logger, bar)
            val_loss, r2 = _validate(eval_step, state.params, val_batches)
            step = (epoch + 1) * cfg.iters_per_epoch
            _check_finite(val_loss, step, setup.ckpt_root, "val")
            logger.log({"step": step, "epoch": epoch, "epoch_train_loss": train_loss,
                        "val_loss": val_loss, "val_r2": r2["mean"]})
            bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
            score = _closed_loop_score(setup, model, state, epoch, step, logger)
            _save(setup, state, manager, epoch, step, train_loss, val_loss, norm_json, score,
                  force=rounds is not None and epoch + 1 in rounds)
            if rounds is not None and epoch + 1 in rounds:
                _dagger_round(setup, model, state, rounds.index(epoch + 1) + 1, epoch + 1,
                              logger, score)
            if setup.on_epoch is not None:
                setup.on_epoch(epoch, step, val_loss, score)
            if rounds is not None and epoch + 1 == cfg.epochs:  # the last point of dagger.png
                logger.log({"step": step, "epoch": epoch, "dagger_final": True,
                            "train_frames": setup.train_ds.frames,
                            **(score or _closed_loop(setup, model, state, step))})
    finally:
        bar.close()
        logger.close()
        manager.close()
    result = RunResult(setup.run_dir, total, train_loss, val_loss, r2,
                       resumed_from=setup.resume[1] if setup.resume else None)
    if main_process:
        # Host copies: with several processes, a global array takes every process to compute.
        result = _finish(setup, result, model, jax.device_get(state.params), val_host[0],
                         logger.path, plots, progress)
    distributed.barrier("finished")  # the others wait for process 0's plots and evaluation
    return result


def _start(setup: Setup, model, tx, manager) -> tuple[State, int]:
    """The state to train from, on the devices, and its step: fresh from the config's seed,
    or restored from the checkpoint ``setup.resume``."""
    import jax

    from ncssm_policies import checkpoint as ckpt

    cfg = setup.cfg
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = model.init(init_key, dummy_input(setup.dims, 1, 2))["params"]
    train_state = {"opt_state": tx.init(params), "key": dropout_key,
                   "step": np.asarray(0, np.int64)}
    best_val, best_score, start = math.inf, None, 0
    if setup.resume is not None:
        kind, step = setup.resume
        params, train_state = ckpt.restore(getattr(manager, kind), step, params, train_state,
                                           str(setup.ckpt_root))
        start = int(train_state["step"])
        best_val = setup.saved["meta"].get("best_val_loss") or math.inf
        best_score = setup.saved["meta"].get("best_score")
    shard = setup.shard
    put = lambda tree: _put(tree, shard and shard[0])  # noqa: E731  (replicated)
    return State(put(params), put(train_state["opt_state"]), put(train_state["key"]),
                 best_val, -math.inf if best_score is None else best_score), start


def _train_epoch(setup: Setup, state: State, epoch: int, train_step, put_batch, lr_schedule,
                 logger, bar) -> float:
    """``iters_per_epoch`` training steps on ``state`` (updated in place); the epoch's mean
    loss. Every 10 steps the loss is logged and checked to be finite."""
    import jax

    cfg = setup.cfg
    total = cfg.epochs * cfg.iters_per_epoch
    losses = []
    for i in range(cfg.iters_per_epoch):
        step = epoch * cfg.iters_per_epoch + i
        x_in, x_tgt = put_batch(next(setup.train_ds))
        state.params, state.opt_state, loss = train_step(state.params, state.opt_state,
                                                         state.key, step, x_in, x_tgt)
        losses.append(loss)
        bar.update(1)
        if (step + 1) % 10 == 0 or step + 1 == total:
            last = float(loss)
            _check_finite(last, step + 1, setup.ckpt_root)
            bar.set_postfix(loss=f"{last:.4g}")
            logger.log({"step": step + 1, "epoch": epoch, "train_loss": last,
                        "lr": float(lr_schedule(step))})
    epoch_loss = float(np.mean(jax.device_get(losses)))
    _check_finite(epoch_loss, (epoch + 1) * cfg.iters_per_epoch, setup.ckpt_root)
    return epoch_loss


def _policy(setup: Setup, model, state: State, step: int):
    from ncssm_policies.checkpoint import LoadedPolicy

    return LoadedPolicy(model, state.params, setup.train_ds.normalizer, setup.cfg, setup.dims,
                        step, setup.run_dir)


def _closed_loop(setup: Setup, model, state: State, step: int) -> dict:
    """The closed-loop scores of the current params on the val clips (one fixed plan of
    ``eval_episodes`` episodes, beside zero action and the expert): ``closed_loop_score``
    (the return score), ``survival`` and ``score_joints``."""
    from ncssm_policies.rollout import evaluate

    cfg = setup.cfg
    s = evaluate(_policy(setup, model, state, step), num_envs=min(cfg.eval_envs, cfg.eval_episodes),
                 episodes=cfg.eval_episodes, seed=cfg.seed, behaviour=False).summary
    return {"closed_loop_score": float(s["score_return"]), "survival": s["survival"],
            "score_joints": s["score_joints"]}


def _closed_loop_score(setup: Setup, model, state: State, epoch: int, step: int,
                       logger) -> dict | None:
    """With ``select: closed_loop``, on every ``eval_every``-th epoch and the last: the
    :func:`_closed_loop` scores, logged; else None."""
    cfg = setup.cfg
    if cfg.select != "closed_loop" or ((epoch + 1) % cfg.eval_every and epoch + 1 != cfg.epochs):
        return None
    scores = _closed_loop(setup, model, state, step)
    logger.log({"step": step, "epoch": epoch, **scores})
    return scores


# ----------------------------------------------------------------------------------------------
# DAgger (ncssm_policies.dagger)
# ----------------------------------------------------------------------------------------------


def _use_aggregate(setup: Setup, agg, step: int) -> None:
    """Train from the aggregated clips from batch ``step`` on (same normalizer)."""
    old = setup.train_ds
    setup.train_ds = train_dataset(setup.cfg, agg.dir, old.normalizer, step, old.n_syllables)
    old.close()


def _dagger_resume(setup: Setup, model, state: State, start: int, logger) -> list[int]:
    """The round epochs. On resume: the rounds committed by the resumed epoch are kept (and
    trained on), anything else a round wrote is removed, and a round due at this very epoch
    (killed before its commit) runs again with the restored params."""
    from ncssm_policies import dagger

    cfg = setup.cfg
    rounds = dagger.round_epochs(cfg)
    done = start // cfg.iters_per_epoch
    if done == 0:
        return rounds
    agg = dagger.Aggregate(setup.run_dir, setup.clip_dir)
    kept = agg.prepare(done)
    if done in rounds and all(r["epoch"] != done for r in kept):
        _dagger_round(setup, model, state, rounds.index(done) + 1, done, logger, None)
    elif kept:
        _use_aggregate(setup, agg, start)
    return rounds


def _dagger_round(setup: Setup, model, state: State, k: int, epoch: int, logger,
                  scores: dict | None) -> None:
    """Round ``k`` after ``epoch`` epochs: roll out, label, commit, log (with the closed-loop
    scores of the policy that collected it), and train on the aggregate from here on."""
    from ncssm_policies import dagger

    cfg = setup.cfg
    step = epoch * cfg.iters_per_epoch
    agg = dagger.Aggregate(setup.run_dir, setup.clip_dir)
    agg.prepare(epoch - 1)  # drops a killed attempt at this round
    rec = dagger.run_round(_policy(setup, model, state, step), cfg, agg, k, epoch, step)
    _use_aggregate(setup, agg, step)
    scores = scores or _closed_loop(setup, model, state, step)
    logger.log({"step": step, "epoch": epoch - 1, "dagger_round": k,
               "dagger_episodes": rec["episodes"], "dagger_clips": len(rec["clips"]),
               "dagger_frames": rec["frames"], "dagger_total_frames": agg.frames(),
               "dagger_short": rec["short"], "dagger_rollout_survival": rec["rollout_survival"],
               "train_frames": setup.train_ds.frames, **scores})


def _save(setup: Setup, state: State, manager, epoch: int, step: int, train_loss: float,
          val_loss: float, norm_json, scores: dict | None = None, force: bool = False) -> None:
    """The epoch's checkpoints: ``best`` when the val loss improved (or, with ``select:
    closed_loop``, the closed-loop score of ``scores``), ``periodic`` every ``ckpt_freq``
    epochs, at the end, and when ``force`` (before a DAgger round)."""
    score = None if scores is None else scores["closed_loop_score"]
    cfg = setup.cfg
    saved = {"opt_state": state.opt_state, "key": state.key, "step": np.asarray(step, np.int64)}
    meta = {"dims": setup.dims, "epoch": epoch + 1, "step": step, "val_loss": val_loss,
            "best_val_loss": min(state.best_val, val_loss), "train_loss": train_loss}
    if cfg.select == "closed_loop":
        better = score is not None and score > state.best_score
        if better:
            state.best_score = score
        meta.update(closed_loop_score=score, best_score=state.best_score)
    else:
        better = val_loss < state.best_val
    state.best_val = min(state.best_val, val_loss)
    if better:
        manager.save("best", step, state.params, saved, cfg, norm_json, meta)
    if force or (epoch + 1) % cfg.ckpt_freq == 0 or epoch + 1 == cfg.epochs:
        manager.save("periodic", step, state.params, saved, cfg, norm_json, meta)


def _finish(setup: Setup, result: RunResult, model, params, val_batch, metrics_path: Path,
            plots: bool, progress: bool) -> RunResult:
    """The plots, the closed-loop evaluation of a mode that acts, and ``summary.json``."""
    from ncssm_data.modes import get_mode
    from ncssm_policies.rollout import evaluate

    cfg, run_dir = setup.cfg, setup.run_dir
    result.paths = {"run folder": str(run_dir), "metrics": str(metrics_path),
                    "checkpoints": str(setup.ckpt_root)}
    if plots:
        from ncssm_policies import plots as plotting

        result.paths["learning curve"] = str(plotting.learning_curve(
            metrics_path, run_dir / "learning_curve.png"))
        result.paths["predicted vs true"] = str(plotting.pred_vs_true(
            model, params, val_batch, setup.train_ds.normalizer, cfg.mmode,
            run_dir / "pred_vs_true.png"))
    summary = {"name": cfg.name, "mmode": cfg.mmode, "model_type": cfg.model_type,
               "target": setup.train_ds.mode.x_tgt, "step": result.step,
               "train_loss": result.train_loss, "val_loss": result.val_loss,
               "val_r2": result.val_r2, "paths": result.paths}
    # The results so far first: a closed-loop evaluation that fails loses nothing.
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    if cfg.eval_episodes and get_mode(cfg.mmode).acts:
        ev = evaluate(run_dir, num_envs=min(cfg.eval_envs, cfg.eval_episodes),
                      episodes=cfg.eval_episodes, seed=cfg.seed, progress=progress,
                      behaviour=False)
        result.closed_loop = summary["closed_loop"] = ev.summary
    if plots and cfg.dagger is not None:
        from ncssm_policies import plots as plotting

        result.paths["dagger"] = str(plotting.dagger_curve(metrics_path, run_dir / "dagger.png"))
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    result.paths["summary"] = str(run_dir / "summary.json")
    return result


def _check_finite(value: float, step: int, ckpt_root: Path, what: str = "training") -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"The {what} loss became {value} by step {step}; training stopped. The last good "
            f"checkpoint in {ckpt_root} is intact. Lower learning_rate or set grad_clip.")


def _validate(eval_step, params, batches) -> tuple[float, dict]:
    import jax

    mse, sse, total, sumsq, n = [], 0.0, 0.0, 0.0, 0
    for x_in, x_tgt in batches:
        m, s, t, q = jax.device_get(eval_step(params, x_in, x_tgt))
        mse.append(float(m))
        sse, total, sumsq = sse + s, total + t, sumsq + q
        n += int(np.prod(x_tgt.shape[:-1]))
    return float(np.mean(mse)), r2_scores(np.asarray(sse, np.float64), np.asarray(total, np.float64),
                                          np.asarray(sumsq, np.float64), n)


def _yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def summary_text(cfg: TrainConfig, result: RunResult, target: str, seconds: float) -> str:
    r2 = result.val_r2
    dims = r2.get("per_dim", [])
    shown = ", ".join("-" if v is None else f"{v:.2f}" for v in dims[:8])
    lines = [
        f"ncssm-train {cfg.name}: {cfg.model_type} {cfg.mmode}, {result.step} steps in "
        f"{seconds:.0f} s" + (f" (resumed at step {result.resumed_from})"
                              if result.resumed_from is not None else ""),
        f"  target {target!r}: val loss {result.val_loss:.4g} (normalized MSE), "
        f"R2 {r2.get('mean', float('nan')):.3f} (mean over {len(dims)} dims), "
        f"{r2.get('weighted', float('nan')):.3f} (variance-weighted)",
        f"  R2 of the first dims: {shown}",
        f"  train loss {result.train_loss:.4g}",
    ]
    ev = result.closed_loop
    if ev:
        causes = ", ".join(f"{k} {v}" for k, v in sorted(ev["causes"].items()))
        base = ev.get("baselines", {})
        zero, expert = base.get("zero"), base.get("expert")
        line = (f"  closed loop, {ev['episodes']} episodes on held-out clips: survival "
                f"{100 * ev['survival']:.0f}%")
        if zero:
            line += f" (zero action {100 * zero['survival']:.0f}%)"
        if "score_joints" in ev:
            line += f", joint score {ev['score_joints']:.2f} (zero action 0, expert 1)"
        line += f", joint error {ev['err_joints']['mean']:.3f} rad"
        if zero and expert:
            line += (f" (zero {zero['err_joints']['mean']:.3f}, expert "
                     f"{expert['err_joints']['mean']:.3f})")
        lines.append(line + f"; ends: {causes}")
    lines += [f"  {k}: {v}" for k, v in result.paths.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="ncssm-train",
        description="Train a sequence-model policy on clips. With no --config, the quickstart: "
                    "S5 state->action on the built-in rodent clips (generated on first use).")
    p.add_argument("--config", help="a YAML config (see configs/); default: the quickstart")
    p.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config values, each read as a YAML scalar")
    p.add_argument("--run-dir", help="write to this run folder; resume when it has checkpoints")
    p.add_argument("--resume", metavar="DIR",
                   help="resume the run in DIR (its saved config, plus any --override)")
    p.add_argument("--list-policies", action="store_true",
                   help="list the registered policies and broken plugins, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--traceback", action="store_true",
                   help="on an error raised in a plugin's code, print the full traceback too")
    dist = p.add_argument_group(
        "several processes (data-parallel; inside srun with several tasks they come from SLURM)")
    dist.add_argument("--coordinator", metavar="HOST:PORT",
                      help="process 0's address, the same for every process")
    dist.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    dist.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")
    sweep = p.add_argument_group("Optuna sweeps (see configs/sweep.yaml)")
    sweep.add_argument("--sweep", metavar="YAML", help="run the sweep in YAML instead of one run")
    sweep.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes")
    sweep.add_argument("--slurm", action="store_true", help="the workers as a SLURM job array")
    sweep.add_argument("--storage", metavar="URL", help="the study's database (SQLAlchemy URL)")
    sweep.add_argument("--report", action="store_true", help="only report the sweep so far")
    sweep.add_argument("--sweep-worker", metavar="ID", help=argparse.SUPPRESS)  # one worker
    args = p.parse_args(argv)
    from ncssm_policies.registry import PluginError

    if args.sweep:
        from ncssm_policies.sweep import main as sweep_main

        return sweep_main(args, train)

    if args.list_policies:
        from ncssm_policies.__main__ import main as policies_main

        return policies_main(["list"])
    try:
        run_dir = args.run_dir
        if args.resume:
            run_dir = Path(args.resume)
            saved = run_dir / "config.yaml"
            if not saved.is_file():
                raise ConfigError(f"--resume {run_dir}: no run folder with a config.yaml there.")
            if not any((run_dir / "checkpoints" / k).is_dir() for k in ("periodic", "best")):
                raise ConfigError(f"--resume {run_dir}: the run folder has no checkpoints yet.")
            cfg = load_config(args.config or saved, args.override)
        else:
            cfg = load_config(args.config, args.override)
        from ncssm_policies import distributed

        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        t0 = time.perf_counter()
        result = train(cfg, run_dir=run_dir, progress=not args.no_progress)
        if distributed.is_main():
            target = json.loads(Path(result.paths["summary"]).read_text())["target"]
            print(summary_text(cfg, result, target, time.perf_counter() - t0))
    except Exception as err:  # noqa: BLE001 - a plugin's error is one sentence naming it
        from ncssm_policies.build import report_error

        return report_error("ncssm-train", err, args.traceback,
                            (ConfigError, TrainingError, ValueError, OSError, PluginError))
    return 0


if __name__ == "__main__":
    sys.exit(main())
