"""``TrackVectorEnv``: N copies of the tracking task stepped together on the CPU.

MuJoCo C steps each env's own ``MjData`` in a thread pool (``mj_step`` releases the GIL, so
the threads run in parallel); the task math is :mod:`ncssm_env.task`'s numpy code, once over
all envs, with the reference clips stacked into padded ``(n_clips, T_max, ...)`` arrays.

Autoreset follows Gymnasium's ``NEXT_STEP`` mode: the step after an episode ends resets that
env (its action is ignored) and returns the first observation of a new episode on a freshly
drawn clip and start frame, with reward 0 and neither terminated nor truncated.

Reached through ``gymnasium.make_vec("NCSSM-Track-v0", num_envs=N, backend="cpu")``.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ncssm_data.errors import check_count
from ncssm_env import MAX_EPISODE_STEPS
from ncssm_env import task as _task
from ncssm_env.gym_env import BACKENDS, TrackEnv
from ncssm_env.reference import stack_clips, start_state

MJX_ONLY = ("impl", "nconmax", "njmax")  # make_vec settings only the MJX backend takes


class TrackVectorEnv(VectorEnv):
    """``num_envs`` tracking envs of one body and clip set; see the module docstring.

    ``kwargs`` are :class:`~ncssm_env.gym_env.TrackEnv`'s (body, clips, task, physics);
    ``max_episode_steps`` truncates episodes (as ``gymnasium.make`` does the single env's) and
    ``n_threads`` sets the physics threads (default ``min(num_envs, os.cpu_count())``).

    ``reset(options=...)`` takes ``clip`` and ``start`` (an int, or one per env), ``noise``
    (the joint offsets of the start states, (nq - 7,) or (N, nq - 7), instead of drawn ones)
    and ``reset_mask`` (bool (N,): reset only these envs). ``step(actions (N, nu))`` returns
    ``obs (N, D_obs)`` float32, ``rewards (N,)``, ``terminated (N,)``, ``truncated (N,)`` and
    ``info`` with ``clip``, ``t`` and ``metrics`` (the schema :data:`ncssm_env.task.METRICS`),
    each an (N,) array (``reset``'s info has the same keys, its metrics zero). A non-finite
    action terminates its env (cause ``nan``) without stepping its physics, as in the single
    env.

    ``render_mode="rgb_array"`` (with ``width`` and ``height``, as the single env): ``render()``
    returns one frame per env from its tracking camera, Gymnasium's convention for vector envs,
    which its vector ``RecordVideo`` reads (tiled in a grid, or env 0 alone with
    ``record_first_only=True``).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": ["rgb_array"],
                "render_fps": 50}

    def __init__(self, num_envs: int, max_episode_steps: int | None = MAX_EPISODE_STEPS,
                 n_threads: int | None = None, **kwargs):
        self.num_envs = check_count("num_envs", num_envs)
        self._ignored_options: set[str] = set()  # unknown reset options warned about once
        self.single = TrackEnv(**kwargs)
        s = self.single
        self.model, self.idx, self.cfg, self.K = s.model, s.idx, s.cfg, s.K
        self.n_substeps, self.healthy_z = s.n_substeps, s.healthy_z
        self.max_episode_steps = max_episode_steps
        self.render_mode = s.render_mode
        self.metadata = {**self.metadata, "render_fps": s.metadata["render_fps"]}
        self._renderer: mujoco.Renderer | None = None
        self.obs_layout = s.obs_layout
        self.single_observation_space = s.observation_space
        self.single_action_space = s.action_space
        self.observation_space = batch_space(s.observation_space, self.num_envs)
        self.action_space = batch_space(s.action_space, self.num_envs)
        self.datas = [mujoco.MjData(self.model) for _ in range(self.num_envs)]

        # Every selectable clip, stacked and edge-padded to the longest clip.
        self.clip_ids = s.clip_ids
        self._clips = [s.clip(int(i)) for i in self.clip_ids]
        self.clips = stack_clips(self._clips)
        self.lengths, self.ref = self.clips.lengths, self.clips.ref

        n = self.num_envs
        self.slot = np.zeros(n, np.int64)  # index into clip_ids
        self.t = np.zeros(n, np.int64)
        self.steps = np.zeros(n, np.int64)
        self.prev_action = np.zeros((n, self.model.nu))
        self._autoreset = np.zeros(n, bool)
        self._obs_buf = None
        self.n_threads = min(n, n_threads or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None

    # --- gymnasium API ------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        options = dict(options or {})
        for key in sorted(set(options) - {"clip", "start", "noise", "reset_mask"}
                          - self._ignored_options):
            # Wrappers pass their own options, as for the single env: one warning per key.
            warnings.warn(f"TrackVectorEnv ignores the unknown reset option {key!r}; it reads "
                          f"'clip', 'start', 'noise' and 'reset_mask'.", stacklevel=2)
            self._ignored_options.add(key)
        mask = np.ones(self.num_envs, bool) if options.get("reset_mask") is None else \
            np.asarray(options["reset_mask"], bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}.")
        noise = options.get("noise")
        if noise is not None:
            noise = np.asarray(noise, np.float64)
            want = (self.num_envs, self.model.nq - 7)
            try:
                noise = np.broadcast_to(noise, want)
            except ValueError:
                raise ValueError(f"Reset option noise has shape {noise.shape}; expected "
                                 f"{want[1:]} or {want}.") from None
        self._reset_envs(np.flatnonzero(mask), options.get("clip"), options.get("start"), noise)
        self._autoreset[mask] = False
        obs = self._observe(self._kin(), np.ones(self.num_envs, bool))
        # step's keys, as the single env's reset gives them: metrics zero, no termination
        return obs, {"clip": self.clip_ids[self.slot].copy(), "t": self.t.copy(),
                     "metrics": {k: np.zeros(self.num_envs) for k in _task.METRICS}}

    def step(self, actions):
        a = np.asarray(actions, dtype=np.float64)
        if a.shape != (self.num_envs, self.model.nu):
            raise ValueError(f"Actions have shape {a.shape}; expected ({self.num_envs}, "
                             f"{self.model.nu}) for {self.num_envs} envs of body {self.single.body!r}.")
        reset = self._autoreset.copy()
        finite_action = np.isfinite(a).all(axis=1)
        stepping = ~reset & finite_action
        for i in np.flatnonzero(stepping):
            self.datas[i].ctrl[:] = a[i]
        self._physics(np.flatnonzero(stepping))
        self.t[stepping] += 1
        self.steps[stepping] += 1
        self._reset_envs(np.flatnonzero(reset), None, None, None)

        cur = self._kin()
        ref_t = _task.Kin(*(f[self.slot, self.t] for f in self.ref))
        err = _task.errors(np, cur, ref_t, self.idx.n_end_effectors)
        finite = (finite_action | reset) & np.isfinite(cur.joints).all(1) & \
            np.isfinite(cur.joint_vel).all(1) & np.isfinite(cur.points).all((1, 2))
        rew, terms = _task.reward(np, self.cfg, err, a, self.prev_action)
        terminated, causes = _task.termination(np, self.cfg, err, cur, self.healthy_z, finite)
        truncated = self.t >= self.lengths[self.slot] - 1
        if self.max_episode_steps is not None:
            truncated |= self.steps >= self.max_episode_steps
        rew = np.where(finite & ~reset, rew, 0.0)
        terminated &= ~reset
        truncated &= ~reset
        upd = stepping
        self.prev_action[upd] = a[upd]
        obs = self._observe(cur, finite)
        self._autoreset = terminated | truncated
        causes = {k: np.asarray(v) & ~reset for k, v in causes.items()}
        info = {"clip": self.clip_ids[self.slot].copy(), "t": self.t.copy(),
                "metrics": _task.metrics(np, err, terms, causes)}
        return obs, rew, terminated, truncated, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One ``(height, width, 3)`` uint8 frame per env, or None without a render_mode."""
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.single.height, self.single.width)
        frames = []
        for d in self.datas:
            self._renderer.update_scene(d, camera="track")
            frames.append(self._renderer.render())
        return tuple(frames)

    def close_extras(self, **kwargs):
        if self._pool is not None:
            self._pool.shutdown()
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.single.close()

    # --- helpers ------------------------------------------------------------------------

    def _physics(self, envs: np.ndarray) -> None:
        """``n_substeps`` of ``mj_step`` then ``mj_kinematics`` for ``envs``: one task per
        thread, envs dealt out in turn (a task per env cost more in pool overhead)."""
        m, datas, n = self.model, self.datas, self.n_substeps

        def run(chunk):
            for i in chunk:
                mujoco.mj_step(m, datas[i], nstep=n)
                mujoco.mj_kinematics(m, datas[i])

        if self._pool is None or envs.size < 2:
            run(envs)
        else:
            k = min(self.n_threads, envs.size)
            list(self._pool.map(run, [envs[j::k] for j in range(k)]))

    def _reset_envs(self, envs: np.ndarray, clip: Any, start: Any, noise: Any) -> None:
        rng = self.np_random
        for k, i in enumerate(envs):
            if clip is None:
                slot = int(rng.integers(len(self.clip_ids)))
            else:
                cid = int(np.broadcast_to(clip, (self.num_envs,))[i])
                hits = np.flatnonzero(self.clip_ids == cid)
                if hits.size == 0:
                    raise ValueError(f"Reset option clip={cid} is not among this env's clips "
                                     f"{self.clip_ids.tolist()}.")
                slot = int(hits[0])
            c, T = self._clips[slot], int(self.lengths[slot])
            t = int(rng.integers(0, T - 1)) if start is None else \
                int(np.broadcast_to(start, (self.num_envs,))[i])
            if not 0 <= t <= T - 2:
                raise ValueError(f"Reset option start={t} must be in [0, {T - 2}] for clip "
                                 f"{self.clip_ids[slot]} of length {T}.")
            start_state(self.model, self.datas[i], c, t, rng, self.cfg.reset_noise,
                        None if noise is None else noise[i])
            mujoco.mj_forward(self.model, self.datas[i])  # all a render needs (see TrackEnv)
            self.slot[i], self.t[i], self.steps[i] = slot, t, 0
            self.prev_action[i] = c.ctrl[t]

    def _kin(self) -> _task.Kin:
        ds = self.datas
        return _task.kin(np, self.idx, np.stack([d.qpos for d in ds]), np.stack([d.qvel for d in ds]),
                         np.stack([d.xpos for d in ds]), np.stack([d.xmat for d in ds]))

    def _observe(self, cur: _task.Kin, finite: np.ndarray) -> np.ndarray:
        # The K frames after t, held at each env's own clip end (task.window, per-env T).
        idx = np.minimum(self.t[:, None] + 1 + np.arange(self.K), (self.lengths[self.slot] - 1)[:, None])
        ref = _task.Kin(*(f[self.slot[:, None], idx] for f in self.ref))
        obs = _task.observation(np, cur, ref, self.prev_action, self.idx.n_end_effectors)
        return np.where(finite[:, None], obs, 0.0).astype(np.float32)


def make_vector_env(num_envs: int = 1, backend: str = "cpu", **kwargs) -> VectorEnv:
    """The ``vector_entry_point`` of ``NCSSM-Track-v0``.

    ``backend``: ``"cpu"`` gives :class:`TrackVectorEnv`; ``"mjx"`` gives
    :class:`ncssm_env.mjx_env.MJXVectorEnv` (which also takes ``impl``, ``nconmax`` and
    ``njmax``); ``"auto"`` picks MJX when JAX's default device is an accelerator and the CPU
    env otherwise (compiling the rodent under MJX on a CPU takes minutes), and drops the
    settings of the backend it did not pick."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {list(BACKENDS)}.")
    mjx_only = {k: kwargs.pop(k) for k in MJX_ONLY if k in kwargs}
    auto = backend == "auto"
    if auto:
        import jax

        backend = "cpu" if jax.default_backend() == "cpu" else "mjx"
    if backend == "mjx":
        from ncssm_env.mjx_env import MJXVectorEnv

        kwargs.pop("n_threads", None)
        return MJXVectorEnv(num_envs, **mjx_only, **kwargs)
    if mjx_only and not auto:
        raise ValueError(f"{sorted(mjx_only)} are settings of backend 'mjx', not 'cpu'.")
    return TrackVectorEnv(num_envs, **kwargs)
