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
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ncssm_policies.config import ConfigError, TrainConfig, load_config


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN or Inf loss, say); the message says why and what is kept."""


# ----------------------------------------------------------------------------------------------
# Model and data
# ----------------------------------------------------------------------------------------------


def policy_hparams(cfg: TrainConfig) -> dict:
    """The keyword arguments ``make(out_dim, **hparams)`` of ``cfg.model_type`` receives.

    Every policy gets ``d_model`` and ``n_layers``; S5 and Mamba get their layer keys (and
    ``dropout``) as ``layer_kwargs``, with ``model_kwargs`` merged in; a plugin's policy gets
    ``model_kwargs`` as they are.
    """
    if cfg.model_type == "s5":
        layer = dict(state_dim=cfg.ssm_size, blocks=cfg.blocks, C_init=cfg.c_init,
                     discretization=cfg.discretization, dt_min=cfg.dt_min, dt_max=cfg.dt_max,
                     conj_sym=cfg.conj_sym, clip_eigs=cfg.clip_eigs,
                     bidirectional=cfg.bidirectional, dropout=cfg.dropout)
    elif cfg.model_type == "mamba":
        layer = dict(d_state=cfg.d_state, expand=cfg.expand, dt_min=cfg.dt_min,
                     dt_max=cfg.dt_max, dropout=cfg.dropout)
    else:
        return dict(d_model=cfg.d_model, n_layers=cfg.n_layers, **cfg.model_kwargs)
    return dict(d_model=cfg.d_model, n_layers=cfg.n_layers,
                layer_kwargs={**layer, **cfg.model_kwargs})


def build_model(cfg: TrainConfig, dims: dict):
    """The Flax module for ``cfg`` and data ``dims`` (``{"x_in": [...], "x_tgt": D, ...}``)."""
    from ncssm_policies.models import build_policy
    from ncssm_policies.registry import registry

    reg = registry()
    if cfg.model_type not in reg.names():
        raise ConfigError(
            f"Config key 'model_type' is {cfg.model_type!r}, which no installed plugin "
            f"registers; known: {', '.join(reg.names())} (ncssm-train --list-policies).")
    try:
        return build_policy(reg.get(cfg.model_type), cfg.mmode, int(dims["x_tgt"]),
                            int_dim=int(dims.get("int_dim", 16)),
                            decoder_hidden=tuple(cfg.decoder_hidden), embed_dim=cfg.embed_dim,
                            **policy_hparams(cfg))
    except TypeError as err:  # a plugin's make() that does not take these hyper-parameters
        raise ConfigError(f"Policy {cfg.model_type!r} rejected its hyper-parameters: {err}.") from None


def dummy_input(dims: dict, batch: int, length: int):
    """Zeros shaped like one batch of ``x_in``: an array, or a tuple for two-part modes."""
    import jax.numpy as jnp

    parts = tuple(jnp.zeros((batch, length, d), jnp.float32) for d in dims["x_in"])
    return parts if len(parts) > 1 else parts[0]


def resolve_root(cfg: TrainConfig) -> Path:
    """The clip folder: ``root_dir``, or the built-in rodent clips (generated when absent)."""
    if cfg.root_dir is None:
        from ncssm_env.synthetic import builtin_clips

        return Path(builtin_clips("rodent"))
    root = Path(cfg.root_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"Config key 'root_dir' is {cfg.root_dir!r}, which is not a folder.")
    if not any(root.glob("clip_*.h5")):
        raise ConfigError(
            f"Data folder {root} (root_dir) holds no clip_<i>.h5 files; generate some with "
            f"'ncssm-data generate --out {root}' or point root_dir elsewhere.")
    return root


def data_dims(cfg: TrainConfig, ds) -> dict:
    """The dims the model is built for, from the data; written dims are checked against it."""
    dims = {"x_in": [int(d) for d in ds.dims["x_in"]], "x_tgt": int(ds.dims["x_tgt"])}
    if cfg.in_dim is not None and list(cfg.in_dim) != dims["x_in"]:
        raise ConfigError(f"Config key 'in_dim' is {cfg.in_dim}, but the {cfg.mmode} inputs of "
                          f"{ds.root_dir} have widths {dims['x_in']}.")
    if cfg.out_dim is not None and cfg.out_dim != dims["x_tgt"]:
        raise ConfigError(f"Config key 'out_dim' is {cfg.out_dim}, but the {cfg.mmode} target "
                          f"of {ds.root_dir} has width {dims['x_tgt']}.")
    if cfg.mmode == "state_intention_controller":
        have = ds.store.dims["latent_mean"][0] if ds.store.has("latent_mean") else None
        dims["int_dim"] = int(cfg.int_dim or have or 16)
    if ds.n_syllables is not None:
        dims["n_syllables"] = int(ds.n_syllables)
    return dims


def make_datasets(cfg: TrainConfig, root: Path, normalizer, start_step: int):
    from ncssm_data.dataset import ClipDataset

    common = dict(batch_size=cfg.batch_size, train_frac=cfg.train_frac, seg_len=cfg.seg_len,
                  preload=cfg.preload, test_batch=cfg.test_batch, mmode=cfg.mmode,
                  clip_idx=cfg.clip_idx, seed=cfg.seed, syllable_key=cfg.syllable_key)
    norm = normalizer if normalizer is not None else (
        None if cfg.norm_method == "none" else cfg.norm_method)
    train = ClipDataset(root, split="train", noise_std=cfg.noise_std, normalizer=norm,
                        start_step=start_step, **common)
    val = ClipDataset(root, split="val", normalizer=train.normalizer,
                      n_syllables=train.n_syllables, **common)
    return train, val


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


class Logger:
    """Metrics to ``metrics.jsonl`` always, and to TensorBoard or W&B when ``logger`` asks."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
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
    """(replicated, batch-sharded) NamedShardings over every device, or None on one device."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    n = jax.device_count()
    if n == 1:
        return None
    if batch_size % n:
        raise ConfigError(f"Config key 'batch_size' is {batch_size}, which the {n} devices "
                          f"cannot split evenly; use a multiple of {n}.")
    mesh = jax.make_mesh((n,), ("data",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def r2_scores(sse: np.ndarray, total: np.ndarray, sumsq: np.ndarray, n: int) -> dict:
    """R^2 per target dim from sums over ``n`` frames (dims of ~zero variance are NaN), their
    mean over dims, and the variance-weighted R^2 of the whole target."""
    sst = sumsq - total**2 / n
    ok = sst > 1e-8 * n
    per_dim = np.where(ok, 1.0 - sse / np.where(ok, sst, 1.0), np.nan)
    return {"mean": float(np.nanmean(per_dim)) if ok.any() else float("nan"),
            "weighted": float(1.0 - sse[ok].sum() / sst[ok].sum()) if ok.any() else float("nan"),
            "per_dim": [None if not math.isfinite(v) else float(v) for v in per_dim]}


def train(cfg: TrainConfig, run_dir: str | Path | None = None, progress: bool = True,
          plots: bool = True) -> RunResult:
    """Train ``cfg``. With ``run_dir`` holding checkpoints, resume from its newest one."""
    from ncssm_policies import checkpoint as ckpt

    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
    ckpt_root = Path(cfg.ckpt_dir) if cfg.ckpt_dir else run_dir / "checkpoints"
    root = resolve_root(cfg)

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
    start = resume[1] if resume else 0
    train_ds, val_ds = make_datasets(cfg, root, normalizer, start)
    try:
        dims = data_dims(cfg, train_ds)
        if saved and saved["meta"].get("dims") != dims:
            raise ckpt.CheckpointError(
                f"Checkpoint {ckpt_root} was trained on data of dims {saved['meta'].get('dims')}, "
                f"but {root} gives {dims}.")
        return _run(cfg, run_dir, ckpt_root, root, train_ds, val_ds, dims, resume, saved,
                    progress, plots)
    finally:
        train_ds.close()
        val_ds.close()


def _run(cfg, run_dir, ckpt_root, root, train_ds, val_ds, dims, resume, saved, progress, plots):
    import jax
    from tqdm.auto import tqdm

    from ncssm_env.jax_cache import enable_compilation_cache
    from ncssm_policies import checkpoint as ckpt

    enable_compilation_cache()  # a second run of the same shapes loads its compiled step
    model = build_model(cfg, dims)
    total = cfg.epochs * cfg.iters_per_epoch
    tx, lr_schedule = make_optimizer(cfg, total)
    key = jax.random.PRNGKey(cfg.seed)
    init_key, dropout_key = jax.random.split(key)
    params = model.init(init_key, dummy_input(dims, 1, 2))["params"]
    opt_state = tx.init(params)
    train_state = {"opt_state": opt_state, "key": dropout_key, "step": np.asarray(0, np.int64)}

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(_yaml(cfg))
    manager = ckpt.Checkpoints(ckpt_root, cfg.keep_ckpts)
    best_val = math.inf
    start = 0
    if resume is not None:
        kind, step = resume
        params, train_state = ckpt.restore(getattr(manager, kind), step, params, train_state,
                                           str(ckpt_root))
        start = int(train_state["step"])
        best_val = saved["meta"].get("best_val_loss") or math.inf

    shard = _shardings(cfg.batch_size)
    put_state = (lambda t: jax.device_put(t, shard[0])) if shard else jax.device_put
    put_batch = (lambda t: jax.device_put(t, shard[1])) if shard else jax.device_put
    params = put_state(params)
    opt_state, dropout_key = put_state(train_state["opt_state"]), put_state(train_state["key"])
    train_step, eval_step = make_steps(model, tx)
    val_batches = [put_batch(next(val_ds)) for _ in range(cfg.val_steps)]
    norm_json = ckpt.norm_to_json(train_ds.normalizer)

    logger = Logger(cfg, run_dir)
    bar = tqdm(total=total, initial=start, desc=f"ncssm-train {cfg.name}", unit="step",
               disable=not progress, dynamic_ncols=True)
    last_loss = float("nan")
    val_loss, r2 = float("nan"), {}
    try:
        for epoch in range(start // cfg.iters_per_epoch, cfg.epochs):
            losses = []
            for _ in range(cfg.iters_per_epoch):
                step = len(losses) + epoch * cfg.iters_per_epoch
                x_in, x_tgt = put_batch(next(train_ds))
                params, opt_state, loss = train_step(params, opt_state, dropout_key, step,
                                                     x_in, x_tgt)
                losses.append(loss)
                bar.update(1)
                if (step + 1) % 10 == 0 or step + 1 == total:
                    last_loss = float(loss)
                    _check_finite(last_loss, step + 1, ckpt_root)
                    bar.set_postfix(loss=f"{last_loss:.4g}")
                    logger.log({"step": step + 1, "epoch": epoch, "train_loss": last_loss,
                                "lr": float(lr_schedule(step))})
            epoch_loss = float(np.mean(jax.device_get(losses)))
            _check_finite(epoch_loss, (epoch + 1) * cfg.iters_per_epoch, ckpt_root)
            val_loss, r2 = _validate(eval_step, params, val_batches)
            _check_finite(val_loss, (epoch + 1) * cfg.iters_per_epoch, ckpt_root, "val")
            step = (epoch + 1) * cfg.iters_per_epoch
            logger.log({"step": step, "epoch": epoch, "epoch_train_loss": epoch_loss,
                        "val_loss": val_loss, "val_r2": r2["mean"]})
            bar.set_postfix(loss=f"{epoch_loss:.4g}", val=f"{val_loss:.4g}")
            last_loss = epoch_loss
            state = {"opt_state": opt_state, "key": dropout_key, "step": np.asarray(step, np.int64)}
            meta = {"dims": dims, "epoch": epoch + 1, "step": step, "val_loss": val_loss,
                    "best_val_loss": min(best_val, val_loss), "train_loss": epoch_loss}
            if val_loss < best_val:
                best_val = val_loss
                manager.save("best", step, params, state, cfg, norm_json, meta)
            if (epoch + 1) % cfg.ckpt_freq == 0 or epoch + 1 == cfg.epochs:
                manager.save("periodic", step, params, state, cfg, norm_json, meta)
    finally:
        bar.close()
        logger.close()
        manager.close()

    result = RunResult(run_dir, total, last_loss, val_loss, r2,
                       resumed_from=resume[1] if resume else None)
    result.paths = {"run folder": str(run_dir), "metrics": str(logger.path),
                    "checkpoints": str(ckpt_root)}
    if plots:
        from ncssm_policies import plots as plotting

        result.paths["learning curve"] = str(plotting.learning_curve(logger.path,
                                                                      run_dir / "learning_curve.png"))
        result.paths["predicted vs true"] = str(plotting.pred_vs_true(
            model, params, val_batches[0], train_ds.normalizer, cfg.mmode,
            run_dir / "pred_vs_true.png"))
    summary = {"name": cfg.name, "mmode": cfg.mmode, "model_type": cfg.model_type,
               "target": train_ds.mode.x_tgt, "step": total, "train_loss": last_loss,
               "val_loss": val_loss, "val_r2": r2, "paths": result.paths}
    from ncssm_policies.rollout import CONTROL_MODES, evaluate

    if cfg.eval_episodes and cfg.mmode in CONTROL_MODES:
        ev = evaluate(run_dir, num_envs=min(cfg.eval_envs, cfg.eval_episodes),
                      episodes=cfg.eval_episodes, seed=cfg.seed, progress=progress)
        result.closed_loop = summary["closed_loop"] = ev.summary
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
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
        lines.append(
            f"  closed loop, {ev['episodes']} episodes on held-out clips: "
            f"{100 * ev['fraction']['mean']:.0f}% of the clip completed (mean), joint error "
            f"{ev['err_joints']['mean']:.3f} rad, root error {ev['err_root_pos']['mean']:.3f} m; "
            f"ends: {causes}")
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
    args = p.parse_args(argv)

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
        t0 = time.perf_counter()
        result = train(cfg, run_dir=run_dir, progress=not args.no_progress)
        target = json.loads(Path(result.paths["summary"]).read_text())["target"]
        print(summary_text(cfg, result, target, time.perf_counter() - t0))
    except (ConfigError, TrainingError, ValueError, OSError) as err:
        print(f"ncssm-train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
