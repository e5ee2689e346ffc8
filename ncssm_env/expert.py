"""Experts: controls that track a reference clip from any state.

An expert is made for a body's model, ``make(model, **options)``, and is then a batched
function of the state and the reference::

    ctrl = expert(xp, qpos, qvel, ref_qpos, ref_ctrl, t)

``xp`` is ``numpy`` or ``jax.numpy``; ``qpos`` (N, nq) and ``qvel`` (N, nv) the state of N
envs at frame ``t`` (N,) of their clips; ``ref_qpos`` (N, W, nq) the reference frames
t + 1 … t + W (the frames ahead, the first being the one the control should reach);
``ref_ctrl`` (N, nu) the clip's recorded control that moved the reference from frame t to
t + 1 (for reference-only clips, the control that holds frame t + 1's pose). It returns
controls (N, nu), which the caller clips to the actuators' range. Built-in:

- :func:`replay`: ``ref_ctrl``, ignoring the state. The rodent's actuators are position
  servos, so replay already pulls each joint toward the reference.
- :func:`feedback`: replay plus ``gain`` times the correction that moves each servo's target
  by the actuator-length error to the next reference frame, mapped through the transmissions
  (joints and fixed tendons): ``ctrl = ref_ctrl + gain · (kp / g) · M (q_ref − q)``, with M the
  actuator moments of the hinges (constant for this model) and ``kp / g`` each servo's control
  per unit of length. ``damping`` adds ``−damping · (kp / g) · M q̇`` likewise. The defaults,
  gain 1 and damping 0.02, measured best under action noise on the rodent
  (``scripts/expert_compare.py``; the README has the table).

Plugins add experts through the ``ncssm_register_experts`` hook
(:mod:`ncssm_policies.hookspecs`), for example a policy trained with RL elsewhere.
"""

from __future__ import annotations

import mujoco
import numpy as np


def replay(model: mujoco.MjModel):
    """The recorded control, whatever the state."""

    def expert(xp, qpos, qvel, ref_qpos, ref_ctrl, t):
        return ref_ctrl

    return expert


def servo_map(model: mujoco.MjModel) -> np.ndarray:
    """(nu, nv - 6): control per radian of each hinge dof, for every position servo (affine
    bias, force = g·ctrl + b0 − kp·length − kv·velocity): ``(kp / g) · moment``; 0 rows for
    other actuators. Assumes a free root (dofs 0–5) and transmissions linear in the hinges."""
    data = mujoco.MjData(model)
    mujoco.mj_fwdPosition(model, data)
    moment = np.zeros((model.nu, model.nv))
    mujoco.mju_sparse2dense(moment, data.actuator_moment, data.moment_rownnz,
                            data.moment_rowadr, data.moment_colind)
    gain, kp = model.actuator_gainprm[:, 0], -model.actuator_biasprm[:, 1]
    servo = (model.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE) & (gain != 0) & (kp > 0)
    per_length = np.where(servo, kp / np.where(gain != 0, gain, 1.0), 0.0)
    return per_length[:, None] * moment[:, 6:]


def feedback(model: mujoco.MjModel, gain: float = 1.0, damping: float = 0.02):
    """Replay plus a correction toward the next reference pose (see the module docstring)."""
    S = servo_map(model).astype(np.float32)

    def expert(xp, qpos, qvel, ref_qpos, ref_ctrl, t):
        dq = ref_qpos[:, 0, 7:] - qpos[:, 7:]
        u = ref_ctrl + gain * dq @ xp.asarray(S).T
        if damping:
            u = u - damping * qvel[:, 6:] @ xp.asarray(S).T
        return u

    return expert


BUILTIN = {"replay": replay, "feedback": feedback}
