"""Open-loop scoring of trained models that predict rather than act.

``score_open_loop`` cuts ``windows`` random windows of ``context + horizon`` frames from the
clips, warms each window's recurrent carry on its first ``context`` true input frames (teacher
forcing), then predicts ``horizon`` frames ahead:

- ``pure_state``, ``pure_intention`` (input and target are the same quantity): autoregressive;
  after the first prediction, the model's own previous prediction is its next input (mapped
  to data units with the target stats and back to model units with the input stats);
- ``state_intention`` (true state in, intention out): nothing to feed back, so the
  ``horizon`` steps stay teacher-forced, with true inputs.

Prediction ``h`` (1-based) is the model's output after the input of window frame
``context + h - 2`` and is compared with the target frame ``context + h - 1`` (targets are one
step ahead, :mod:`ncssm_data.modes`): prediction 1 is the teacher-forced output at the last
context frame. All windows run as one batch in one jitted ``jax.lax.scan``.

Errors are in model units: normalized units when the run normalized, data units otherwise.
The control modes act in the body; :func:`ncssm_policies.rollout.evaluate` scores them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ncssm_data.errors import check_count
from ncssm_policies.build import held_out_clips, resolve_clip_dir

HORIZONS = (1, 5, 10, 25, 50, 100, 250, 500, 1000)  # summary steps (plus ``horizon`` itself)
__all__ = ["EvalResult", "HORIZONS", "held_out_clips", "make_scorer", "score_open_loop"]


@dataclass
class EvalResult:
    """Per-episode (or, open loop, per-window) arrays (E,) and their summaries.

    Closed loop, ``episodes`` holds ``clip``, ``start``, ``length`` (control steps before the
    episode ended), ``fraction`` (of the frames the clip had left after ``start``), ``cause``
    (the termination cause, or ``"end"``), ``return`` (summed reward), and the per-step mean of
    each tracking error (``err_*``) and reward term (``rew_*``). ``summary`` has their mean and
    median over episodes, and the count of each cause. ``rollouts`` (when recorded) holds one
    dict per episode: ``qpos`` and ``ref_qpos`` (T, nq), the state before each action and the
    reference at the same frame; ``ctrl`` (T, nu), the action; ``reward`` and each ``err_*``
    and ``rew_*`` (T,); and the episode's scalars. Open loop, see :func:`score_open_loop`.
    """

    episodes: dict
    summary: dict = field(default_factory=dict)
    rollouts: list | None = None
    baselines: dict | None = None  # closed loop: baseline name -> its EvalResult, same episodes
    poses: list | None = None  # closed loop, for the behaviour scores: (T, F) pose columns


def _source_width(store, source: str) -> int:
    from ncssm_data.modes import DATASETS

    if source in DATASETS:
        return int(store.dims[source][0])
    a, b = store.obs_layout[source]
    return b - a


def make_scorer(model, normalizer, feedback: bool):
    """The jitted ``run(params, x_ctx, x_next) -> pred``: one batch of windows, in model units.

    ``x_ctx`` (B, C, D_in): the true context inputs, normalized. ``x_next`` (H - 1, B, D_in),
    time-major: the true inputs after the context (used only without ``feedback``). ``pred``
    (B, H, D_tgt): prediction 1 is the output at the last context frame; with ``feedback``
    each later input is the previous prediction, ``normalize(denormalize_tgt(y))``.
    """
    import jax
    import jax.numpy as jnp

    def as_input(y):
        return y if normalizer is None else normalizer.normalize(normalizer.denormalize_tgt(y))

    @jax.jit
    def run(params, x_ctx, x_next):
        def step(carry, x_t):
            return model.apply({"params": params}, carry, x_t, method="step")

        def warm(state, x_t):  # teacher forcing over the context; keeps the last output
            carry, _ = state
            return step(carry, x_t), None

        B = x_ctx.shape[0]
        y0 = jax.eval_shape(lambda c, x: step(c, x)[1], model.initialize_carry(B), x_ctx[:, 0])
        state = (model.initialize_carry(B), jnp.zeros(y0.shape, y0.dtype))
        (carry, y1), _ = jax.lax.scan(warm, state, jnp.swapaxes(x_ctx, 0, 1))

        def ahead(state, x_true):
            carry, y = state
            carry, y = step(carry, as_input(y) if feedback else x_true)
            return (carry, y), y

        _, ys = jax.lax.scan(ahead, (carry, y1), x_next)  # (H - 1, B, D_tgt)
        return jnp.concatenate([y1[:, None], jnp.swapaxes(ys, 0, 1)], axis=1)

    return run


def score_open_loop(pol, clip_dir=None, clips=None, context: int = 50, horizon: int = 50,
                    windows: int = 32, seed: int = 0) -> EvalResult:
    """Score the prediction of ``pol`` (a :class:`~ncssm_policies.checkpoint.LoadedPolicy`)
    ``horizon`` steps past ``context`` true frames, on ``windows`` random windows (B).

    ``clip_dir`` (None: the folder the run trained on) and ``clips`` (indices into it; None:
    all; :func:`held_out_clips` gives the val clips) pick the clips; each window is a random
    clip among those with ``context + horizon`` frames and a random start, from
    ``np.random.default_rng(seed)``. Autoregressive for ``pure_state`` and ``pure_intention``,
    teacher-forced for ``state_intention`` (see the module docstring).

    Returns ``EvalResult(episodes, summary)``. ``episodes`` holds per window (B,): ``clip``,
    ``start`` (the window's first frame), ``mse`` (over the H steps and D target dims) and
    ``r2``; and ``pred``, ``true`` (B, H, D), in model units. R^2 is ``1 - err^2 / var``
    per dim, averaged over dims, where ``var`` is the variance of the target over every frame
    of the eligible clips, in model units (~1 per dim for z-scored training clips); dims of
    ~zero variance are left out. ``summary`` holds ``mse@h`` and ``r2@h`` (of prediction h),
    each ``{"mean", "median"}`` over windows, for h in :data:`HORIZONS` up to ``horizon`` and
    ``horizon`` itself, the same for ``mse`` and ``r2``, and ``mode``, ``context``,
    ``horizon``, ``windows``.
    """
    import jax

    from ncssm_data import ClipStore
    from ncssm_data.modes import check_sources, get_mode, read_source

    mode_name = pol.config.mmode
    mode = get_mode(mode_name)
    if mode.acts:
        raise ValueError(f"The policy in {pol.path} is a {mode_name!r} model, which acts rather "
                         f"than predicts; score it in closed loop with "
                         f"ncssm_policies.rollout.evaluate.")
    if len(mode.x_in) != 1:
        raise ValueError(f"Open-loop scoring takes models of one input part; mode {mode_name!r} "
                         f"has {len(mode.x_in)}.")
    context, horizon = check_count("context", context), check_count("horizon", horizon)
    windows = check_count("windows", windows)
    (src_in,), src_tgt = mode.x_in, mode.x_tgt
    need = context + horizon
    root = Path(clip_dir) if clip_dir is not None else resolve_clip_dir(pol.config)
    norm = pol.normalizer

    with ClipStore(root) as store:
        check_sources(mode, store.keys, store.obs_layout, str(root))
        have = {"x_in": [_source_width(store, src_in)], "x_tgt": _source_width(store, src_tgt)}
        if list(pol.dims["x_in"]) != have["x_in"] or int(pol.dims["x_tgt"]) != have["x_tgt"]:
            raise ValueError(
                f"The policy in {pol.path} takes inputs {list(pol.dims['x_in'])} and predicts "
                f"{pol.dims['x_tgt']} dims, but the {mode_name} clips in {root} give inputs "
                f"{have['x_in']} and targets of {have['x_tgt']} dims.")
        ids = np.arange(len(store)) if clips is None else np.asarray(clips, dtype=np.int64).ravel()
        if ids.size == 0:
            raise ValueError(f"clips is empty; give clip indices of {root} or None for all.")
        bad = ids[(ids < 0) | (ids >= len(store))]
        if bad.size:
            raise ValueError(f"Clip index {int(bad[0])} is out of range for the {len(store)} "
                             f"clips in {root}.")
        lengths = store.lengths[ids]
        ok = lengths >= need
        if not ok.any():
            raise ValueError(
                f"No chosen clip in {root} has the context + horizon = {need} frames a window "
                f"needs (the longest has {int(lengths.max())}).")
        if not ok.all():
            warnings.warn(f"Skipping {int((~ok).sum())} of {ids.size} clips in {root} shorter "
                          f"than context + horizon = {need} frames.", stacklevel=2)
        ids, lengths = ids[ok], lengths[ok]

        rng = np.random.default_rng(seed)
        pick = rng.integers(0, ids.size, windows)
        clip, start = ids[pick], rng.integers(0, lengths[pick] - need + 1)
        x_in = np.stack([read_source(store, int(c), src_in, int(s), int(s) + need - 1)
                         for c, s in zip(clip, start)]).astype(np.float32)  # (B, C + H - 1, D)
        true = np.stack([read_source(store, int(c), src_tgt, int(s) + context, int(s) + need)
                         for c, s in zip(clip, start)]).astype(np.float32)  # (B, H, D_tgt)
        n, total, sumsq = 0, 0.0, 0.0  # target variance over every frame of the clips
        for i in ids:
            y = read_source(store, int(i), src_tgt).astype(np.float64)
            y = y if norm is None else norm.normalize_tgt(y)
            n, total, sumsq = n + len(y), total + y.sum(0), sumsq + np.square(y).sum(0)

    if norm is not None:
        x_in = np.asarray(norm.normalize(x_in), np.float32)
        true = np.asarray(norm.normalize_tgt(true), np.float32)
    run = make_scorer(pol.model, norm, feedback=mode.feeds_back)
    pred = np.asarray(jax.device_get(run(pol.params, x_in[:, :context],
                                         np.swapaxes(x_in[:, context:], 0, 1))))

    err = np.square(pred.astype(np.float64) - true)  # (B, H, D)
    var = sumsq / n - np.square(total / n)
    keep = var > 1e-8
    if keep.any():
        r2_steps = 1.0 - (err[..., keep] / var[keep]).mean(-1)  # (B, H)
    else:
        r2_steps = np.full(err.shape[:2], np.nan)
    mse_steps = err.mean(-1)  # (B, H)
    episodes = {"clip": clip, "start": start, "mse": mse_steps.mean(1), "r2": r2_steps.mean(1),
                "pred": pred, "true": true}

    def stats(v):
        return {"mean": float(np.mean(v)), "median": float(np.median(v))}

    summary = {"mode": mode_name, "context": context, "horizon": horizon, "windows": windows,
               "mse": stats(episodes["mse"]), "r2": stats(episodes["r2"])}
    for h in sorted({h for h in HORIZONS if h <= horizon} | {horizon}):
        summary[f"mse@{h}"] = stats(mse_steps[:, h - 1])
        summary[f"r2@{h}"] = stats(r2_steps[:, h - 1])
    return EvalResult(episodes, summary)
