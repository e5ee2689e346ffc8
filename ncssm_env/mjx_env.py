"""``MJXTrackEnv``: the tracking task on ``mujoco.mjx``, as a brax ``Env``.

Written directly against ``brax.envs.base.Env`` (not brax's unmaintained ``PipelineEnv``):
``reset(rng)`` and ``step(state, action)`` are pure and jittable; physics is ``mjx.step`` in
a ``lax.scan`` over the substeps; the task math is :mod:`ncssm_env.task` under ``jax.numpy``;
the reference clips sit on the device as padded ``(n_clips, T_max, ...)`` arrays.

Physics implementation (``impl``): ``"jax"`` is MJX's XLA path, fine for small bodies but
unrolled over the kinematic tree, so the rodent (38 bodies deep) takes many minutes to
compile; ``"warp"`` is MuJoCo Warp behind MJX's FFI (warp-lang), which takes the rodent on a
CUDA GPU or on Warp's CPU device; ``"auto"`` picks warp for the rodent and for any body on a
CUDA GPU, and jax otherwise. Warp keeps the contacts of every env of a batched call in one
shared buffer: it is sized from the body (the most contacts and constraint rows its collision
pairs can make) and ``num_envs``, and a step that overflows it raises
:class:`BufferOverflowError` where the host sees it (``MJXVectorEnv``, ``evaluate``); inside
brax's training it shows as ``metrics["overflow"]``.

An episode that ends is reset inside ``step`` to a freshly drawn clip and start frame (brax's
own ``AutoResetWrapper`` would return to a cached first state): the returned state has
``done = 1``, the reward of the final step, and the first observation of the new episode.
Train with brax's PPO through :func:`wrap_for_training`, which vmaps without that wrapper.
"""

from __future__ import annotations

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env, State, Wrapper
from mujoco import mjx

from ncssm_data.errors import check_count
from ncssm_env import MAX_EPISODE_STEPS
from ncssm_env import task as _task
from ncssm_env.gym_env import TrackEnv
from ncssm_env.reference import stack_clips
from ncssm_env.jax_cache import enable_compilation_cache

IMPLS = ("jax", "warp", "auto")
WARP_INSTALL = ("pip install 'ncssm[gpu]' on an NVIDIA machine, or pip install warp-lang==1.18.0 "
                "(the version mujoco-mjx pins) for Warp's CPU device")
# MuJoCo Warp's overflow bits (mujoco_warp.OverflowType) that mean a buffer was too small and
# something was dropped: NEFC and NJMAX_NNZ (constraint rows), BROADPHASE, NARROWPHASE and CCD
# (contacts). Its solver-iteration bits are not overflows of ours.
ROWS_OVERFLOW, CONTACTS_OVERFLOW = 0b00011, 0b11100
SOLVER_LIMITS = (1 << 9) | (1 << 10)  # ITERATIONS, LS_ITERATIONS: expected with capped solvers


class BufferOverflowError(ValueError):
    """MJX-Warp dropped contacts or constraint rows: its buffers were sized too small."""


def resolve_impl(impl: str, body: str) -> str:
    """``"jax"`` or ``"warp"`` for ``impl`` (``"auto"``: warp for the rodent and for any body
    on a CUDA GPU, jax otherwise). Warp without warp-lang installed is one sentence naming
    the install line."""
    if impl not in IMPLS:
        raise ValueError(f"Unknown impl {impl!r}; expected one of {list(IMPLS)}.")
    if impl == "auto":
        impl = "warp" if body == "rodent" or _on_cuda() else "jax"
    if impl == "warp":
        try:
            import warp
        except ImportError:
            raise ValueError(f"impl 'warp' (MuJoCo Warp, the MJX physics for {body!r} here) needs "
                             f"warp-lang, which is not installed: {WARP_INSTALL}.") from None
        warp.config.log_level = warp.LOG_WARNING  # no banner, no line per kernel module loaded
    return impl


def _on_cuda() -> bool:
    try:
        return jax.devices()[0] in jax.devices("cuda")
    except RuntimeError:  # no CUDA backend
        return False


def contact_bounds(model) -> tuple[int, int]:
    """``(contacts, constraint rows)``: the most one world of ``model`` can produce.

    Contacts are MJX's own static bound (every candidate geom pair times the most contacts
    its collision function emits); a pair that MJX's JAX path cannot collide counts 4. Rows
    add each contact's friction-pyramid rows to the joint and tendon limits and equalities.
    """
    from mujoco.mjx._src import collision_driver, constraint
    from mujoco.mjx._src.types import Impl

    try:
        dim = collision_driver.make_condim(model, impl=Impl.JAX)
    except ValueError:
        dim = np.array([max(model.geom_condim[g1], model.geom_condim[g2])
                        for g1, g2, _ in collision_driver.geom_pairs(model) for _ in range(4)],
                       dtype=int)
    rows = sum(int(n) for n in constraint.counts(constraint.make_efc_type(model, dim)))
    return int(dim.size), rows


class MJXTrackEnv(Env):
    """Clip tracking under MJX; ``kwargs`` are :class:`~ncssm_env.gym_env.TrackEnv`'s (body,
    clips, task, physics: contacts, timestep, n_substeps, solver, iterations, ls_iterations).

    ``impl``: ``"jax"``, ``"warp"`` or ``"auto"`` (see the module docstring). ``num_envs``:
    the most envs one batched call will step (warp sizes its shared contact buffer for them;
    unused by jax). ``nconmax`` (contacts per env) and ``njmax`` (constraint rows per env)
    override the buffer sizes taken from the body by :func:`contact_bounds`.

    State ``info``: ``rng``, ``slot`` (index into the selected clips), ``t`` (frame),
    ``episode_steps``, ``prev_action`` (nu,), ``truncation`` (1 when the episode ended at
    its clip's end or ``max_episode_steps``) and ``overflow`` (warp's buffer-overflow bits of
    the last step, 0 when none). ``metrics``: each tracking error (``err_*``) and reward term
    (``rew_*``), each termination cause as 0/1 (``term_*``; all 0 when the episode went on or
    was truncated), and ``overflow`` (0/1).
    """

    def __init__(self, body: str = "rodent", impl: str = "auto", num_envs: int = 1,
                 nconmax: int | None = None, njmax: int | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS, **kwargs):
        for name, v in (("num_envs", num_envs), ("nconmax", nconmax), ("njmax", njmax)):
            if v is not None:
                check_count(name, v)
        self.impl = resolve_impl(impl, body)
        enable_compilation_cache()
        cpu = TrackEnv(body=body, **kwargs)
        m = cpu.model
        self.num_envs, self.nconmax, self.njmax = int(num_envs), None, None
        try:
            self.mjx_model = mjx.put_model(m, impl=self.impl)
            if self.impl == "warp":  # Warp prints a line per step that hits a solver cap: not those
                opt = self.mjx_model.opt
                self.mjx_model = self.mjx_model.replace(opt=opt.replace(_impl=opt._impl.replace(
                    warn_overflow=opt._impl.warn_overflow & ~SOLVER_LIMITS)))
                bound_con, bound_rows = contact_bounds(m)
                self.nconmax, self.njmax = nconmax or bound_con, njmax or bound_rows
                data0 = mjx.make_data(m, impl="warp", naconmax=self.nconmax * self.num_envs,
                                      njmax=self.njmax)
            else:
                data0 = mjx.make_data(self.mjx_model)
        except NotImplementedError as err:
            raise ValueError(f"MJX ({self.impl}) cannot take body {body!r} with contacts "
                             f"{kwargs.get('contacts', 'body')!r}: {err}.") from None
        self._data0 = _Template(data0)
        self.body, self.mj_model, self.idx, self.cfg, self.K = body, m, cpu.idx, cpu.cfg, cpu.K
        self.n_substeps, self.healthy_z = cpu.n_substeps, cpu.healthy_z
        self.max_episode_steps = max_episode_steps
        self.obs_layout = cpu.obs_layout
        self.clip_ids = cpu.clip_ids
        clips = stack_clips([cpu.clip(int(i)) for i in self.clip_ids])  # on the device:
        self.lengths, self.qpos, self.qvel, self.act, self.ctrl = (
            jnp.asarray(a) for a in (clips.lengths, clips.qpos, clips.qvel, clips.act, clips.ctrl))
        self.ref = _task.Kin(*(jnp.asarray(a) for a in clips.ref))
        self._obs_size = cpu.observation_space.shape[0]
        cpu.close()

    def overflow_error(self, overflow) -> BufferOverflowError:
        """The error for the per-env overflow bits ``overflow`` (N,) of a batched step."""
        overflow = np.asarray(overflow).reshape(-1)
        envs = np.flatnonzero(overflow).tolist()
        bits = int(np.bitwise_or.reduce(overflow))
        what = " and ".join(w for w, mask in (
            (f"contacts (nconmax {self.nconmax} per env x num_envs {self.num_envs} shared)",
             CONTACTS_OVERFLOW), (f"constraint rows (njmax {self.njmax} per env)", ROWS_OVERFLOW))
            if bits & mask)
        return BufferOverflowError(
            f"MJX-Warp ran out of room for {what} in env(s) {envs[:8]}"
            f"{' ...' if len(envs) > 8 else ''}, so the step dropped some; make the env with "
            f"num_envs of at least the batch it steps, or a larger nconmax / njmax.")

    # --- brax Env -----------------------------------------------------------------------

    @property
    def observation_size(self) -> int:
        return self._obs_size

    @property
    def action_size(self) -> int:
        return self.mj_model.nu

    @property
    def backend(self) -> str:
        return "mjx"

    def reset(self, rng: jax.Array) -> State:
        return self.reset_to(rng)

    def reset_to(self, rng: jax.Array, slot=None, t=None, noise=None) -> State:
        """:meth:`reset` at a given clip slot and frame, with the given joint offsets ``noise``
        (nq - 7,) (each None: drawn from ``rng``)."""
        data, info = self._start(rng, slot, t, noise)
        zero = jnp.zeros(())
        metrics = {k: zero for k in (*_task.METRICS, "overflow")}
        return State(data, self._obs(data, info), zero, zero, metrics, info)

    def step(self, state: State, action: jax.Array) -> State:
        nxt = self.advance(state, action)
        rng, key = jax.random.split(nxt.info["rng"])
        return self.restart(nxt.replace(info={**nxt.info, "rng": rng}), self.reset_to(key))

    def advance(self, state: State, action: jax.Array) -> State:
        """One control step without the restart: ``done`` marks an episode that ended, and the
        state is where it ended. :meth:`step` is ``advance`` then :meth:`restart`."""
        m, info = self.mjx_model, state.info
        finite_action = jnp.isfinite(action).all()
        data = state.pipeline_state.replace(ctrl=jnp.where(finite_action, action, 0.0))

        def substep(d, _):
            return mjx.step(m, d), None

        stepped = mjx.kinematics(m, jax.lax.scan(substep, data, None, length=self.n_substeps)[0])
        data = stepped.where(~finite_action, state.pipeline_state)
        overflow = self._overflow(data)
        t = info["t"] + finite_action.astype(info["t"].dtype)
        steps = info["episode_steps"] + 1
        cur = self._kin(data)
        ref_t = _task.Kin(*(f[info["slot"], t] for f in self.ref))
        err = _task.errors(jnp, cur, ref_t, self.idx.n_end_effectors)
        finite = finite_action & jnp.isfinite(data.qpos).all() & jnp.isfinite(data.qvel).all()
        rew, terms = _task.reward(jnp, self.cfg, err, action, info["prev_action"])
        terminated, causes = _task.termination(jnp, self.cfg, err, cur, self.healthy_z, finite)
        truncated = (t >= self.lengths[info["slot"]] - 1) | (steps >= self.max_episode_steps)
        done = terminated | truncated
        rew = jnp.where(finite, rew, 0.0)
        prev = jnp.where(finite_action, action, info["prev_action"])
        info = {**info, "t": t, "episode_steps": steps, "prev_action": prev,
                "truncation": (truncated & ~terminated).astype(jnp.float32), "overflow": overflow}
        obs = jnp.where(finite, self._obs(data, info), 0.0)
        metrics = {**state.metrics, **_task.metrics(jnp, err, terms, causes),
                   "overflow": (overflow > 0).astype(jnp.float32)}
        # (the merge keeps wrappers' keys)
        return State(data, obs, rew, done.astype(jnp.float32), metrics, info)

    def restart(self, state: State, fresh: State) -> State:
        """``state`` where it is not done; where it is, the start of the episode ``fresh`` (a
        :meth:`reset_to` state) with ``state``'s reward, done, metrics, ``truncation`` and
        ``overflow``. Wrappers' keys in ``info`` pass through untouched."""
        done = state.done > 0
        keep = ("truncation", "overflow")
        info = {**state.info, **{k: jnp.where(done, v, state.info[k])
                                 for k, v in fresh.info.items() if k not in keep}}
        return state.replace(pipeline_state=state.pipeline_state.where(done, fresh.pipeline_state),
                             obs=jnp.where(done, fresh.obs, state.obs), info=info)

    # --- helpers ------------------------------------------------------------------------

    def _start(self, rng, slot=None, t=None, noise=None):
        k_clip, k_t, k_noise, rng = jax.random.split(rng, 4)
        if slot is None:
            slot = jax.random.randint(k_clip, (), 0, len(self.clip_ids))
        if t is None:
            t = jax.random.randint(k_t, (), 0, self.lengths[slot] - 1)
        slot, t = jnp.asarray(slot, jnp.int32), jnp.asarray(t, jnp.int32)
        nq = self.mj_model.nq
        if noise is None:
            noise = jax.random.uniform(k_noise, (nq - 7,), minval=-self.cfg.reset_noise,
                                       maxval=self.cfg.reset_noise)
        qpos = self.qpos[slot, t].at[7:].add(noise)
        data = self._data0.build().replace(
            qpos=qpos, qvel=self.qvel[slot, t], act=self.act[slot, t], ctrl=self.ctrl[slot, t])
        data = mjx.kinematics(self.mjx_model, data)
        info = {"rng": rng, "slot": slot, "t": t, "episode_steps": jnp.zeros((), jnp.int32),
                "prev_action": self.ctrl[slot, t], "truncation": jnp.zeros(()),
                "overflow": jnp.zeros((), jnp.int32)}
        return data, info

    def _overflow(self, d):
        """Warp's buffer-overflow bits of ``d`` (int32, 0 when none; always 0 under jax)."""
        if self.impl != "warp":
            return jnp.zeros((), jnp.int32)
        return (d._impl.overflow & (ROWS_OVERFLOW | CONTACTS_OVERFLOW)).astype(jnp.int32)

    def _kin(self, d) -> _task.Kin:
        return _task.kin(jnp, self.idx, d.qpos, d.qvel, d.xpos, d.xmat.reshape(d.xmat.shape[:-2] + (9,)))

    def _obs(self, data, info):
        T = self.lengths[info["slot"]]
        idx = jnp.minimum(info["t"] + 1 + jnp.arange(self.K), T - 1)
        ref = _task.Kin(*(f[info["slot"], idx] for f in self.ref))
        return _task.observation(jnp, self._kin(data), ref, info["prev_action"],
                                 self.idx.n_end_effectors).astype(jnp.float32)


class _Template:
    """A fresh ``mjx.Data`` built inside a trace: every large constant-valued array (warp's
    contact and constraint buffers) is made there by broadcasting, never embedded in the
    compiled program as a constant; the rest is kept as it is."""

    def __init__(self, data):
        self.leaves, self.treedef = jax.tree.flatten(data)
        self.fill = [None] * len(self.leaves)
        for i, x in enumerate(self.leaves):
            if isinstance(x, (np.ndarray, jax.Array)) and np.size(x) > 64:
                a = np.asarray(x)
                if (a == a.flat[0]).all():
                    self.fill[i] = (a.shape, a.dtype, a.flat[0].item())

    def build(self):
        return jax.tree.unflatten(self.treedef, [
            x if f is None else jnp.full(f[0], f[2], f[1]) for x, f in zip(self.leaves, self.fill)])


class _ZeroStepsWhenDone(Wrapper):
    """brax's ``AutoResetWrapper`` without its return to a cached first state: after a done
    step it zeroes ``EpisodeWrapper``'s step count; the env has already restarted itself."""

    def step(self, state: State, action: jax.Array) -> State:
        state.info.update(steps=jnp.where(state.done, jnp.zeros_like(state.info["steps"]),
                                          state.info["steps"]))
        return self.env.step(state.replace(done=jnp.zeros_like(state.done)), action)


def wrap_for_training(env: "MJXTrackEnv", episode_length: int = 1000, action_repeat: int = 1,
                      randomization_fn=None):
    """``wrap_env_fn`` for ``brax.training.agents.ppo.train``: brax's ``VmapWrapper`` and
    ``EpisodeWrapper``, then :class:`_ZeroStepsWhenDone` instead of ``AutoResetWrapper``.
    ``episode_length`` must equal the env's ``max_episode_steps``, so that both end an
    episode on the same step."""
    from brax.envs.wrappers.training import EpisodeWrapper, VmapWrapper

    if randomization_fn is not None or action_repeat != 1:
        raise ValueError("MJXTrackEnv supports neither randomization_fn nor action_repeat.")
    if episode_length != env.max_episode_steps:
        raise ValueError(f"episode_length {episode_length} must equal the env's "
                         f"max_episode_steps {env.max_episode_steps}.")
    return _ZeroStepsWhenDone(EpisodeWrapper(VmapWrapper(env), episode_length, action_repeat))


class MJXVectorEnv(gym.vector.VectorEnv):
    """:class:`MJXTrackEnv` behind Gymnasium's ``VectorEnv`` API, numpy in and out.

    ``num_envs`` envs run as one jitted ``vmap`` of ``reset`` and ``step`` on the default JAX
    device; ``kwargs`` are :class:`MJXTrackEnv`'s (``impl`` among them). Episodes restart
    inside the step that ends them (Gymnasium's ``SAME_STEP`` autoreset): that step returns
    the reward and terminated/truncated flags of the final step with the first observation of
    the new episode. ``info``: ``clip``, ``t`` and the ``metrics`` (each tracking error and
    reward term), each an (N,) array. A step that overflows MJX-Warp's buffers raises
    :class:`BufferOverflowError`.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, **kwargs):
        from gymnasium.vector.utils import batch_space

        self.num_envs = check_count("num_envs", num_envs)
        self.env = MJXTrackEnv(num_envs=self.num_envs, **kwargs)
        D = self.env.observation_size
        lo, hi = self.env.mj_model.actuator_ctrlrange.T.astype(np.float32)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (D,), np.float32)
        self.single_action_space = gym.spaces.Box(lo, hi, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._reset = jax.jit(jax.vmap(self.env.reset))
        self._step = jax.jit(jax.vmap(self.env.step))
        self._state = None
        self._seed = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if options:
            raise ValueError(f"Unknown reset option {sorted(options)[0]!r}; the MJX vector env "
                             f"takes none.")
        if seed is not None:
            self._seed = seed
        keys = jax.random.split(jax.random.PRNGKey(self._seed), self.num_envs)
        self._seed += 1
        self._state = self._reset(keys)
        return np.asarray(self._state.obs), self._info(self._state)

    def step(self, actions):
        a = np.asarray(actions, np.float32)
        if a.shape != (self.num_envs, self.env.action_size):
            raise ValueError(f"Actions have shape {a.shape}; expected ({self.num_envs}, "
                             f"{self.env.action_size}).")
        self._state = s = self._step(self._state, jnp.asarray(a))
        overflow = np.asarray(s.info["overflow"])
        if overflow.any():
            raise self.env.overflow_error(overflow)
        done = np.asarray(s.done) > 0
        truncated = done & (np.asarray(s.info["truncation"]) > 0)
        return (np.asarray(s.obs), np.asarray(s.reward), done & ~truncated, truncated,
                self._info(s))

    def _info(self, s) -> dict:
        return {"clip": np.asarray(self.env.clip_ids)[np.asarray(s.info["slot"])],
                "t": np.asarray(s.info["t"]),
                "metrics": {k: np.asarray(v) for k, v in s.metrics.items()}}
