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
        n, body, layout, dt = len(store), store.body, store.obs_layout, store.control_dt
        labels = {k: [store.read(int(i), k) for i in nominal]
                  for k in ("latent_mean", "syllables") if store.has(k)}
    ids = np.repeat(nominal, copies)
    env = TrackVectorEnv(len(ids), body=body or "rodent", clip_dir=clip_dir,
                         clips=nominal.tolist(), max_episode_steps=None)
    try:
        rng = np.random.default_rng([seed, 2])
        obs, _ = env.reset(seed=seed, options={"clip": ids, "start": 0})
        lo, hi = env.single_action_space.low, env.single_action_space.high
        slot = env.slot.copy()
        T = env.lengths[slot]
        rec = {k: [[] for _ in ids] for k in ("obs", "qpos", "qvel", "act", "ctrl", "ctrl_expert")}
        alive = np.ones(len(ids), bool)
        first = env.clips.ctrl[slot, 0]

        def keep(obs, a, a_star):
            for i in np.flatnonzero(alive):
                d = env.datas[i]
                for k, v in (("obs", obs[i]), ("qpos", d.qpos.copy()), ("qvel", d.qvel.copy()),
                             ("act", d.act.copy()), ("ctrl", a[i]), ("ctrl_expert", a_star[i])):
                    rec[k][i].append(v)

        keep(obs, first, first)
        for t in range(int(T.max()) - 1):
            q = np.stack([d.qpos for d in env.datas])
            qd = np.stack([d.qvel for d in env.datas])
            idx = np.minimum(t + 1 + np.arange(window), (T - 1)[:, None])
            a_star = np.clip(expert(np, q, qd, env.clips.qpos[slot[:, None], idx],
                                    env.clips.ctrl[slot, np.minimum(t + 1, T - 1)],
                                    np.full(len(ids), t)), lo, hi)
            a = np.clip(a_star + noise * rng.normal(size=a_star.shape), lo, hi)
            obs, _, term, trunc, _ = env.step(a.astype(np.float32))
            keep(obs, a, a_star)
            alive &= ~term & ~trunc & (t + 2 < T)
            if not alive.any():
                break
    finally:
        env.close()

    out, short, frames = [], 0, 0
    for k, i in enumerate(ids):
        arrays = {key: np.stack(v[k]) for key, v in rec.items()}
        L = len(arrays["qpos"])
        if L < env.K + 2:
            short += 1
            continue
        j = int(np.flatnonzero(nominal == i)[0])
        arrays.update({key: v[j][:L] for key, v in labels.items()})
        out.append((int(i), arrays))
        frames += L
    for m, (i, arrays) in enumerate(out):
        write_clip(clip_dir / f"clip_{n + m}.h5", arrays, obs_layout=layout, body=body,
                   control_dt=dt, dart_of=i,
                   generator=f"ncssm-data generate --dart {noise:g} (expert {expert_name})")
    return {"written": len(out), "short": short, "frames": frames}


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
