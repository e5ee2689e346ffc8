"""DART clips (Laskey et al. 2017): the expert tracking each clip while executing noisy controls.

Teacher-forced clips show only on-reference states, so a policy cloned from them never sees a
correction and its first small error compounds. A DART rollout starts on a nominal clip's first
frame and tracks it with an expert (:mod:`ncssm_env.expert`), executing the expert's control
plus Gaussian noise of standard deviation ``noise``, clipped to the range. It records:

- the states it visited: ``qpos``, ``qvel``, ``act`` and the env's observation ``obs``, whose
  reference parts are the nominal clip's frames ahead;
- ``ctrl``: the control executed (``ctrl[t]`` moved the body from frame t−1 to t);
- ``ctrl_expert``: the expert's noise-free label at the state of frame t−1, what the training
  modes that act learn from (frame 0 holds the nominal ``ctrl[0]`` in both);
- the nominal clip's ``latent_mean`` and ``syllables`` frame by frame, and ``dart_of``, its
  index. A rollout that terminates ends at that frame.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ncssm_data import ClipStore, write_clip
from ncssm_env.vector import TrackVectorEnv


def track(clip_dir, ids, starts, expert, make_control, seed: int = 0, window: int = 5,
          body: str | None = None) -> tuple[list[dict], int]:
    """Roll out one episode per entry of ``ids`` (nominal clip indices of ``clip_dir``), env i
    from frame ``starts[i]`` of its clip (the task's reset noise drawn from ``seed``), to the
    clip's end or a termination. At each step the ``expert``
    (``make(model)``) gives the label ``a_star`` (N, nu), clipped to the range, and
    ``control(obs, a_star, slot, frame) -> (N, nu)`` the control executed (then clipped to
    the range), where ``control = make_control(env)`` for the
    :class:`~ncssm_env.vector.TrackVectorEnv` of the rollouts; ``slot`` (N,) indexes the env's
    clips, ``frame`` (N,) is each env's clip frame.

    Returns ``(rollouts, K)``: the task's K, and per episode the arrays of the module
    docstring (``obs``, ``qpos``, ``qvel``, ``act``, ``ctrl``, ``ctrl_expert``, and the
    nominal clip's ``latent_mean`` and ``syllables`` frame by frame) of every frame it
    visited."""
    ids = np.asarray(ids, np.int64)
    starts = np.broadcast_to(np.asarray(starts, np.int64), ids.shape)
    with ClipStore(clip_dir) as store:
        body = body or store.body or "rodent"
        uniq = np.unique(ids)
        labels = {k: {int(i): store.read(int(i), k) for i in uniq}
                  for k in ("latent_mean", "syllables") if store.has(k)}
    env = TrackVectorEnv(len(ids), body=body, clip_dir=clip_dir, clips=uniq.tolist(),
                         max_episode_steps=None)
    try:
        control = make_control(env)
        obs, _ = env.reset(seed=seed, options={"clip": ids, "start": starts})
        lo, hi = env.single_action_space.low, env.single_action_space.high
        slot = env.slot.copy()
        T = env.lengths[slot]
        rec = {k: [[] for _ in ids] for k in ("obs", "qpos", "qvel", "act", "ctrl", "ctrl_expert")}
        alive = np.ones(len(ids), bool)
        first = env.clips.ctrl[slot, starts]

        def keep(obs, a, a_star):
            for i in np.flatnonzero(alive):
                d = env.datas[i]
                for k, v in (("obs", obs[i]), ("qpos", d.qpos.copy()), ("qvel", d.qvel.copy()),
                             ("act", d.act.copy()), ("ctrl", a[i]), ("ctrl_expert", a_star[i])):
                    rec[k][i].append(v)

        keep(obs, first, first)
        while alive.any():
            t = env.t.copy()
            q = np.stack([d.qpos for d in env.datas])
            qd = np.stack([d.qvel for d in env.datas])
            idx = np.minimum(t[:, None] + 1 + np.arange(window), (T - 1)[:, None])
            a_star = np.clip(expert(np, q, qd, env.clips.qpos[slot[:, None], idx],
                                    env.clips.ctrl[slot, np.minimum(t + 1, T - 1)], t), lo, hi)
            a = np.clip(control(obs, a_star, slot, t), lo, hi).astype(np.float32)
            obs, _, term, trunc, _ = env.step(a)
            keep(obs, a, a_star)
            alive &= ~term & ~trunc
    finally:
        env.close()
    out = []
    for k, (i, s) in enumerate(zip(ids, starts)):
        arrays = {key: np.stack(v[k]) for key, v in rec.items()}
        L = len(arrays["qpos"])
        arrays.update({key: v[int(i)][s:s + L] for key, v in labels.items()})
        out.append(arrays)
    return out, env.K


def write_rollouts(clip_dir, rollouts, ids, generator: str, min_len: int, start: int) -> dict:
    """Write each rollout of at least ``min_len`` frames as ``clip_<start + m>.h5`` of
    ``clip_dir`` (atomically, one by one), ``dart_of`` its nominal clip ``ids[k]``. Returns
    counts: ``written``, ``short`` (not written), ``frames``, and ``paths``."""
    clip_dir = Path(clip_dir)
    with ClipStore(clip_dir) as store:
        body, layout, dt = store.body, store.obs_layout, store.control_dt
    keep = [(int(i), r) for i, r in zip(ids, rollouts) if len(r["qpos"]) >= min_len]
    paths = []
    for m, (i, arrays) in enumerate(keep):
        paths.append(clip_dir / f"clip_{start + m}.h5")
        write_clip(paths[-1], arrays, obs_layout=layout, body=body, control_dt=dt, dart_of=i,
                   generator=generator)
    return {"written": len(keep), "short": len(rollouts) - len(keep),
            "frames": sum(len(r["qpos"]) for _, r in keep), "paths": paths}


def generate_dart(clip_dir, expert, noise: float, copies: int = 1, seed: int = 0,
                  expert_name: str = "expert", window: int = 5, progress: bool = False) -> dict:
    """Write ``copies`` DART rollouts of every nominal clip of ``clip_dir`` into it, as
    ``clip_<n>.h5`` after the last clip; ``expert`` is a made expert function
    (``make(model)``). Returns counts: ``written``, ``short`` (rollouts that fell before
    K + 2 frames, not written), ``frames``. Everything is rolled out before anything is
    written."""
    clip_dir = Path(clip_dir)
    if not (isinstance(noise, (int, float)) and 0 <= noise < np.inf):
        raise ValueError(f"DART noise is {noise!r}, expected a standard deviation >= 0.")
    with ClipStore(clip_dir) as store:
        nominal = np.flatnonzero(store.dart_of < 0)
        n = len(store)
    ids = np.repeat(nominal, copies)
    rng = np.random.default_rng([seed, 2])

    def noisy(obs, a_star, slot, t):
        return a_star + noise * rng.normal(size=a_star.shape)

    rollouts, K = track(clip_dir, ids, 0, expert, lambda env: noisy, seed=seed, window=window)
    generator = f"ncssm-data generate --dart {noise:g} (expert {expert_name})"
    counts = write_rollouts(clip_dir, rollouts, ids, generator, min_len=K + 2, start=n)
    counts.pop("paths")
    return counts


def builtin_dart(expert, expert_name: str, noise: float, copies: int = 1,
                 body: str = "rodent") -> Path:
    """The built-in clips of ``body`` plus their DART rollouts (``expert``, named
    ``expert_name``), made on first use beside them in the cache: written into a temporary
    folder and renamed into place, like the built-in clips."""
    from ncssm_env.synthetic import builtin_clips, cached

    nominal = builtin_clips(body)

    def fill(tmp: Path) -> None:
        for f in nominal.glob("clip_*.h5"):
            shutil.copy2(f, tmp / f.name)
        generate_dart(tmp, expert, noise, copies=copies, expert_name=expert_name)

    return cached(nominal.parent / f"{nominal.name}-dart{noise:g}x{copies}-{expert_name}", fill)
