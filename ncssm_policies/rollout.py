"""Closed-loop evaluation of a trained policy in the body, on the CPU vector env.

``evaluate`` runs the policy's one-step form, one batched jitted call per control step, with
each env's recurrent carry reset when its episode starts. How a mode drives the body:

- ``state_action``: qpos_local (from the observation) -> action;
- ``state_intention_controller``: (qpos_local, observation) -> intention -> decoded action;
- ``syllable_state_intention``: (the reference clip's syllable at the frame, qpos_local) ->
  action.

The other modes (``state_intention``, ``pure_state``, ``pure_intention``) predict rather than
act; they are not evaluated here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CONTROL_MODES = ("state_action", "state_intention_controller", "syllable_state_intention")
BACKENDS = ("cpu",)


@dataclass
class EvalResult:
    """Per-episode arrays (E,) and their summaries.

    ``episodes`` holds ``clip``, ``start``, ``length`` (control steps before the episode
    ended), ``fraction`` (of the frames the clip had left after ``start``), ``cause`` (the
    termination cause, or ``"end"``), and the per-step mean of each tracking error
    (``err_*``) and reward term (``rew_*``). ``summary`` has their mean and median over
    episodes, and the count of each cause.
    """

    episodes: dict
    summary: dict = field(default_factory=dict)


def _policy_inputs(mode: str, obs: np.ndarray, layout: dict, syllables: np.ndarray | None,
                   n_syllables: int | None):
    a, b = layout["qpos_local"]
    qpos = obs[:, a:b]
    if mode == "state_action":
        return qpos
    if mode == "state_intention_controller":
        return (qpos, obs)
    one_hot = np.eye(n_syllables, dtype=np.float32)[np.clip(syllables, 0, n_syllables - 1)]
    return (one_hot, qpos)


def evaluate(ckpt_dir: str | Path, num_envs: int = 4, episodes: int = 8, backend: str = "cpu",
             clips=None, clip_dir=None, body: str | None = None, seed: int = 0,
             max_steps: int | None = None, which: str = "best") -> EvalResult:
    """Run ``episodes`` closed-loop episodes of the policy in ``ckpt_dir`` on ``num_envs`` envs.

    ``clip_dir`` (None: the clips the policy trained on) and ``clips`` (indices; None: all)
    pick the reference clips; ``body`` defaults to the clips' body. Episodes start at a random
    clip and frame (from ``seed``) and run until termination, the clip's end or ``max_steps``.
    """
    import jax

    from ncssm_data import ClipStore
    from ncssm_env.vector import TrackVectorEnv
    from ncssm_policies.checkpoint import load_policy

    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {list(BACKENDS)}.")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}.")
    pol = load_policy(ckpt_dir, which=which)
    mode = pol.config.mmode
    if mode not in CONTROL_MODES:
        raise ValueError(f"The policy in {ckpt_dir} is a {mode!r} model, which predicts rather "
                         f"than acts; closed-loop evaluation needs one of {list(CONTROL_MODES)}.")
    if clip_dir is None:
        from ncssm_policies.train import resolve_root

        clip_dir = resolve_root(pol.config)
    store = ClipStore(clip_dir)
    body = body or store.body or "rodent"
    env = TrackVectorEnv(num_envs, body=body, clip_dir=clip_dir, clips=clips,
                         max_episode_steps=max_steps)
    nu, layout = env.model.nu, env.obs_layout
    want_in = pol.dims["x_in"]
    q = layout["qpos_local"][1] - layout["qpos_local"][0]
    have_in = {"state_action": [q], "state_intention_controller": [q, env.single_observation_space.shape[0]],
               "syllable_state_intention": [pol.dims.get("n_syllables"), q]}[mode]
    if list(want_in) != have_in or pol.dims["x_tgt"] != nu:
        raise ValueError(
            f"The policy in {ckpt_dir} takes inputs {list(want_in)} and gives {pol.dims['x_tgt']} "
            f"actions, but body {body!r} gives inputs {have_in} and takes {nu} actions.")
    syllables = [store.read(int(i), "syllables") for i in range(len(store))] \
        if mode == "syllable_state_intention" else None

    model, params, norm = pol.model, pol.params, pol.normalizer

    @jax.jit
    def act(carry, x_t):
        if norm is not None:
            x_t = norm.normalize(x_t)
        carry, y = model.apply({"params": params}, carry, x_t, method="step")
        return carry, (norm.denormalize_tgt(y) if norm is not None else y)

    zeros = model.initialize_carry(num_envs)
    carry = zeros
    obs, info = env.reset(seed=seed)
    start, steps = info["t"].copy(), np.zeros(num_envs, np.int64)
    sums: dict[str, np.ndarray] = {}
    records: list[dict] = []
    fresh = np.ones(num_envs, bool)  # envs whose obs is the first of an episode
    resetting = np.zeros(num_envs, bool)  # envs that the next step restarts (NEXT_STEP)
    lo, hi = env.single_action_space.low, env.single_action_space.high
    while len(records) < episodes:
        if fresh.any():  # a new episode: its carry starts from zeros
            keep = ~fresh
            carry = jax.tree.map(lambda c, z: np.where(
                keep.reshape((-1,) + (1,) * (np.ndim(c) - 1)), c, z), carry, zeros)
        syl = None if syllables is None else np.array(
            [syllables[c][t] for c, t in zip(info["clip"], info["t"])])
        x_t = _policy_inputs(mode, obs, layout, syl, pol.dims.get("n_syllables"))
        carry, action = act(carry, x_t)  # (the restarting envs' actions are ignored)
        action = np.clip(np.asarray(action), lo, hi)
        clip_ids = info["clip"].copy()
        obs, rew, term, trunc, info = env.step(action)
        live = ~resetting
        steps[live] += 1
        terms = {**{f"err_{k}": v for k, v in info["errors"].items()},
                 **{f"rew_{k}": v for k, v in info["reward_terms"].items()}}
        for k, v in terms.items():
            sums.setdefault(k, np.zeros(num_envs))[live] += np.asarray(v)[live]
        done = (term | trunc) & live
        for i in np.flatnonzero(done)[: episodes - len(records)]:
            T = int(env.lengths[env.slot[i]])
            cause = next((k for k, v in info["termination"].items() if v[i]), "end")
            records.append({"clip": int(clip_ids[i]), "start": int(start[i]),
                            "length": int(steps[i]),
                            "fraction": float(steps[i] / max(T - 1 - start[i], 1)),
                            "cause": cause, **{k: float(v[i] / steps[i]) for k, v in sums.items()}})
        fresh = resetting
        start[fresh], steps[fresh] = info["t"][fresh], 0
        for v in sums.values():
            v[fresh] = 0.0
        resetting = done
    env.close()
    eps = {k: np.array([r[k] for r in records]) for k in records[0]}
    numeric = [k for k in eps if k not in ("clip", "start", "cause")]
    summary = {k: {"mean": float(np.mean(eps[k])), "median": float(np.median(eps[k]))}
               for k in numeric}
    causes, counts = np.unique(eps["cause"], return_counts=True)
    summary["causes"] = dict(zip(causes.tolist(), counts.tolist()))
    return EvalResult(eps, summary)
