"""Evaluating a trained checkpoint: closed loop in the body, or open loop on clips.

:func:`evaluate` runs the policy's one-step form in the loop, with each env's recurrent carry
reset when its episode starts. How a mode drives the body:

- ``state_action``: qpos_local (from the observation) -> action;
- ``state_intention_controller``: (qpos_local, observation) -> intention -> decoded action;
- ``syllable_state_intention``: (the reference clip's syllable at the frame, qpos_local) ->
  action.

Backends. ``"cpu"``: the threaded CPU vector env, one batched jitted policy step per control
step. ``"mjx"``: the MJX env and the policy in one jitted ``lax.scan`` over chunks of control
steps, with no host round-trip inside a chunk; the host only splits the finished chunk into
episodes. ``"auto"``: MJX when JAX's default device is an accelerator.

Episodes. Env ``i`` of ``N`` runs ``episodes // N`` episodes (one more for the first
``episodes % N`` envs), each on a clip and start frame drawn from ``seed``, and ends at a
termination, the clip's end or ``max_steps``. Counting each env's first episodes, rather than
the first episodes to finish anywhere, keeps short (failed) episodes from being over-counted.

The modes that predict rather than act (``pure_state``, ``pure_intention``,
``state_intention``) are scored open loop by :func:`ncssm_policies.openloop.score_open_loop`.

``ncssm-rollout --config configs/rollout.yaml`` runs :func:`evaluate`, prints the metrics
table, and writes ``summary.json``, ``rollouts.h5`` (per-step reference and achieved qpos,
ctrl, reward and metrics of every episode) and ``episode.mp4`` to its output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ncssm_data.errors import check_count
from ncssm_data.modes import SYLLABLES, Mode, get_mode
from ncssm_policies.build import held_out_clips, resolve_clip_dir
from ncssm_policies.openloop import EvalResult, score_open_loop

BACKENDS = ("cpu", "mjx", "auto")
MJX_CHUNK = 200  # control steps per jitted MJX scan


# ----------------------------------------------------------------------------------------------
# Episodes from per-step records
# ----------------------------------------------------------------------------------------------


class _Episodes:
    """Splits per-step records of N envs into episodes, keeping env ``i``'s first ``quota[i]``.

    ``add(steps, live)`` takes a dict of (L, N) arrays (``done``, ``slot``, ``t``, ``cause``,
    ``reward``, ``err_*``, ``rew_*``, and when recording ``qpos``, ``ref_qpos``, ``ctrl``)
    and an optional (L, N) mask of the rows that belong to episodes.
    """

    SCALARS = ("done", "slot", "t", "cause")

    def __init__(self, quota: np.ndarray, clip_ids, lengths, causes, record: bool, bar=None):
        self.quota, self.clip_ids, self.lengths = quota, np.asarray(clip_ids), np.asarray(lengths)
        self.causes, self.record, self.bar = causes, record, bar
        self.count = np.zeros(len(quota), np.int64)
        self.parts: list[list[dict]] = [[] for _ in quota]
        self.records: list[dict] = []
        self.rollouts: list[dict] = []

    @property
    def full(self) -> bool:
        return bool((self.count >= self.quota).all())

    def add(self, steps: dict, live: np.ndarray | None = None) -> None:
        L, N = steps["done"].shape
        for i in range(N):
            if self.count[i] >= self.quota[i]:
                continue
            rows = np.arange(L) if live is None else np.flatnonzero(live[:, i])
            seq = {k: np.asarray(v)[rows, i] for k, v in steps.items()}
            first = 0
            for end in np.flatnonzero(seq["done"]):
                self.parts[i].append({k: v[first:end + 1] for k, v in seq.items()})
                first = end + 1
                ep = {k: np.concatenate([p[k] for p in self.parts[i]]) for k in seq}
                self.parts[i] = []
                if self.count[i] < self.quota[i]:
                    self._finish(ep)
                    self.count[i] += 1
            if first < len(rows):
                self.parts[i].append({k: v[first:] for k, v in seq.items()})

    def _finish(self, ep: dict) -> None:
        slot, start, T = int(ep["slot"][0]), int(ep["t"][0]), len(ep["done"])
        code = int(ep["cause"][-1])
        rec = {"clip": int(self.clip_ids[slot]), "start": start, "length": T,
               "fraction": float(T / max(int(self.lengths[slot]) - 1 - start, 1)),
               "cause": self.causes[code - 1] if code else "end",
               "return": float(np.sum(ep["reward"]))}
        metrics = [k for k in ep if k.startswith(("err_", "rew_"))]
        rec.update({k: float(np.mean(ep[k])) for k in metrics})
        self.records.append(rec)
        if self.record:
            self.rollouts.append({**{k: ep[k] for k in ("qpos", "ref_qpos", "ctrl", "reward",
                                                         *metrics)},
                                  **{k: rec[k] for k in ("clip", "start", "length", "fraction",
                                                         "cause")}})
        if self.bar is not None:
            self.bar.update(1)

    def result(self) -> EvalResult:
        eps = {k: np.array([r[k] for r in self.records]) for k in self.records[0]}
        numeric = [k for k in eps if k not in ("clip", "start", "cause")]
        summary = {k: {"mean": float(np.mean(eps[k])), "median": float(np.median(eps[k]))}
                   for k in numeric}
        causes, counts = np.unique(eps["cause"], return_counts=True)
        summary["causes"] = dict(zip(causes.tolist(), counts.tolist()))
        summary["episodes"] = len(self.records)
        return EvalResult(eps, summary, self.rollouts if self.record else None)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _input_parts(mode: Mode, layout: dict, obs_size: int, n_syllables) -> list:
    """Each input part of ``mode`` as the body gives it in closed loop: ``(width, part)`` with
    ``part(obs (N, D_obs), syllable (N,)) -> (N, width)``. ``obs`` is the whole observation,
    ``syllables`` the one-hot label of the reference frame, any other source its slice of the
    observation (``layout``)."""
    import jax
    import jax.numpy as jnp

    parts = []
    for source in mode.x_in:
        if source == "obs":
            parts.append((obs_size, lambda obs, syl: obs))
        elif source == SYLLABLES:
            n = n_syllables
            parts.append((n, lambda obs, syl, n=n: jax.nn.one_hot(jnp.clip(syl, 0, n - 1), n)))
        elif source in layout:
            a, b = layout[source]
            parts.append((b - a, lambda obs, syl, a=a, b=b: obs[:, a:b]))
        else:
            raise ValueError(f"Mode {mode.name!r} reads {source!r}, which the body's observation "
                             f"does not hold, so it cannot run closed loop.")
    return parts


def _act_fn(pol, parts: list, lo, hi):
    """``act(carry, fresh (N,), obs (N, D_obs), syllable (N,)) -> (carry, action (N, nu))`` for
    the mode's input ``parts`` (:func:`_input_parts`): the carry restarts from zeros where
    ``fresh``; actions are clipped to the control range."""
    import jax
    import jax.numpy as jnp

    model, params, norm = pol.model, pol.params, pol.normalizer

    def act(carry, fresh, obs, syllable):
        zeros = model.initialize_carry(obs.shape[0])
        carry = jax.tree.map(
            lambda c, z: jnp.where(fresh.reshape((-1,) + (1,) * (c.ndim - 1)), z, c), carry, zeros)
        x = tuple(part(obs, syllable) for _, part in parts)
        x = x if len(x) > 1 else x[0]
        if norm is not None:
            x = norm.normalize(x)
        carry, y = model.apply({"params": params}, carry, x, method="step")
        if norm is not None:
            y = norm.denormalize_tgt(y)
        return carry, jnp.clip(y, lo, hi)

    return act


def step_record(xp, slot, t, done, reward, metrics) -> dict:
    """One control step of N envs as ``_Episodes`` takes it, on either backend (``xp`` numpy or
    jax.numpy): ``slot``, ``t`` (the frame the action was chosen at), ``done``, ``reward``,
    ``cause`` (1 + the index of the first termination cause when ``done``, else 0) and every
    ``err_*`` and ``rew_*`` metric, each (N,)."""
    from ncssm_env import task as _task

    return {"slot": slot, "t": t, "done": done, "reward": reward,
            "cause": xp.where(done, _task.cause_code(xp, metrics), 0),
            **{k: metrics[k] for k in _task.METRICS if k.startswith(("err_", "rew_"))}}


def _policy_parts(pol, mode: Mode, layout: dict, obs_size: int, nu: int, body: str, where):
    """:func:`_input_parts` of ``mode`` for this body, once the policy is known to take them
    and to give ``nu`` actions."""
    parts = _input_parts(mode, layout, obs_size, pol.dims.get("n_syllables"))
    have = [w for w, _ in parts]
    if list(pol.dims["x_in"]) != have or pol.dims["x_tgt"] != nu:
        raise ValueError(
            f"The policy in {where} takes inputs {list(pol.dims['x_in'])} and gives "
            f"{pol.dims['x_tgt']} actions, but body {body!r} gives inputs {have} and takes {nu} "
            f"actions.")
    return parts


def _syllable_table(store, mode: Mode, clip_ids, lengths, syllable_key: str = SYLLABLES):
    """(n_clips, T_max) int32: each selected clip's syllables (the dataset ``syllable_key``, as
    in training), edge-padded; (n_clips, 1) zeros when ``mode`` reads no syllables."""
    from ncssm_data.modes import read_source

    if SYLLABLES not in mode.x_in:
        return np.zeros((len(clip_ids), 1), np.int32)
    T = int(np.max(lengths))
    rows = []
    for cid in clip_ids:
        s = np.asarray(read_source(store, int(cid), "syllables", syllable_key=syllable_key))
        s = s.astype(np.int32).reshape(-1)
        rows.append(np.concatenate([s, np.repeat(s[-1:], T - len(s))]))
    return np.stack(rows)


def evaluate(policy, num_envs: int = 4, episodes: int = 8, backend: str = "cpu",
             clips=None, clip_dir=None, body: str | None = None, seed: int = 0,
             max_steps: int | None = None, which: str = "best", record: bool = False,
             progress: bool = False, context: int = 50, horizon: int = 50, impl: str = "auto",
             solver: str | None = None, iterations: int | None = None,
             ls_iterations: int | None = None) -> EvalResult:
    """Evaluate ``policy``: a run folder or its checkpoints (``which`` picks the checkpoint), or
    a :class:`~ncssm_policies.checkpoint.LoadedPolicy`.

    Closed loop (the modes that act, :attr:`ncssm_data.modes.Mode.acts`): ``episodes`` episodes on ``num_envs`` envs of ``backend``;
    ``record`` keeps every episode's per-step arrays in ``EvalResult.rollouts``. Open loop
    (the other modes): ``episodes`` windows of ``context`` true frames then ``horizon``
    predicted ones (see :func:`ncssm_policies.openloop.score_open_loop`).

    ``clip_dir`` (None: the clips the policy trained on) and ``clips`` (indices) pick the
    reference clips; with neither given, the training run's held-out (val) clips. ``body``
    defaults to the clips' body. ``impl`` is the MJX backend's physics (``"jax"``, ``"warp"``
    or ``"auto"``; see :mod:`ncssm_env.mjx_env`); ``solver``, ``iterations`` and
    ``ls_iterations`` set the constraint solver on either backend (None: the arena's).
    """
    from ncssm_data import ClipStore
    from ncssm_policies.checkpoint import LoadedPolicy, load_policy

    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {list(BACKENDS)}.")
    num_envs, episodes = check_count("num_envs", num_envs), check_count("episodes", episodes)
    pol = policy if isinstance(policy, LoadedPolicy) else load_policy(policy, which=which)
    where = pol.path if isinstance(policy, LoadedPolicy) else policy
    mode = get_mode(pol.config.mmode)
    if clip_dir is None:
        clip_dir = resolve_clip_dir(pol.config)
        if clips is None:
            clips = held_out_clips(pol).tolist()
    if not mode.acts:
        return score_open_loop(pol, clip_dir=clip_dir, clips=clips, context=context,
                               horizon=horizon, windows=episodes, seed=seed)
    if backend == "auto":
        import jax

        backend = "cpu" if jax.default_backend() == "cpu" else "mjx"
    quota = np.full(num_envs, episodes // num_envs) + (np.arange(num_envs) < episodes % num_envs)
    bar = None
    with ClipStore(clip_dir) as store:
        body = body or store.body or "rodent"
        if store.body is not None and store.body != body:
            raise ValueError(f"The clips in {clip_dir} are for body {store.body!r}, not {body!r}.")
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=episodes, desc=f"{backend} episodes", unit="ep")
        physics = dict(solver=solver, iterations=iterations, ls_iterations=ls_iterations)
        if backend == "mjx":
            physics["impl"] = impl
        try:
            run = _run_cpu if backend == "cpu" else _run_mjx
            res = run(pol, mode, where, store, body, clip_dir, clips, num_envs, quota, seed,
                      max_steps, record, bar, physics)
        finally:
            if bar is not None:
                bar.close()
    res.summary.update(mode=mode.name, body=body, backend=backend, checkpoint=str(pol.path),
                       **{k: v for k, v in physics.items() if v is not None and k != "impl"})
    return res


def _run_cpu(pol, mode, where, store, body, clip_dir, clips, num_envs, quota, seed, max_steps,
             record, bar, physics) -> EvalResult:
    import jax

    from ncssm_env import task as _task
    from ncssm_env.vector import TrackVectorEnv

    env = TrackVectorEnv(num_envs, body=body, clip_dir=clip_dir, clips=clips,
                         max_episode_steps=max_steps, **physics)
    try:
        parts = _policy_parts(pol, mode, env.obs_layout, env.single_observation_space.shape[0],
                              env.model.nu, body, where)
        syl = _syllable_table(store, mode, env.clip_ids, env.lengths, pol.config.syllable_key)
        act = jax.jit(_act_fn(pol, parts, env.single_action_space.low,
                              env.single_action_space.high))
        eps = _Episodes(quota, env.clip_ids, env.lengths, _task.TERMINATIONS, record, bar)
        carry = pol.model.initialize_carry(num_envs)
        obs, _ = env.reset(seed=seed)
        fresh = np.ones(num_envs, bool)  # envs whose obs is the first of an episode
        resetting = np.zeros(num_envs, bool)  # envs that the next step restarts (NEXT_STEP)
        while not eps.full:
            slot, t = env.slot.copy(), env.t.copy()
            carry, action = act(carry, fresh, obs, syl[slot, np.minimum(t, syl.shape[1] - 1)])
            action = np.asarray(action)
            qpos = np.stack([d.qpos.copy() for d in env.datas]) if record else None
            obs, rew, term, trunc, info = env.step(action)
            live = ~resetting
            done = (term | trunc) & live
            step = step_record(np, slot, t, done, rew, info["metrics"])
            if record:
                step.update(qpos=qpos, ref_qpos=env.clips.qpos[slot, t], ctrl=action)
            eps.add({k: np.asarray(v)[None] for k, v in step.items()}, live[None])
            fresh, resetting = resetting, done
        return eps.result()
    finally:
        env.close()


def policy_env_scan(pol, env, syllables, length: int, record: bool = False, where=None):
    """``chunk(state, carry, fresh) -> ((state, carry, fresh), out)``: ``length`` control steps
    of the policy and the vmapped MJX env ``env`` in one ``lax.scan`` (jit it). ``state`` is
    the batched env state (N envs), ``carry`` the policy's, ``fresh`` (N,) marks envs whose
    observation starts an episode; ``syllables`` (n_clips, T) int32. The policy must fit the
    env's body (one sentence naming ``where``, default the policy's path, if not). ``out`` holds (length, N)
    arrays: ``done``, ``slot``, ``t``, ``reward``, ``cause`` (1 + the index of the first
    termination cause, 0 for none), ``overflow`` and every ``err_*`` and ``rew_*`` metric, and
    when ``record`` the ``qpos`` before each action, ``ref_qpos`` and ``ctrl``."""
    import jax
    import jax.numpy as jnp

    parts = _policy_parts(pol, get_mode(pol.config.mmode), env.obs_layout, env.observation_size,
                          env.action_size, env.body, where or pol.path)
    lo, hi = env.mj_model.actuator_ctrlrange.T.astype(np.float32)
    act = _act_fn(pol, parts, lo, hi)
    step = jax.vmap(env.step)

    def chunk(state, carry, fresh):
        def body_fn(c, _):
            state, carry, fresh = c
            slot, t = state.info["slot"], state.info["t"]
            carry, a = act(carry, fresh, state.obs,
                           syllables[slot, jnp.minimum(t, syllables.shape[1] - 1)])
            nxt = step(state, a)
            done = nxt.done > 0
            out = {**step_record(jnp, slot, t, done, nxt.reward, nxt.metrics),
                   "overflow": nxt.info["overflow"]}
            if record:
                out.update(qpos=state.pipeline_state.qpos, ref_qpos=env.qpos[slot, t], ctrl=a)
            return (nxt, carry, done), out

        return jax.lax.scan(body_fn, (state, carry, fresh), None, length=length)

    return chunk


def _run_mjx(pol, mode, where, store, body, clip_dir, clips, num_envs, quota, seed, max_steps,
             record, bar, physics) -> EvalResult:
    import jax
    import jax.numpy as jnp

    from ncssm_env import task as _task
    from ncssm_env.mjx_env import MJXTrackEnv

    env = MJXTrackEnv(body=body, clip_dir=clip_dir, clips=clips, num_envs=num_envs,
                      max_episode_steps=max_steps or 2**30, **physics)
    lengths = np.asarray(env.lengths)
    syl = jnp.asarray(_syllable_table(store, mode, env.clip_ids, lengths, pol.config.syllable_key))
    chunk = jax.jit(policy_env_scan(pol, env, syl, MJX_CHUNK, record, where))
    eps = _Episodes(quota, env.clip_ids, lengths, _task.TERMINATIONS, record, bar)
    state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(seed), num_envs))
    c = (state, pol.model.initialize_carry(num_envs), jnp.ones(num_envs, bool))
    while not eps.full:
        c, out = chunk(*c)
        out = jax.device_get(out)
        overflow = out.pop("overflow")
        if overflow.any():
            raise env.overflow_error(overflow.max(axis=0))
        eps.add(out)
    res = eps.result()
    res.summary["impl"] = env.impl
    return res


# ----------------------------------------------------------------------------------------------
# Report and CLI
# ----------------------------------------------------------------------------------------------


def metrics_table(result: EvalResult) -> str:
    """The summary as an aligned text table: one row per metric (mean, median), then causes."""
    s = result.summary
    rows = [(k, v["mean"], v["median"]) for k, v in s.items() if isinstance(v, dict)
            and "mean" in v]
    width = max([len(k) for k, *_ in rows] + [6])
    lines = [f"{'metric':<{width}}  {'mean':>10}  {'median':>10}"]
    lines += [f"{k:<{width}}  {m:>10.4g}  {d:>10.4g}" for k, m, d in rows]
    if "causes" in s:
        n = sum(s["causes"].values())
        lines.append("episode ends: " + ", ".join(
            f"{k} {v} ({100 * v / n:.0f}%)" for k, v in sorted(s["causes"].items())))
    return "\n".join(lines)


@dataclass
class RolloutConfig:
    """``ncssm-rollout``'s config (``configs/rollout.yaml``).

    The defaults are ``configs/rollout.yaml``'s. ``checkpoint``: a run folder or its
    checkpoints (a glob picks the newest match: by default the newest quickstart run);
    ``which``: ``best`` or ``latest``. ``clip_dir`` (None: the clips it trained on) and ``clips`` (None: the held-out
    clips, or all of ``clip_dir``) pick the references. ``num_envs``, ``episodes``, ``backend``
    (``cpu``, ``mjx``, ``auto``), ``impl`` (the MJX physics: ``jax``, ``warp``, ``auto``),
    ``solver``, ``iterations``, ``ls_iterations``, ``max_steps`` and ``seed`` are
    :func:`evaluate`'s.
    ``out_dir`` (None: ``<run folder>/rollout``) receives ``summary.json``, ``rollouts.h5``
    (``save_rollouts``) and ``episode.mp4`` (``video``: episode ``video_episode``, reference
    left, policy right, each ``width`` x ``height``). ``context`` and ``horizon``: the open-loop
    windows of models that predict rather than act.
    """

    checkpoint: str | None = "runs/quickstart-*"
    which: str = "best"
    clip_dir: str | None = None
    clips: list[int] | None = None
    num_envs: int = 8
    episodes: int = 16
    backend: str = "cpu"
    impl: str = "auto"
    solver: str | None = None
    iterations: int | None = None
    ls_iterations: int | None = None
    max_steps: int | None = None
    seed: int = 0
    out_dir: str | None = None
    save_rollouts: bool = True
    video: bool = True
    video_episode: int = 0
    width: int = 320
    height: int = 240
    context: int = 50
    horizon: int = 50

    def __post_init__(self):
        from ncssm_policies.config import ConfigError

        if not self.checkpoint:
            raise ConfigError("Config key 'checkpoint' is required: a run folder or its "
                              "checkpoints folder.")
        if self.which not in ("best", "latest"):
            raise ConfigError(f"Config key 'which' must be 'best' or 'latest', got {self.which!r}.")
        for k in ("width", "height"):
            if getattr(self, k) < 16 or getattr(self, k) % 2:
                raise ConfigError(f"Config key {k!r} must be an even number >= 16, got "
                                  f"{getattr(self, k)!r}.")


def _run_folder(checkpoint: Path) -> Path:
    return checkpoint.parent if checkpoint.name == "checkpoints" else checkpoint


def resolve_checkpoint(pattern: str) -> Path:
    """``pattern`` as a path; a glob (``runs/quickstart-*``) gives its newest matching folder."""
    import glob

    if not glob.has_magic(pattern):
        return Path(pattern)
    hits = [Path(p) for p in glob.glob(pattern) if Path(p).is_dir()]
    if not hits:
        from ncssm_policies.checkpoint import CheckpointError

        raise CheckpointError(f"No folder matches checkpoint {pattern!r}; train one first "
                              f"(ncssm-train) or give a run folder.")
    return max(hits, key=lambda p: (p.stat().st_mtime, p.name))


def rollout(cfg: RolloutConfig, progress: bool = True) -> tuple[EvalResult, dict]:
    """Run ``cfg``: evaluate, then write the summary, the rollouts and the video. Returns the
    result and the paths written."""
    from ncssm_data.clips import atomic_path

    ckpt = resolve_checkpoint(cfg.checkpoint)
    t0 = time.perf_counter()
    res = evaluate(ckpt, num_envs=cfg.num_envs, episodes=cfg.episodes, backend=cfg.backend,
                   clips=cfg.clips, clip_dir=cfg.clip_dir, seed=cfg.seed,
                   max_steps=cfg.max_steps, which=cfg.which, record=cfg.save_rollouts or cfg.video,
                   progress=progress, context=cfg.context, horizon=cfg.horizon, impl=cfg.impl,
                   solver=cfg.solver, iterations=cfg.iterations, ls_iterations=cfg.ls_iterations)
    res.summary["evaluate_s"] = round(time.perf_counter() - t0, 1)
    out = Path(cfg.out_dir) if cfg.out_dir else _run_folder(ckpt) / "rollout"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json"}
    meta = {"checkpoint": str(ckpt), "config": dataclasses.asdict(cfg), "summary": res.summary}
    if res.rollouts:
        from ncssm_policies.rollout_io import render_episode, save_rollouts

        if cfg.save_rollouts:
            paths["rollouts"] = save_rollouts(out / "rollouts.h5", res.rollouts, meta)
        if cfg.video:
            ep = res.rollouts[min(cfg.video_episode, len(res.rollouts) - 1)]
            paths["video"] = render_episode(out / "episode.mp4", res.summary["body"], ep["qpos"],
                                            ep["ref_qpos"], width=cfg.width, height=cfg.height)
    res.summary["outputs_s"] = round(time.perf_counter() - t0 - res.summary["evaluate_s"], 1)
    episodes = {k: np.asarray(v).tolist() for k, v in res.episodes.items()
                if np.ndim(v) == 1}  # (not the open-loop predictions)
    with atomic_path(paths["summary"]) as tmp:
        tmp.write_text(json.dumps({**meta, "episodes": episodes}, indent=2))
    return res, {k: str(v) for k, v in paths.items()}


def main(argv=None) -> int:
    from ncssm_policies.config import ConfigError, load_config
    from ncssm_policies.checkpoint import CheckpointError

    p = argparse.ArgumentParser(
        prog="ncssm-rollout",
        description="Evaluate a trained checkpoint closed loop in the body (or, for models that "
                    "predict rather than act, open loop on clips).")
    p.add_argument("--config", help="a YAML config (default: configs/rollout.yaml's values, "
                                    "which evaluate the newest quickstart run)")
    p.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config values, each read as a YAML scalar")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.override, cls=RolloutConfig)
        res, paths = rollout(cfg, progress=not args.no_progress)
    except (ConfigError, CheckpointError, ValueError, OSError) as err:
        print(f"ncssm-rollout: error: {err}", file=sys.stderr)
        return 2
    n = res.summary.get("episodes", res.summary.get("windows"))
    print(f"ncssm-rollout: {res.summary.get('checkpoint', cfg.checkpoint)} ({cfg.which}), {n} "
          f"{'episodes' if 'episodes' in res.summary else 'windows'} on {cfg.backend} in "
          f"{res.summary['evaluate_s']:.0f} s (outputs {res.summary['outputs_s']:.0f} s)")
    print(metrics_table(res))
    for k, v in paths.items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
