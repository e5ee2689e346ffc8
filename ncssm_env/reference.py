"""Reference clips in memory: a clip's physics states and kinematics, clips stacked for
batched envs, and putting a body at a clip's frame.

Shared by the env (:mod:`ncssm_env.gym_env`), its batched forms (:mod:`ncssm_env.vector`,
:mod:`ncssm_env.mjx_env`) and the built-in clips (:mod:`ncssm_env.synthetic`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import mujoco
import numpy as np

from ncssm_env import task as _task
from ncssm_env.body import BodyIndex


@dataclass(frozen=True)
class Clip:
    """One reference clip in memory: the physics state of each frame and its kinematics.

    qpos (T, nq), qvel (T, nv), act (T, na), ctrl (T, nu); ``ref`` is a :class:`task.Kin`
    whose fields have a leading T.
    """

    qpos: np.ndarray
    qvel: np.ndarray
    act: np.ndarray
    ctrl: np.ndarray
    ref: _task.Kin

    @property
    def length(self) -> int:
        return self.qpos.shape[0]


@dataclass(frozen=True)
class ClipStack:
    """Clips stacked and edge-padded to the longest one (T frames) for batched envs.

    lengths (n,); qpos (n, T, nq), qvel (n, T, nv), act (n, T, na), ctrl (n, T, nu); ``ref``
    a :class:`task.Kin` whose fields have leading (n, T).
    """

    lengths: np.ndarray
    qpos: np.ndarray
    qvel: np.ndarray
    act: np.ndarray
    ctrl: np.ndarray
    ref: _task.Kin


def stack_clips(clips: Sequence[Clip]) -> ClipStack:
    """One :class:`ClipStack` of ``clips``; a clip shorter than the longest repeats its last
    frame (the envs never step past a clip's own end)."""
    T = max(c.length for c in clips)

    def stack(arrays):
        return np.stack([np.concatenate([a, np.repeat(a[-1:], T - len(a), 0)]) for a in arrays])

    return ClipStack(np.array([c.length for c in clips]),
                     *(stack([getattr(c, f) for c in clips]) for f in ("qpos", "qvel", "act", "ctrl")),
                     _task.Kin(*(stack([getattr(c.ref, f) for c in clips]) for f in _task.Kin._fields)))


def clip_kinematics(model: mujoco.MjModel, idx: BodyIndex, qpos: np.ndarray, qvel: np.ndarray):
    """Forward kinematics of every frame: a :class:`~ncssm_env.task.Kin` with fields (T, ...)."""
    data = mujoco.MjData(model)
    T = qpos.shape[0]
    xpos = np.empty((T, model.nbody, 3))
    xmat = np.empty((T, model.nbody, 9))
    for t in range(T):
        data.qpos[:] = qpos[t]
        mujoco.mj_kinematics(model, data)
        xpos[t], xmat[t] = data.xpos, data.xmat
    # contiguous fields: indexing frames of a strided view would copy the whole clip
    return _task.Kin(*map(np.ascontiguousarray, _task.kin(np, idx, qpos, qvel, xpos, xmat)))


def finite_difference_qvel(model: mujoco.MjModel, qpos: np.ndarray, dt: float) -> np.ndarray:
    """Velocities (T, nv) from positions (T, nq): backward differences, forward at frame 0."""
    qvel = np.zeros((qpos.shape[0], model.nv))
    for t in range(1, qpos.shape[0]):
        mujoco.mj_differentiatePos(model, qvel[t], dt, qpos[t - 1], qpos[t])
    if qpos.shape[0] > 1:
        qvel[0] = qvel[1]
    return qvel


def holding_ctrl(model: mujoco.MjModel, qpos: np.ndarray) -> np.ndarray:
    """Controls (T, nu) that hold each frame's pose: for every actuator with an affine bias
    (the rodent's position servos, force = gain·ctrl + b0 + b1·length + b2·velocity), the
    control at which its force at rest is zero, ``-(b0 + b1·length) / gain``, clipped to its
    range; 0 for the others. Reference-only clips (qpos without ctrl) start from it."""
    data = mujoco.MjData(model)
    ctrl = np.zeros((qpos.shape[0], model.nu))
    gain, bias = model.actuator_gainprm[:, 0], model.actuator_biasprm[:, :2]
    servo = (model.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE) & (gain != 0)
    lo, hi = model.actuator_ctrlrange.T
    for t in range(qpos.shape[0]):
        data.qpos[:] = qpos[t]
        mujoco.mj_fwdPosition(model, data)  # kinematics and transmission: actuator_length
        target = -(bias[:, 0] + bias[:, 1] * data.actuator_length) / np.where(servo, gain, 1.0)
        ctrl[t] = np.where(servo, target, 0.0)
    limited = model.actuator_ctrllimited.astype(bool)
    return np.where(limited, np.clip(ctrl, lo, hi), ctrl)


def start_state(model: mujoco.MjModel, data: mujoco.MjData, clip: Clip, t: int, rng,
                reset_noise: float, noise: np.ndarray | None = None) -> None:
    """Put ``data`` at frame ``t`` of ``clip``: its qpos (hinge angles jittered uniformly by
    ``reset_noise`` from ``rng``, or offset by the given ``noise`` (nq - 7,)), qvel, act and
    ctrl, then the kinematics."""
    mujoco.mj_resetData(model, data)
    data.qpos[:] = clip.qpos[t]
    data.qpos[7:] += rng.uniform(-reset_noise, reset_noise, model.nq - 7) if noise is None \
        else noise
    data.qvel[:] = clip.qvel[t]
    data.act[:] = clip.act[t]
    data.ctrl[:] = clip.ctrl[t]
    mujoco.mj_kinematics(model, data)
