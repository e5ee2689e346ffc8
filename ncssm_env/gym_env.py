"""``TrackEnv``: the body tracking reference clips, as a Gymnasium env on MuJoCo C.

``gymnasium.make("NCSSM-Track-v0", body="rodent", clip_dir=None, clips=None, K=5, task=None)``
after ``import ncssm_env``. Each step applies one action for ``n_substeps`` physics steps and
advances the reference by one clip frame; the task math is :mod:`ncssm_env.task`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import gymnasium as gym
import mujoco
from gymnasium.envs.registration import EnvSpec
import numpy as np

from ncssm_data import ClipError, ClipStore
from ncssm_data.errors import check_count
from ncssm_env import task as _task
from ncssm_env.body import body_def, body_index, build_model
from ncssm_env.reference import (Clip, clip_kinematics, finite_difference_qvel, holding_ctrl,
                                  start_state)

BACKENDS = ("cpu", "mjx", "auto")  # make_vec's vector envs (ncssm_env.vector.make_vector_env)


class TrackEnv(gym.Env):
    """Track a reference clip with a MuJoCo body.

    Args:
        body: ``"rodent"`` or ``"test"`` (see :mod:`ncssm_env.body`).
        clip_dir: a folder of ``clip_<i>.h5`` files with ``/qpos``; ``None`` uses the built-in
            clips of ``body``, generated on first use (:func:`ncssm_env.synthetic.builtin_clips`).
            Reference-only clips (``/qpos`` without ``/ctrl``) start each episode from the
            controls that hold the frame's pose (:func:`ncssm_env.reference.holding_ctrl`);
            ``has_ctrl`` says whether the clips carry recorded controls.
        clips: indices of the clips to draw episodes from (default: all).
        K: number of future reference frames in the observation.
        task: a :class:`task.TaskConfig` or a mapping of its fields.
        contacts, timestep, n_substeps: physics (2 ms x 10 substeps = 50 Hz control).
        solver, iterations, ls_iterations: the constraint solver (None: the arena's; see
            :func:`ncssm_env.body.build_model`).
        render_mode: ``None`` or ``"rgb_array"``; ``width``/``height`` size the frame.
        backend: accepted and ignored, so that ``gymnasium.make_vec(..., backend=...)`` works
            in its ``"sync"`` and ``"async"`` modes, which pass make_vec's kwargs on to every
            env; ``backend`` chooses the project's own vector env (the default mode, see
            :func:`ncssm_env.vector.make_vector_env`), and each env here is MuJoCo C.

    Observation: float32 ``(D_obs,)`` named by ``obs_layout``. Action: float32 ``(nu,)`` in the
    actuators' ctrl ranges. ``info`` carries the clip, the frame and ``metrics``: each error
    (``err_*``), reward term (``rew_*``) and termination cause (``term_*``, 0 or 1), the
    schema :data:`ncssm_env.task.METRICS` that every env shares (at reset: zeros, no
    termination, so that reset's and step's ``info`` have the same keys).

    ``spec`` (set by ``gymnasium.make``) keeps its kwargs as JSON types (:func:`json_kwargs`),
    so that ``spec.to_json()`` works (Minari stores it).

    The env pickles and deep-copies mid-episode: the copy rebuilds its model and opens the clip
    files again, then steps on exactly as the original (see :meth:`__getstate__`).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}
    RESET_OPTIONS = ("clip", "start", "noise")
    _spec: EnvSpec | None = None

    def __init__(
        self,
        body: str = "rodent",
        clip_dir: str | Path | None = None,
        clips: Sequence[int] | None = None,
        K: int = 5,
        task: _task.TaskConfig | Mapping[str, Any] | None = None,
        contacts: str = "body",
        timestep: float = 0.002,
        n_substeps: int = 10,
        solver: str | None = None,
        iterations: int | None = None,
        ls_iterations: int | None = None,
        render_mode: str | None = None,
        width: int = 320,
        height: int = 240,
        backend: str | None = None,
    ):
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"Unknown backend {backend!r}; expected one of {list(BACKENDS)}.")
        K, n_substeps = check_count("K", K), check_count("n_substeps", n_substeps)
        init = dict(body=body, K=K, contacts=contacts, timestep=timestep, n_substeps=n_substeps,
                    solver=solver, iterations=iterations, ls_iterations=ls_iterations,
                    render_mode=render_mode, width=width, height=height)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"Unknown render_mode {render_mode!r}; expected None or 'rgb_array'."
            )
        self.body = body
        self.bdef = body_def(body)
        self.cfg = task if isinstance(task, _task.TaskConfig) else _task.TaskConfig.from_dict(task)
        self.healthy_z = self.cfg.healthy_z or self.bdef.healthy_z
        self.K, self.n_substeps = K, n_substeps
        self.model = build_model(body, contacts=contacts, timestep=timestep, solver=solver,
                                 iterations=iterations, ls_iterations=ls_iterations)
        self.data = mujoco.MjData(self.model)
        self.idx = body_index(self.model, body)
        self.control_dt = timestep * n_substeps
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.control_dt)}

        from ncssm_env.synthetic import clips_or_builtin

        self.clip_dir = clips_or_builtin(clip_dir, body, timestep=timestep, n_substeps=n_substeps)
        self.store = ClipStore(self.clip_dir, min_length=K + 1)
        self._check_store()
        self.clip_ids = self._select(clips)
        self.has_ctrl = self.store.has("ctrl")
        self._clips: dict[int, Clip] = {}

        self.obs_layout = _task.obs_layout(K, self.idx)
        obs_dim = max(stop for _, stop in self.obs_layout.values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        lo, hi = self.model.actuator_ctrlrange.T.astype(np.float32)
        self.action_space = gym.spaces.Box(lo, hi, dtype=np.float32)

        self.render_mode, self.width, self.height = render_mode, width, height
        self._renderer: mujoco.Renderer | None = None
        self._clip: Clip | None = None
        self._clip_id = -1
        self._t = 0
        self._prev_action = np.zeros(self.model.nu)
        self._ignored_options: set[str] = set()
        # What __setstate__ rebuilds the env from: the clips found, not a default looked up again.
        self._init = {**init, "clip_dir": self.clip_dir, "clips": self.clip_ids, "task": self.cfg}

    @property
    def spec(self) -> EnvSpec | None:
        """The spec ``gymnasium.make`` made the env from, its kwargs as JSON types."""
        return self._spec

    @spec.setter
    def spec(self, spec: EnvSpec | None) -> None:
        self._spec = None if spec is None else \
            dataclasses.replace(spec, kwargs=json_kwargs(spec.kwargs))

    # --- pickle and deepcopy -------------------------------------------------------------

    _STATE = mujoco.mjtState.mjSTATE_INTEGRATION  # all that mj_step reads, warm start included

    def __getstate__(self) -> dict:
        """What a pickle or ``copy.deepcopy`` keeps: the constructor's arguments (with the clip
        folder and clip ids resolved) and the episode: MuJoCo's integration state, the random
        generator, the clip, frame and previous action. The MjModel, MjData, the clip files'
        HDF5 handles and the renderer are rebuilt by :meth:`__setstate__`, never pickled."""
        physics = np.empty(mujoco.mj_stateSize(self.model, self._STATE))
        mujoco.mj_getState(self.model, self.data, physics, self._STATE)
        return {"init": self._init, "physics": physics, "np_random": self._np_random,
                "np_random_seed": self._np_random_seed, "clip_id": self._clip_id, "t": self._t,
                "prev_action": self._prev_action.copy(), "spec": self._spec,
                "ignored_options": set(self._ignored_options)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["init"])  # the model, MjData and clip files, opened again
        mujoco.mj_setState(self.model, self.data, state["physics"], self._STATE)
        mujoco.mj_forward(self.model, self.data)  # derived quantities (a render reads them)
        self._np_random, self._np_random_seed = state["np_random"], state["np_random_seed"]
        self._clip_id, self._t = state["clip_id"], state["t"]
        self._clip = self.clip(self._clip_id) if self._clip_id >= 0 else None
        self._prev_action = state["prev_action"].copy()
        self._spec, self._ignored_options = state["spec"], set(state["ignored_options"])

    # --- clips --------------------------------------------------------------------------

    def _check_store(self) -> None:
        store, m, where = self.store, self.model, self.clip_dir
        if not store.has("qpos"):
            raise ClipError(f"Clips in {where} lack the dataset /qpos, which tracking needs.")
        for key, want in (("qpos", m.nq), ("qvel", m.nv), ("act", m.na), ("ctrl", m.nu)):
            if store.has(key) and store.dims[key] != (want,):
                raise ClipError(
                    f"Clips in {where} have /{key} of width {store.dims[key]}, but body "
                    f"{self.body!r} needs ({want},); were they made for another body?"
                )
        if store.body is not None and store.body != self.body:
            raise ClipError(f"Clips in {where} are for body {store.body!r}, not {self.body!r}.")
        if store.control_dt is not None and abs(store.control_dt - self.control_dt) > 1e-9:
            raise ClipError(
                f"Clips in {where} have control_dt {store.control_dt} s, but the env steps "
                f"{self.control_dt} s (timestep x n_substeps)."
            )

    def _select(self, clips: Sequence[int] | None) -> np.ndarray:
        n = len(self.store)
        ids = np.arange(n) if clips is None else np.asarray(list(clips), dtype=np.int64)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= n:
            raise ValueError(
                f"clips must be a non-empty list of indices in [0, {n}) for {self.clip_dir}, "
                f"got {list(clips) if clips is not None else None}."
            )
        return ids

    def clip(self, i: int) -> Clip:
        """Clip ``i`` of the store, read and its kinematics computed once."""
        if i not in self._clips:
            arrays = self.store.read_clip(i, [k for k in ("qpos", "qvel", "act", "ctrl")
                                              if self.store.has(k)])
            qpos = arrays["qpos"]
            qvel = arrays.get("qvel")
            if qvel is None:
                qvel = finite_difference_qvel(self.model, qpos, self.control_dt)
            ctrl = arrays["ctrl"].astype(np.float64) if "ctrl" in arrays else \
                holding_ctrl(self.model, qpos)
            act = arrays.get("act")
            if act is None:  # filter actuators settle on their control
                act = ctrl[:, : self.model.na] if self.model.na else np.zeros((len(qpos), 0))
            ref = clip_kinematics(self.model, self.idx, qpos, qvel)
            self._clips[i] = Clip(qpos, qvel, act, ctrl, ref)
        return self._clips[i]

    # --- gymnasium API ------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        for key in sorted(set(options) - set(self.RESET_OPTIONS) - self._ignored_options):
            # Wrappers pass their own options (Minari's DataCollector: minari_autoseed).
            warnings.warn(f"TrackEnv ignores the unknown reset option {key!r}; it reads 'clip', "
                          f"'start' and 'noise'.", stacklevel=2)
            self._ignored_options.add(key)
        noise = options.get("noise")
        if noise is not None and np.shape(noise) != (self.model.nq - 7,):
            raise ValueError(f"Reset option noise has shape {np.shape(noise)}; expected "
                             f"({self.model.nq - 7},), an offset per joint angle.")
        rng = self.np_random
        i = int(options["clip"]) if "clip" in options else int(rng.choice(self.clip_ids))
        if not 0 <= i < len(self.store):
            raise ValueError(f"Reset option clip={i} is outside [0, {len(self.store)}).")
        clip = self.clip(i)
        T = clip.length
        t = int(options["start"]) if "start" in options else int(rng.integers(0, T - 1))
        if not 0 <= t <= T - 2:
            raise ValueError(f"Reset option start={t} must be in [0, {T - 2}] for clip {i} of length {T}.")
        start_state(self.model, self.data, clip, t, rng, self.cfg.reset_noise, noise)
        # Everything derived from the start state, not just the kinematics: the tracking
        # camera (mj_camlight reads the subtree centres of mass), contacts, tendons, so that the
        # frame rendered right after reset is right. The state itself is not changed.
        mujoco.mj_forward(self.model, self.data)
        self._clip, self._clip_id, self._t = clip, i, t
        self._prev_action = clip.ctrl[t].copy()
        return self._obs(self._kin()), {"clip": i, "t": t,
                                        "metrics": {k: 0.0 for k in _task.METRICS}}

    def step(self, action):
        want = f"body {self.body!r} expects ({self.model.nu},) real numbers"
        try:
            a = np.asarray(action)
        except (ValueError, TypeError):  # a ragged list, say
            raise ValueError(f"Action of type {type(action).__name__} is not an array of "
                             f"numbers; {want}.") from None
        if a.dtype.kind not in "iuf":  # strings, objects, complex, booleans
            raise ValueError(f"Action has dtype {a.dtype}; {want}.")
        a = a.astype(np.float64)
        if a.shape != (self.model.nu,):
            raise ValueError(
                f"Action has shape {a.shape}; body {self.body!r} expects ({self.model.nu},)."
            )
        if self._clip is None:
            raise RuntimeError("Call reset() before step().")
        m, d = self.model, self.data
        finite_action = bool(np.isfinite(a).all())
        if finite_action:
            d.ctrl[:] = a
            mujoco.mj_step(m, d, nstep=self.n_substeps)
            mujoco.mj_kinematics(m, d)
            self._t += 1
        cur = self._kin()
        ref_t = _task.take(np, self._clip.ref, self._t)
        err = _task.errors(np, cur, ref_t, self.idx.n_end_effectors)
        finite = finite_action and bool(np.isfinite(d.qpos).all() and np.isfinite(d.qvel).all())
        rew, terms = _task.reward(np, self.cfg, err, a, self._prev_action)
        terminated, causes = _task.termination(np, self.cfg, err, cur, self.healthy_z, finite)
        rew = rew if finite else 0.0  # termination() already marks the "nan" cause
        truncated = self._t >= self._clip.length - 1
        self._prev_action = a if finite_action else self._prev_action
        info = {"clip": self._clip_id, "t": self._t,
                "metrics": {k: float(v) for k, v in _task.metrics(np, err, terms, causes).items()}}
        obs = self._obs(cur) if finite else np.zeros(self.observation_space.shape, np.float32)
        return obs, float(rew), bool(terminated), bool(truncated), info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
        self._renderer.update_scene(self.data, camera="track")
        return self._renderer.render()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.store.close()

    # --- helpers ------------------------------------------------------------------------

    def _kin(self) -> _task.Kin:
        d = self.data
        return _task.kin(np, self.idx, d.qpos, d.qvel, d.xpos, d.xmat)

    def _obs(self, cur: _task.Kin) -> np.ndarray:
        idx = _task.window(np, self._clip.length, self._t, self.K)
        ref = _task.take(np, self._clip.ref, idx)
        return _task.observation(
            np, cur, ref, self._prev_action, self.idx.n_end_effectors
        ).astype(np.float32)


def json_kwargs(value: Any) -> Any:
    """``value`` (an env's kwargs) with JSON types for the documented non-JSON ones: paths as
    strings, arrays and tuples as lists, numpy scalars as Python numbers, a
    :class:`task.TaskConfig` as the dict of its fields; mappings and lists recursively."""
    if isinstance(value, _task.TaskConfig):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: json_kwargs(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return json_kwargs(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [json_kwargs(v) for v in value]
    return value
