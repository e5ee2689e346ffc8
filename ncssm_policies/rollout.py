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
from ncssm_policies.behaviour import pose_columns
from ncssm_policies.openloop import EvalResult, score_open_loop

BACKENDS = ("cpu", "mjx", "auto")
BASELINES = ("zero", "expert")  # run on the policy's episodes (see evaluate)
MJX_CHUNK = 200  # control steps per jitted MJX scan


# ----------------------------------------------------------------------------------------------
# Episodes from per-step records
# ----------------------------------------------------------------------------------------------


class _Episodes:
    """Splits per-step records of one group of N envs into episodes, keeping env ``i``'s first
    ``quota[i]``: episodes ``i, i + N, i + 2N, ...`` of the :class:`EpisodePlan`.

    ``add(steps)`` takes a dict of (L, N) arrays (``done``, ``slot``, ``t``, ``cause``,
    ``reward``, ``err_*``, ``rew_*``, and when recording ``qpos``, ``ref_qpos``, ``ctrl``;
    ``pose`` (L, N, F) for the behaviour scores).
    """

    def __init__(self, quota: np.ndarray, clip_ids, lengths, causes, record: bool, bar=None,
                 pose: bool = False):
        self.quota, self.clip_ids, self.lengths = quota, np.asarray(clip_ids), np.asarray(lengths)
        self.causes, self.record, self.bar, self.pose = causes, record, bar, pose
        self.count = np.zeros(len(quota), np.int64)
        self.parts: list[list[dict]] = [[] for _ in quota]
        self.records: list[dict] = []
        self.rollouts: list[dict] = []
        self.poses: list[np.ndarray] = []

    @property
    def full(self) -> bool:
        return bool((self.count >= self.quota).all())

    def add(self, steps: dict) -> None:
        L, N = steps["done"].shape
        for i in range(N):
            if self.count[i] >= self.quota[i]:
                continue
            seq = {k: np.asarray(v)[:, i] for k, v in steps.items()}
            first = 0
            for end in np.flatnonzero(seq["done"]):
                self.parts[i].append({k: v[first:end + 1] for k, v in seq.items()})
                first = end + 1
                ep = {k: np.concatenate([p[k] for p in self.parts[i]]) for k in seq}
                self.parts[i] = []
                if self.count[i] < self.quota[i]:
                    self._finish(ep, int(i + self.count[i] * N))
                    self.count[i] += 1
            if first < L:
                self.parts[i].append({k: v[first:] for k, v in seq.items()})

    def _finish(self, ep: dict, j: int) -> None:
        slot, start, T = int(ep["slot"][0]), int(ep["t"][0]), len(ep["done"])
        code = int(ep["cause"][-1])
        rec = {"episode": j, "clip": int(self.clip_ids[slot]), "start": start, "length": T,
               "fraction": float(T / max(int(self.lengths[slot]) - 1 - start, 1)),
               "cause": self.causes[code - 1] if code else "end",
               "return": float(np.sum(ep["reward"]))}
        metrics = [k for k in ep if k.startswith(("err_", "rew_"))]
        rec.update({k: float(np.mean(ep[k])) for k in metrics})
        self.records.append(rec)
        if self.pose:
            self.poses.append((j, ep["pose"]))
        if self.record:
            self.rollouts.append((j, {**{k: ep[k] for k in ("qpos", "ref_qpos", "ctrl", "reward",
                                                              *metrics)},
                                      **{k: rec[k] for k in ("clip", "start", "length",
                                                             "fraction", "cause")}}))
        if self.bar is not None:
            self.bar.update(1)

    def result(self) -> EvalResult:
        """Episodes in plan order."""
        records = sorted(self.records, key=lambda r: r["episode"])
        eps = {k: np.array([r[k] for r in records]) for k in records[0]}
        numeric = [k for k in eps if k not in ("episode", "clip", "start", "cause")]
        summary = {k: {"mean": float(np.mean(eps[k])), "median": float(np.median(eps[k]))}
                   for k in numeric}
        causes, counts = np.unique(eps["cause"], return_counts=True)
        summary["causes"] = dict(zip(causes.tolist(), counts.tolist()))
        summary["episodes"] = len(records)
        summary["survival"] = float(np.mean(eps["cause"] == "end"))
        res = EvalResult(eps, summary, [r for _, r in sorted(self.rollouts, key=lambda x: x[0])]
                         if self.record else None)
        if self.pose:
            res.poses = [p for _, p in sorted(self.poses, key=lambda x: x[0])]
        return res


# ----------------------------------------------------------------------------------------------
# The episodes, and who acts in them
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodePlan:
    """The episodes of one evaluation, drawn once from the seed so that a policy and its
    baselines run the very same ones (the same clips, starts and reset noise).

    Episode ``j`` starts on clip slot ``slot[j]`` (an index into the env's clips) at frame
    ``start[j]``, its joint angles offset by ``noise[j]`` (nq - 7,), drawn uniformly within
    the task's ``reset_noise``. Env ``i`` of a group of ``N`` runs episodes ``i, i + N,
    i + 2N, ...``; an env past its share runs its own episodes again, which are not counted.
    """

    slot: np.ndarray  # (E,) int
    start: np.ndarray  # (E,) int
    noise: np.ndarray  # (E, nq - 7)

    @classmethod
    def draw(cls, lengths, episodes: int, n_joints: int, reset_noise: float,
             seed: int) -> "EpisodePlan":
        rng = np.random.default_rng(seed)
        slot = rng.integers(len(lengths), size=episodes)
        start = rng.integers(0, np.asarray(lengths)[slot] - 1)
        return cls(slot, start, rng.uniform(-reset_noise, reset_noise, (episodes, n_joints)))

    def index(self, env, k, N: int):
        """Plan index of the ``k``-th episode of env ``env`` (arrays, numpy or jax) of a group
        of ``N``; an env past its share starts its own first episode again."""
        j = env + k * N
        return (j < len(self.slot)) * j + (j >= len(self.slot)) * (env % len(self.slot))


def _baseline_actor(kind, lo, hi, ctrl, qpos, lengths, window: int = 5):
    """``act(carry, fresh, obs (N, D_obs), slot (N,), t (N,), qpos (N, nq), qvel (N, nv)) ->
    (carry, action (N, nu))`` of a baseline: ``"zero"`` (every control 0, clipped to the
    range) or an expert function (:mod:`ncssm_env.expert`), given the clips' reference frames
    ``qpos`` (n_clips, T, nq) ahead of t (``window`` of them, held at each clip's end
    ``lengths``) and ``ctrl[slot, t + 1]`` (``ctrl`` (n_clips, T, nu)), the recorded control
    that moved the reference from frame t to t + 1."""
    import jax.numpy as jnp

    ctrl, ref, lengths = jnp.asarray(ctrl), jnp.asarray(qpos, jnp.float32), jnp.asarray(lengths)

    def act(carry, fresh, obs, slot, t, q, qd):
        if kind == "zero":
            a = jnp.zeros((obs.shape[0], len(lo)), jnp.float32)
        else:
            end = (lengths[slot] - 1)[:, None]
            idx = jnp.minimum(t[:, None] + 1 + jnp.arange(window), end)
            a = kind(jnp, q.astype(jnp.float32), qd.astype(jnp.float32), ref[slot[:, None], idx],
                     ctrl[slot, jnp.minimum(t + 1, lengths[slot] - 1)], t)
        return carry, jnp.clip(a, lo, hi)

    return act, lambda n: ()


def _policy_actor(pol, parts, lo, hi, syllables):
    """The policy as an actor like :func:`_baseline_actor`'s; ``syllables`` (n_clips, T)."""
    import jax.numpy as jnp

    act = _act_fn(pol, parts, lo, hi)
    syllables = jnp.asarray(syllables)

    def actor(carry, fresh, obs, slot, t, qpos, qvel):
        return act(carry, fresh, obs, syllables[slot, jnp.minimum(t, syllables.shape[1] - 1)])

    return actor, pol.model.initialize_carry


def _grouped(actors, N: int):
    """One actor for G groups of N envs (env ``g * N + i`` is env i of group g), each group
    acting with its own actor and carry: ``(act, init_carry)``."""
    import jax.numpy as jnp

    def act(carry, fresh, obs, slot, t, qpos, qvel):
        g_ = [slice(g * N, (g + 1) * N) for g in range(len(actors))]
        out = [actor(c, fresh[s], obs[s], slot[s], t[s], qpos[s], qvel[s])
               for s, (actor, _), c in zip(g_, actors, carry)]
        return tuple(c for c, _ in out), jnp.concatenate([a for _, a in out])

    return act, lambda: tuple(init(N) for _, init in actors)


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


def _syllable_table(store, mode: Mode | None, clip_ids, lengths, syllable_key: str = SYLLABLES):
    """(n_clips, T_max) int32: each selected clip's syllables (the dataset ``syllable_key``, as
    in training), edge-padded; (n_clips, 1) zeros when ``mode`` reads no syllables."""
    from ncssm_data.modes import read_source

    if mode is None or SYLLABLES not in mode.x_in:
        return np.zeros((len(clip_ids), 1), np.int32)
    T = int(np.max(lengths))
    rows = []
    for cid in clip_ids:
        s = np.asarray(read_source(store, int(cid), "syllables", syllable_key=syllable_key))
        s = s.astype(np.int32).reshape(-1)
        rows.append(np.concatenate([s, np.repeat(s[-1:], T - len(s))]))
    return np.stack(rows)


@dataclass
class _Setup:
    """What one closed-loop evaluation runs: the ``groups`` (``"policy"`` and baseline names)
    of ``N`` envs each, the plan's size and seed, and what to record."""

    pol: object
    mode: Mode | None
    where: object
    groups: list
    N: int
    quota: np.ndarray
    episodes: int
    seed: int
    max_steps: int | None
    record: bool
    pose: bool
    bar: object
    physics: dict
    syllable_key: str = SYLLABLES
    experts: dict = dataclasses.field(default_factory=dict)  # group name -> ExpertSpec
    action_noise: float = 0.0

    def actors(self, model, layout, obs_size, body, lo, hi, syllables, clips):
        """The grouped actor; ``clips``: (ctrl (n_clips, T, nu), qpos (n_clips, T, nq),
        lengths (n_clips,))."""
        out = []
        for g in self.groups:
            if g == "policy":
                parts = _policy_parts(self.pol, self.mode, layout, obs_size, model.nu, body,
                                      self.where)
                out.append(_policy_actor(self.pol, parts, lo, hi, syllables))
            elif g == "zero":
                out.append(_baseline_actor("zero", lo, hi, *clips))
            else:
                out.append(_baseline_actor(self.experts[g].make(model), lo, hi, *clips))
        return _grouped(out, self.N)

    def episodes_of(self, clip_ids, lengths):
        from ncssm_env import task as _task

        return [_Episodes(self.quota, clip_ids, lengths, _task.TERMINATIONS,
                          self.record and g == 0, self.bar if g == 0 else None,
                          self.pose and (g == 0 or name == "zero"))  # (the poses scored)
                for g, name in enumerate(self.groups)]

    def add(self, eps, steps: dict) -> None:
        N = self.N
        for g, e in enumerate(eps):
            e.add({k: v[:, g * N:(g + 1) * N] for k, v in steps.items()
                   if g == 0 or k not in ("qpos", "ref_qpos", "ctrl")})


def evaluate(policy, num_envs: int = 4, episodes: int = 8, backend: str = "cpu",
             clips=None, clip_dir=None, body: str | None = None, seed: int = 0,
             max_steps: int | None = None, which: str = "best", record: bool = False,
             progress: bool = False, context: int = 50, horizon: int = 50, impl: str = "auto",
             solver: str | None = None, iterations: int | None = None,
             ls_iterations: int | None = None, baselines=BASELINES,
             behaviour: bool | None = None, arhmm: str | None = None, expert: str = "replay",
             action_noise: float = 0.0) -> EvalResult:
    """Evaluate ``policy``: a run folder or its checkpoints (``which`` picks the checkpoint), a
    :class:`~ncssm_policies.checkpoint.LoadedPolicy`, or a baseline's name (``"zero"``,
    ``"expert"``, a registered expert: see below) to run it without a policy.

    Closed loop (the modes that act, :attr:`ncssm_data.modes.Mode.acts`): ``episodes``
    episodes on ``num_envs`` envs of ``backend``, drawn once (:class:`EpisodePlan`), and the
    same episodes again for each of ``baselines``: ``zero`` (every control 0, clipped to the
    range) and ``expert`` (the clip's recorded controls replayed; skipped, with a note in the
    summary, for clips without ``/ctrl``). The baselines run in the same batch as the policy.
    ``summary["baselines"]`` holds their summaries; the policy's and theirs hold ``survival``
    (the fraction of episodes that reached the clip's end or ``max_steps``) and, with both
    baselines, ``score_<error>`` = (e_zero - e) / (e_zero - e_expert) for each tracking error
    (means over episodes): 1 is the expert, 0 doing nothing. ``record`` keeps the policy's
    per-step arrays in ``EvalResult.rollouts``. ``behaviour`` (None: for the autonomous modes,
    which do not see the reference) adds the distributional scores of
    :func:`behaviour_scores` (``arhmm``: an AR-HMM model file for the syllable-usage
    divergence).

    ``expert`` names the registered expert (:mod:`ncssm_env.expert`, or a plugin's) that the
    ``expert`` baseline runs: ``replay`` by default. ``baselines`` may also name any other
    registered expert, or hold :class:`~ncssm_policies.hookspecs.ExpertSpec` objects, to run
    beside the policy on the same episodes; ``policy`` may be any of those names to run it
    (with the rest of ``baselines``) without a policy. ``action_noise`` (CPU backend): the
    standard deviation of Gaussian noise added to every executed control, then clipped.

    Open loop (the other modes): ``episodes`` windows of ``context`` true frames then
    ``horizon`` predicted ones (see :func:`ncssm_policies.openloop.score_open_loop`).

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
    experts = _experts(baselines, policy, expert)
    if not (isinstance(action_noise, (int, float)) and 0 <= action_noise < np.inf):
        raise ValueError(f"action_noise is {action_noise!r}, expected a standard deviation >= 0.")
    if action_noise and backend != "cpu":
        raise ValueError("action_noise is applied on the CPU backend only; use backend 'cpu'.")
    baselines = [b.name if not isinstance(b, str) else b for b in baselines]
    num_envs, episodes = check_count("num_envs", num_envs), check_count("episodes", episodes)
    if isinstance(policy, str) and (policy == "zero" or policy in experts):
        pol, where, mode = None, policy, None
        groups = [policy, *(b for b in dict.fromkeys(baselines) if b != policy)]
        if clip_dir is None:
            from ncssm_env.synthetic import clips_or_builtin

            clip_dir = clips_or_builtin(None, body or "rodent")
    else:
        pol = policy if isinstance(policy, LoadedPolicy) else load_policy(policy, which=which)
        where = pol.path if isinstance(policy, LoadedPolicy) else policy
        mode, groups = get_mode(pol.config.mmode), ["policy", *dict.fromkeys(baselines)]
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
    notes = []
    with ClipStore(clip_dir) as store:
        body = body or store.body or "rodent"
        if store.body is not None and store.body != body:
            raise ValueError(f"The clips in {clip_dir} are for body {store.body!r}, not {body!r}.")
        if "expert" in groups and not store.has("ctrl") and experts["expert"].name == "replay":
            if groups[0] == "expert":
                raise ValueError(f"The expert baseline replays the clips' recorded controls, but "
                                 f"the clips in {clip_dir} hold no /ctrl.")
            groups.remove("expert")
            notes.append(f"expert baseline skipped: the clips in {clip_dir} hold no /ctrl "
                         f"(reference-only), so there is nothing to replay")
        if behaviour is None:
            behaviour = mode is not None and autonomous(mode)
        segmenter = _load_arhmm(arhmm) if behaviour and arhmm is not None else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=episodes, desc=f"{backend} episodes", unit="ep")
        physics = dict(solver=solver, iterations=iterations, ls_iterations=ls_iterations)
        if backend == "mjx":
            physics["impl"] = impl
        setup = _Setup(pol, mode, where, groups, num_envs, quota, episodes, seed, max_steps,
                       record, bool(behaviour), bar, physics,
                       pol.config.syllable_key if pol is not None else SYLLABLES,
                       experts, float(action_noise))
        try:
            run = _run_cpu if backend == "cpu" else _run_mjx
            results, layout = run(setup, store, body, clip_dir, clips)
        finally:
            if bar is not None:
                bar.close()
    res = results[0]
    notes += res.summary.pop("notes", [])
    extra = dict(mode=mode.name if mode else f"baseline {where}", body=body, backend=backend,
                 checkpoint=str(pol.path) if pol is not None else None,
                 **{k: v for k, v in physics.items() if v is not None and k != "impl"})
    if "impl" in results[0].summary:
        extra["impl"] = results[0].summary["impl"]
    base = dict(zip(groups[1:], results[1:]))
    if "zero" in base and "expert" in base:
        for r in results:
            r.summary.update(scores(r.summary, base["zero"].summary, base["expert"].summary))
    res.summary["baselines"] = {k: r.summary for k, r in base.items()}
    res.baselines = base
    if behaviour:
        res.summary["behaviour"] = behaviour_scores(
            res, base.get("zero"), pol, store_dir=clip_dir, clips=clips, body=body, layout=layout,
            arhmm=segmenter, notes=notes)
    if pol is not None:
        n_nan = int(np.sum(np.asarray(res.episodes["cause"]) == "nan"))
        if n_nan:
            notes.append(f"{n_nan} of {len(res.episodes['cause'])} of the policy's episodes "
                         f"ended on a NaN or Inf (cause nan): its actions, or the "
                         f"physics they led to, were NaN or Inf")
    if notes:
        res.summary["notes"] = notes
    res.summary.update(extra)
    return res


def _experts(baselines, policy, expert: str) -> dict:
    """Group name -> ExpertSpec for every expert among ``baselines`` and ``policy``; ``expert``
    serves the ``"expert"`` baseline. Unknown names are one sentence listing the known ones."""
    from ncssm_policies.hookspecs import ExpertSpec
    from ncssm_policies.registry import UnknownPolicyError, registry

    reg = registry()
    out = {}
    names = [*baselines, *([policy] if isinstance(policy, str) else [])]
    for b in names:
        if isinstance(b, ExpertSpec):
            out[b.name] = b
        elif b == "expert":
            try:
                out["expert"] = reg.get_expert(expert)
            except UnknownPolicyError as err:
                raise ValueError(f"Unknown expert {expert!r}: {err}") from None
        elif b in reg.experts:
            out[b] = reg.get_expert(b)
        elif b != "zero" and b in baselines:
            raise ValueError(f"Unknown baseline {b!r}; expected zero, expert or a registered "
                             f"expert ({', '.join(sorted(reg.experts))}).")
    return out


def autonomous(mode: Mode) -> bool:
    """Whether a mode that acts runs without seeing the reference's pose (no ``obs``, so no
    ``ref_*`` parts): ``state_action`` and ``syllable_state_intention``. Tracking is the wrong
    judge of those; :func:`behaviour_scores` asks whether their motion looks like the data."""
    return mode.acts and "obs" not in mode.x_in and not any(s.startswith("ref") for s in mode.x_in)


def scores(summary: dict, zero: dict, expert: dict) -> dict:
    """``score_<error>`` = (e_zero - e) / (e_zero - e_expert) for every tracking error in all
    three summaries (their means over episodes), and ``score_return`` the same of the return:
    1 is the expert, 0 doing nothing, below 0 worse than nothing; NaN where the two baselines
    tie."""
    out = {}
    for k in summary:
        if (k.startswith("err_") or k == "return") and k in zero and k in expert:
            e, z, x = summary[k]["mean"], zero[k]["mean"], expert[k]["mean"]
            out["score_" + k.removeprefix("err_")] = float((z - e) / (z - x)) + 0.0 \
                if abs(z - x) > 1e-12 else float("nan")  # (+ 0.0: no "-0" for zero itself)
    return out


def _load_arhmm(path):
    """The AR-HMM saved at ``path``, refused unless it reads the pose (``qpos_local``)."""
    from ncssm_policies.arhmm import ARHMM

    model = ARHMM.load(path)
    if model.features.name != "qpos_local":
        raise ValueError(f"The AR-HMM in {path} was fitted on feature {model.features.name!r}; "
                         f"rollouts give only the pose, so fit it on 'qpos_local'.")
    return model


def behaviour_scores(res: EvalResult, zero: EvalResult | None, pol, store_dir, clips, body: str,
                     layout: dict, arhmm=None, notes: list | None = None) -> dict:
    """Does the policy's motion look like the held-out clips? (:mod:`ncssm_policies.behaviour`
    says exactly how each score is computed.)

    - ``frechet``: the Fréchet distance between Gaussians fitted to 1-second windows of pose
      features of the policy's episodes and of the held-out clips (``clips`` of
      ``store_dir``), in a PCA space fitted on the training clips (the policy's training
      split; all other clips of ``store_dir`` for a baseline); ``frechet_floor`` is the
      training clips against the held-out ones, ``frechet_ceiling`` zero action's episodes
      against them.
    - ``falls_per_min`` of the policy, of zero action (``falls_per_min_zero``) and of the
      held-out clips (``falls_per_min_clips``).
    - With ``arhmm`` (a model saved by ``ncssm-data segment``, or its path): ``syllable_jsd``, the
      Jensen-Shannon divergence (bits) of syllable usage in the policy's episodes against the
      held-out clips, and ``syllable_jsd_zero``.
    """
    from ncssm_env.gym_env import TrackEnv
    from ncssm_policies import behaviour as bh

    env = TrackEnv(body=body, clip_dir=store_dir)
    try:
        n = len(env.store)
        held = np.arange(n) if clips is None else np.asarray(clips, np.int64)
        train = np.setdiff1d(np.flatnonzero(env.store.dart_of < 0), held)  # nominal clips
        if train.size == 0:
            train = held
            (notes if notes is not None else []).append(
                "behaviour scores: no clips outside the evaluated ones, so the PCA space was "
                "fitted on the evaluated clips themselves")

        def clip_features(ids):
            return [bh.features_from_qpos(env.model, env.idx, env.clip(int(i)).qpos,
                                          env.clip(int(i)).qvel) for i in ids]

        held_f, train_f = clip_features(held), clip_features(train)
        _, pose_layout = bh.pose_columns(layout)

        def rollout_features(poses):
            return [bh.features_from_obs(p, pose_layout) for p in poses]

        pol_f = rollout_features(res.poses)
        zero_f = rollout_features(zero.poses) if zero is not None else None
        w, st = bh.PoseSpace.window, bh.PoseSpace.stride
        n_windows = sum((len(f) - w) // st + 1 for f in train_f if len(f) >= w)
        if n_windows < 3:
            return {"note": f"behaviour scores skipped: the training clips give {n_windows} "
                            f"windows of 1 s, too few to fit the pose space"}
        space = bh.PoseSpace(n_components=min(16, n_windows - 1)).fit(train_f)
        ref = space.embed(held_f)

        def frechet(feats):
            x = space.embed(feats)
            return bh.frechet_distance(x, ref) if len(x) >= 2 and len(ref) >= 2 else float("nan")

        lo, hi = env.healthy_z
        nj = pose_layout["qpos_local"][1]

        def falls(feats):
            return bh.falls_per_minute([f[:, nj] for f in feats], [f[:, nj + 3] for f in feats],
                                       (lo, hi), env.control_dt)

        out = {"frechet": frechet(pol_f), "frechet_floor": frechet(train_f),
               "windows": int(len(space.embed(pol_f))), "windows_held_out": int(len(ref)),
               "falls_per_min": falls(pol_f), "falls_per_min_clips": falls(held_f)}
        if zero_f is not None:
            out.update(frechet_ceiling=frechet(zero_f), falls_per_min_zero=falls(zero_f))
        if arhmm is not None:
            model = _load_arhmm(arhmm) if isinstance(arhmm, (str, Path)) else arhmm
            K = model.hyper["num_states"]

            def usage(feats):
                return model.decode([model.features(f[:, :nj], "the rollouts") for f in feats])

            held_l = usage(held_f)
            out["syllable_jsd"] = bh.usage_jsd(usage(pol_f), held_l, K)
            if zero_f is not None:
                out["syllable_jsd_zero"] = bh.usage_jsd(usage(zero_f), held_l, K)
        return out
    finally:
        env.close()


def _run_cpu(setup: _Setup, store, body, clip_dir, clips):
    import jax

    from ncssm_env.vector import TrackVectorEnv

    N, G = setup.N, len(setup.groups)
    M = N * G
    env = TrackVectorEnv(M, body=body, clip_dir=clip_dir, clips=clips,
                         max_episode_steps=setup.max_steps, **setup.physics)
    try:
        lo, hi = env.single_action_space.low, env.single_action_space.high
        syl = _syllable_table(store, setup.mode, env.clip_ids, env.lengths, setup.syllable_key)
        act, init = setup.actors(env.model, env.obs_layout, env.single_observation_space.shape[0],
                                 body, lo, hi, syl, (env.clips.ctrl.astype(np.float32),
                                                     env.clips.qpos, env.lengths))
        noise = np.random.default_rng([setup.seed, 1])  # the action noise, if any
        act = jax.jit(act)
        plan = EpisodePlan.draw(env.lengths, setup.episodes, env.model.nq - 7,
                                env.cfg.reset_noise, setup.seed)
        cols = pose_columns(env.obs_layout)[0] if setup.pose else None
        eps = setup.episodes_of(env.clip_ids, env.lengths)
        member = np.tile(np.arange(N), G)  # each env's index in its group
        k = np.zeros(M, np.int64)  # episodes each env has started

        def start(mask, seed=None):
            j = plan.index(member, k, N)
            return env.reset(seed=seed, options={
                "reset_mask": mask, "clip": env.clip_ids[plan.slot[j]], "start": plan.start[j],
                "noise": plan.noise[j]})[0]

        obs, carry = start(np.ones(M, bool), setup.seed), init()
        fresh = np.ones(M, bool)  # envs whose obs is the first of an episode
        while not all(e.full for e in eps):
            slot, t = env.slot.copy(), env.t.copy()
            qpos = np.stack([d.qpos.copy() for d in env.datas])
            qvel = np.stack([d.qvel.copy() for d in env.datas])
            carry, action = act(carry, fresh, obs, slot, t, qpos, qvel)
            action = np.asarray(action)
            if setup.action_noise:
                action = np.clip(action + setup.action_noise * noise.normal(size=action.shape),
                                 lo, hi).astype(np.float32)
            before = obs
            obs, rew, term, trunc, info = env.step(action)
            done = term | trunc
            step = step_record(np, slot, t, done, rew, info["metrics"])
            if setup.record:
                step.update(qpos=qpos, ref_qpos=env.clips.qpos[slot, t], ctrl=action)
            if cols is not None:
                step["pose"] = before[:, cols]
            setup.add(eps, {k_: np.asarray(v)[None] for k_, v in step.items()})
            if done.any():
                k += done
                obs = start(done)
            fresh = done
        return [e.result() for e in eps], env.obs_layout
    finally:
        env.close()


def policy_env_scan(env, act, plan: EpisodePlan, N: int, length: int, record: bool = False,
                    pose_cols=None):
    """``chunk(state, carry, fresh, k) -> ((state, carry, fresh, k), out)``: ``length`` control
    steps of the actor ``act`` (:func:`_grouped`'s) and the vmapped MJX env ``env`` in one
    ``lax.scan`` (jit it). ``state`` is the batched env state (M envs: groups of ``N``),
    ``carry`` the actor's, ``fresh`` (M,) marks envs whose observation starts an episode,
    ``k`` (M,) counts the episodes each env has started; an episode that ends restarts the env
    on its next episode of ``plan``. ``out`` holds (length, M) arrays: ``done``, ``slot``,
    ``t``, ``reward``, ``cause`` (1 + the index of the first termination cause, 0 for none),
    ``overflow`` and every ``err_*`` and ``rew_*`` metric; when ``record`` the ``qpos``
    before each action, ``ref_qpos`` and ``ctrl``; with ``pose_cols`` the observation's pose
    columns before each action, ``pose`` (length, M, F)."""
    import jax
    import jax.numpy as jnp

    advance, restart = jax.vmap(env.advance), jax.vmap(env.restart)
    reset_to = jax.vmap(env.reset_to)
    slots, starts, noise = (jnp.asarray(a) for a in (plan.slot, plan.start, plan.noise))

    def chunk(state, carry, fresh, k):
        member = jnp.arange(fresh.shape[0]) % N

        def body_fn(c, _):
            state, carry, fresh, k = c
            slot, t = state.info["slot"], state.info["t"]
            carry, a = act(carry, fresh, state.obs, slot, t, state.pipeline_state.qpos,
                           state.pipeline_state.qvel)
            nxt = advance(state, a)
            done = nxt.done > 0
            out = {**step_record(jnp, slot, t, done, nxt.reward, nxt.metrics),
                   "overflow": nxt.info["overflow"]}
            if record:
                out.update(qpos=state.pipeline_state.qpos, ref_qpos=env.qpos[slot, t], ctrl=a)
            if pose_cols is not None:
                out["pose"] = state.obs[:, pose_cols]
            k = k + done
            j = plan.index(member, k, N)
            nxt = restart(nxt, reset_to(nxt.info["rng"], slots[j], starts[j], noise[j]))
            return (nxt, carry, done, k), out

        return jax.lax.scan(body_fn, (state, carry, fresh, k), None, length=length)

    return chunk


def mjx_actor(pol, env, N: int, groups=("policy",), syllables=None):
    """``(act, init_carry)`` for :func:`policy_env_scan` on the MJX env ``env``: ``groups``
    (``"policy"``, ``"zero"``, ``"expert"``) of ``N`` envs each; ``syllables`` (n_clips, T)
    int32, None for zeros."""
    import jax.numpy as jnp

    mode = get_mode(pol.config.mmode) if pol is not None else None
    setup = _Setup(pol, mode, pol.path if pol is not None else None, list(groups), N,
                   np.zeros(N, int), N, 0, None, False, False, None, {},
                   experts=_experts([g for g in groups if g != "policy"], None, "replay"))
    lo, hi = env.mj_model.actuator_ctrlrange.T.astype(np.float32)
    syl = jnp.zeros((len(env.clip_ids), 1), jnp.int32) if syllables is None else syllables
    return setup.actors(env.mj_model, env.obs_layout, env.observation_size, env.body, lo, hi,
                        syl, (env.ctrl.astype(jnp.float32), env.qpos, env.lengths))


def _run_mjx(setup: _Setup, store, body, clip_dir, clips):
    import jax
    import jax.numpy as jnp

    from ncssm_env.mjx_env import MJXTrackEnv

    N, G = setup.N, len(setup.groups)
    M = N * G
    env = MJXTrackEnv(body=body, clip_dir=clip_dir, clips=clips, num_envs=M,
                      max_episode_steps=setup.max_steps or 2**30, **setup.physics)
    lengths = np.asarray(env.lengths)
    syl = jnp.asarray(_syllable_table(store, setup.mode, env.clip_ids, lengths,
                                      setup.syllable_key))
    lo, hi = env.mj_model.actuator_ctrlrange.T.astype(np.float32)
    act, init = setup.actors(env.mj_model, env.obs_layout, env.observation_size, body, lo, hi,
                             syl, (env.ctrl.astype(jnp.float32), env.qpos, env.lengths))
    plan = EpisodePlan.draw(lengths, setup.episodes, env.mj_model.nq - 7, env.cfg.reset_noise,
                            setup.seed)
    cols = jnp.asarray(pose_columns(env.obs_layout)[0]) if setup.pose else None
    chunk = jax.jit(policy_env_scan(env, act, plan, N, MJX_CHUNK, setup.record, cols))
    eps = setup.episodes_of(env.clip_ids, lengths)
    j = plan.index(np.tile(np.arange(N), G), np.zeros(M, np.int64), N)
    keys = jax.random.split(jax.random.PRNGKey(setup.seed), M)
    state = jax.jit(jax.vmap(env.reset_to))(keys, jnp.asarray(plan.slot[j]),
                                            jnp.asarray(plan.start[j]), jnp.asarray(plan.noise[j]))
    c, n_devices = shard_envs((state, init(), jnp.ones(M, bool), jnp.zeros(M, jnp.int32)), M)
    while not all(e.full for e in eps):
        c, out = chunk(*c)
        out = jax.device_get(out)
        overflow = out.pop("overflow")
        if overflow.any():
            raise env.overflow_error(overflow.max(axis=0))
        setup.add(eps, out)
    results = [e.result() for e in eps]
    results[0].summary.update(impl=env.impl, devices=n_devices)
    if n_devices < len(jax.local_devices()):
        results[0].summary.setdefault("notes", []).append(
            f"{M} envs do not divide over the {len(jax.local_devices())} local devices; all ran "
            f"on one. Pick num_envs so that num_envs x (1 + baselines) divides.")
    return results, env.obs_layout


def shard_envs(tree, M: int):
    """``(tree, n_devices)``: ``tree`` placed over every local device (``jax.sharding``), each
    leaf whose leading axis is the ``M`` envs split along it and the rest replicated, so the
    jitted scan runs its envs on all devices at once (GSPMD). With one device, or ``M`` not
    divisible by their number, ``tree`` is returned as is on one device."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    if len(devices) < 2 or M % len(devices):
        return tree, 1
    mesh = Mesh(np.array(devices), ("envs",))
    split, rep = NamedSharding(mesh, PartitionSpec("envs")), NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda a: jax.device_put(a, split if np.ndim(a) and np.shape(a)[0] == M
                                                 else rep), tree), len(devices)


# ----------------------------------------------------------------------------------------------
# Report and CLI
# ----------------------------------------------------------------------------------------------


def metrics_table(result: EvalResult) -> str:
    """The summary as aligned text. Closed loop with baselines: first the policy, zero action
    and the expert in rows (survival and the scores), then one row per metric with the
    policy's mean and median beside each baseline's mean; then the causes and any notes."""
    s = result.summary
    base = s.get("baselines", {})
    rows = [(k, v) for k, v in s.items() if isinstance(v, dict) and "mean" in v]
    width = max([len(k) for k, _ in rows] + [8])
    lines = []
    if "survival" in s:
        score_keys = [k for k in s if k.startswith("score_")]
        head = ["survival", *score_keys]
        lines.append(f"{'':<8}" + "".join(f"  {k:>{max(len(k), 8)}}" for k in head))
        for name, summ in (("policy", s), *base.items()):
            lines.append(f"{name:<8}" + "".join(
                f"  {summ.get(k, float('nan')):>{max(len(k), 8)}.3g}" for k in head))
        lines.append("")
    cols = ["mean", "median", *(f"{b} mean" for b in base)]
    lines.append(f"{'metric':<{width}}" + "".join(f"  {c:>11}" for c in cols))
    for k, v in rows:
        vals = [v["mean"], v["median"], *(b[k]["mean"] if k in b else float("nan")
                                            for b in base.values())]
        lines.append(f"{k:<{width}}" + "".join(f"  {x:>11.4g}" for x in vals))
    if "causes" in s:
        n = sum(s["causes"].values())
        lines.append("episode ends: " + ", ".join(
            f"{k} {v} ({100 * v / n:.0f}%)" for k, v in sorted(s["causes"].items())))
        for name, b in base.items():
            lines.append(f"  {name}: " + ", ".join(
                f"{k} {v}" for k, v in sorted(b["causes"].items())))
    if "behaviour" in s:
        lines.append("behaviour (does the motion look like the held-out clips?):")
        lines += [f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}"
                  for k, v in s["behaviour"].items()]
    lines += [f"note: {n}" for n in s.get("notes", [])]
    return "\n".join(lines)


@dataclass
class RolloutConfig:
    """``ncssm-rollout``'s config (``configs/rollout.yaml``).

    The defaults are ``configs/rollout.yaml``'s. ``checkpoint``: a run folder or its
    checkpoints (a glob picks the newest match: by default the newest quickstart run);
    ``which``: ``best`` or ``latest``; or ``zero`` / ``expert`` / an expert's name to run it
    without a policy, beside the other ``baselines``
    (on ``clip_dir``, all its clips by default, body ``body``). ``clip_dir`` (None: the clips it trained on) and ``clips`` (None: the held-out
    clips, or all of ``clip_dir``) pick the references. ``num_envs``, ``episodes``, ``backend``
    (``cpu``, ``mjx``, ``auto``), ``impl`` (the MJX physics: ``jax``, ``warp``, ``auto``),
    ``solver``, ``iterations``, ``ls_iterations``, ``max_steps`` and ``seed`` are
    :func:`evaluate`'s.
    ``out_dir`` (None: ``<run folder>/rollout``) receives ``summary.json``, ``rollouts.h5``
    (``save_rollouts``) and ``episode.mp4`` (``video``: episode ``video_episode``, reference
    left, policy right, each ``width`` x ``height``). ``context`` and ``horizon``: the open-loop
    windows of models that predict rather than act. ``baselines`` (``zero``, ``expert``) run
    on the policy's episodes; ``behaviour`` (None: for the autonomous modes) adds the
    distributional scores, ``arhmm`` an AR-HMM model file for the syllable-usage divergence.
    ``body``: None takes the clips' body.
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
    baselines: list[str] = dataclasses.field(default_factory=lambda: list(BASELINES))
    behaviour: bool | None = None
    arhmm: str | None = None
    body: str | None = None

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

    from ncssm_data.locks import writing

    ckpt = cfg.checkpoint if cfg.checkpoint in BASELINES else resolve_checkpoint(cfg.checkpoint)
    baseline = cfg.checkpoint in BASELINES
    if not baseline and not Path(ckpt).is_dir():  # before its rollout/ folder is made
        from ncssm_policies.checkpoint import CheckpointError

        raise CheckpointError(f"No checkpoint folder at {ckpt}.")
    out = Path(cfg.out_dir) if cfg.out_dir else \
        Path("runs") / f"baseline-{cfg.checkpoint}" if baseline else _run_folder(ckpt) / "rollout"
    with writing(out):  # one writer per output folder, refused before the evaluation
        return _rollout(cfg, ckpt, baseline, out, progress)


def _rollout(cfg: RolloutConfig, ckpt, baseline: bool, out: Path, progress: bool):
    from ncssm_data.clips import atomic_path

    t0 = time.perf_counter()
    res = evaluate(cfg.checkpoint if baseline else ckpt, num_envs=cfg.num_envs,
                   episodes=cfg.episodes, backend=cfg.backend, clips=cfg.clips,
                   clip_dir=cfg.clip_dir, body=cfg.body, seed=cfg.seed, max_steps=cfg.max_steps,
                   which=cfg.which, record=cfg.save_rollouts or cfg.video, progress=progress,
                   context=cfg.context, horizon=cfg.horizon, impl=cfg.impl, solver=cfg.solver,
                   iterations=cfg.iterations, ls_iterations=cfg.ls_iterations,
                   baselines=cfg.baselines, behaviour=cfg.behaviour, arhmm=cfg.arhmm)
    res.summary["evaluate_s"] = round(time.perf_counter() - t0, 1)
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
    def per_episode(eps):
        return {k: np.asarray(v).tolist() for k, v in eps.items()
                if np.ndim(v) == 1}  # (not the open-loop predictions)

    body = {**meta, "episodes": per_episode(res.episodes)}
    if res.baselines:
        body["baseline_episodes"] = {k: per_episode(r.episodes) for k, r in res.baselines.items()}
    with atomic_path(paths["summary"]) as tmp:
        tmp.write_text(json.dumps(body, indent=2))
    return res, {k: str(v) for k, v in paths.items()}


def main(argv=None) -> int:
    from ncssm_policies.config import ConfigError, load_config
    from ncssm_policies.checkpoint import CheckpointError
    from ncssm_policies.registry import PluginError

    p = argparse.ArgumentParser(
        prog="ncssm-rollout",
        description="Evaluate a trained checkpoint closed loop in the body (or, for models that "
                    "predict rather than act, open loop on clips).")
    p.add_argument("--config", help="a YAML config (default: configs/rollout.yaml's values, "
                                    "which evaluate the newest quickstart run)")
    p.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config values, each read as a YAML scalar")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--traceback", action="store_true",
                   help="on an error raised in a plugin's code, print the full traceback too")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.override, cls=RolloutConfig)
        res, paths = rollout(cfg, progress=not args.no_progress)
    except Exception as err:  # noqa: BLE001 - a plugin's error is one sentence naming it
        from ncssm_policies.build import report_error

        return report_error("ncssm-rollout", err, args.traceback,
                            (ConfigError, CheckpointError, ValueError, OSError, PluginError))
    n = res.summary.get("episodes", res.summary.get("windows"))
    what = f"{res.summary.get('checkpoint')} ({cfg.which})" if res.summary.get("checkpoint") \
        else f"{cfg.checkpoint} baseline"
    print(f"ncssm-rollout: {what}, {n} "
          f"{'episodes' if 'episodes' in res.summary else 'windows'} on {cfg.backend} in "
          f"{res.summary['evaluate_s']:.0f} s (outputs {res.summary['outputs_s']:.0f} s)")
    print(metrics_table(res))
    for k, v in paths.items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
