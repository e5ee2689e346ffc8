"""The tracking task's math, written once against an array namespace ``xp``.

Every function takes ``xp`` (``numpy`` for the MuJoCo C env, ``jax.numpy`` for the MJX env) and
broadcasts over any leading batch shape ``...``: one env, ``N`` envs, or ``T`` frames of a clip.
Nothing here touches ``MjData``; the callers gather a :class:`Kin` from their own state.

Quaternions are ``(w, x, y, z)``, MuJoCo's order.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np

from ncssm_env.body import BodyIndex

REWARD_TERMS = ("root_pos", "root_rot", "joints", "end_effectors")
COSTS = ("ctrl_cost", "smooth_cost")
ERRORS = ("root_pos", "root_rot", "joints", "end_effectors", "bodies")
TERMINATIONS = ("too_far", "bad_pose", "bad_orientation", "bad_height", "nan")
# The one metric schema of every env (MuJoCo C, its vector form, MJX): each error, reward term
# and cost, and each termination cause as 0/1.
METRICS = (*(f"err_{k}" for k in ERRORS), *(f"rew_{k}" for k in (*REWARD_TERMS, *COSTS)),
           *(f"term_{k}" for k in TERMINATIONS))


@dataclass(frozen=True)
class TaskConfig:
    """Weights, scales and thresholds of the tracking task, with their defaults.

    Reward: ``sum_i w_i * exp(-(err_i / scale_i)**2)`` over :data:`REWARD_TERMS`, minus
    ``ctrl_cost * mean(a**2)`` and ``smooth_cost * mean((a - a_prev)**2)``. A body exactly on
    its reference scores ``sum_i w_i`` (4.0 by default) less the control costs.

    Errors: ``root_pos`` is the root distance (m); ``root_rot`` the angle between root
    orientations (rad); ``joints`` the RMS joint-angle error (rad); ``end_effectors`` and
    ``bodies`` the RMS distance of those bodies (m).

    Termination: ``root_pos > max_root_pos`` (too_far), ``joints > max_joints`` (bad_pose),
    ``root_rot > max_root_rot`` (bad_orientation), torso height outside ``healthy_z``
    (bad_height; ``None`` uses the body's own range) or any non-finite state (nan).

    ``reset_noise`` is the half-width (rad) of the uniform noise added to the joint angles of
    the reference frame an episode starts from.
    """

    w_root_pos: float = 1.0
    w_root_rot: float = 1.0
    w_joints: float = 1.0
    w_end_effectors: float = 1.0
    scale_root_pos: float = 0.03
    scale_root_rot: float = 0.5
    scale_joints: float = 0.2
    scale_end_effectors: float = 0.02
    ctrl_cost: float = 0.01
    smooth_cost: float = 0.01
    max_root_pos: float = 0.1
    max_root_rot: float = 1.2
    max_joints: float = 0.6
    healthy_z: tuple[float, float] | None = None
    reset_noise: float = 0.01

    @functools.cached_property
    def inv_scales(self) -> np.ndarray:
        """``1 / scale_i`` over :data:`REWARD_TERMS`, (4,)."""
        return 1.0 / np.array([getattr(self, f"scale_{n}") for n in REWARD_TERMS])

    @functools.cached_property
    def weights(self) -> np.ndarray:
        """``w_i`` over :data:`REWARD_TERMS`, (4,)."""
        return np.array([getattr(self, f"w_{n}") for n in REWARD_TERMS])

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "TaskConfig":
        """A config from a mapping of overrides; an unknown key is an error naming it."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown task config key {unknown[0]!r}; expected one of {sorted(known)}."
            )
        if values.get("healthy_z") is not None:
            values["healthy_z"] = tuple(float(v) for v in values["healthy_z"])
        return cls(**values)


class Kin(NamedTuple):
    """The kinematic quantities the task reads, each with leading shape ``...``.

    points (..., P, 3): world positions of the tracked points, ``P = 1 + ne + nb``: the root,
    then the end effectors, then the other tracked bodies (see :class:`BodyIndex`);
    root_quat (..., 4) and root_mat (..., 3, 3): the root's orientation (body to world);
    joints (..., nj) and joint_vel (..., nj): the hinge angles and velocities (no free root);
    torso_z (...): the torso height; torso_up (..., 3): the torso's z axis in world coordinates.
    """

    points: Any
    root_quat: Any
    root_mat: Any
    joints: Any
    joint_vel: Any
    torso_z: Any
    torso_up: Any

    @property
    def root_pos(self):
        return self.points[..., 0, :]


def kin(xp, idx: BodyIndex, qpos, qvel, xpos, xmat) -> Kin:
    """Gather a :class:`Kin` from ``qpos (..., nq)``, ``qvel (..., nv)``, ``xpos (..., nbody, 3)``
    and ``xmat (..., nbody, 9)`` of a body with a free root (qpos[0:7], qvel[0:6])."""
    return Kin(
        points=xpos[..., idx.points, :],
        root_quat=qpos[..., 3:7],
        root_mat=xmat[..., idx.root, :].reshape(xmat.shape[:-2] + (3, 3)),
        joints=qpos[..., 7:],
        joint_vel=qvel[..., 6:],
        torso_z=xpos[..., idx.torso, 2],
        torso_up=xmat[..., idx.torso, 2::3],  # the third column of the row-major matrix
    )


def take(xp, ref: Kin, t) -> Kin:
    """Frames ``t`` (an int or an int array of shape S) of a clip's ``ref`` (fields (T, ...))."""
    return Kin(*(a[t] for a in ref))


def window(xp, T: int, t, K: int):
    """Indices of the K reference frames after ``t`` (shape ``t.shape + (K,)``), held at T-1."""
    return xp.minimum(xp.asarray(t)[..., None] + 1 + xp.arange(K), T - 1)


# --- quaternions ---------------------------------------------------------------------------


def quat_conj(xp, q):
    """Conjugate (the inverse, for unit quaternions) of ``q (..., 4)``."""
    return xp.concatenate([q[..., :1], -q[..., 1:]], axis=-1)


def _hamilton() -> np.ndarray:
    """``H (16, 4)`` with ``a * b == (a[:, None] * b[None, :]).reshape(16) @ H``."""
    H = np.zeros((4, 4, 4))
    # rows: (i, j) of a_i * b_j; columns: w, x, y, z of the product
    for i, j, k, sign in [
        (0, 0, 0, 1), (1, 1, 0, -1), (2, 2, 0, -1), (3, 3, 0, -1),
        (0, 1, 1, 1), (1, 0, 1, 1), (2, 3, 1, 1), (3, 2, 1, -1),
        (0, 2, 2, 1), (1, 3, 2, -1), (2, 0, 2, 1), (3, 1, 2, 1),
        (0, 3, 3, 1), (1, 2, 3, 1), (2, 1, 3, -1), (3, 0, 3, 1),
    ]:
        H[i, j, k] = sign
    return H.reshape(16, 4)


_H = _hamilton()


def quat_mul(xp, a, b):
    """Hamilton product ``a * b`` of quaternions (..., 4), as one outer product and a matmul."""
    outer = a[..., :, None] * b[..., None, :]
    return outer.reshape(outer.shape[:-2] + (16,)) @ _H


# --- observation ---------------------------------------------------------------------------

# The order of the observation's parts; ``obs_layout`` and ``observation`` both follow it.
# The three ``ref_*`` position parts come from one array (P, K, 3): point-major, then frame.
REF_PARTS = ("ref_root_pos", "ref_end_effectors", "ref_bodies", "ref_root_quat", "ref_joints")
PROPRIO_PARTS = (
    "qpos_local", "qvel_local", "torso_height", "torso_up", "end_effectors", "prev_action",
)


def part_dims(K: int, idx: BodyIndex) -> dict[str, int]:
    """The width of each observation part for K reference frames and the body ``idx``."""
    nj, ne, nb = idx.nq - 7, idx.n_end_effectors, idx.n_bodies
    return {
        "ref_root_pos": 3 * K,
        "ref_end_effectors": 3 * ne * K,
        "ref_bodies": 3 * nb * K,
        "ref_root_quat": 4 * K,
        "ref_joints": nj * K,
        "qpos_local": nj,
        "qvel_local": nj,
        "torso_height": 1,
        "torso_up": 3,
        "end_effectors": 3 * ne,
        "prev_action": idx.nu,
    }


def obs_layout(K: int, idx: BodyIndex) -> dict[str, tuple[int, int]]:
    """Named ``[start, stop)`` slices of the observation; ``"ref"`` spans every ``ref_*`` part."""
    layout, start = {}, 0
    for name, width in part_dims(K, idx).items():
        layout[name] = (start, start + width)
        start += width
    layout["ref"] = (0, layout[REF_PARTS[-1]][1])
    return layout


def observation(xp, cur: Kin, ref: Kin, prev_action, n_end_effectors: int):
    """The observation ``(..., D_obs)`` of state ``cur`` (fields (..., d)) tracking the K frames
    ``ref`` (fields (..., K, d)), given the previous action ``(..., nu)``.

    Reference features are errors in the body's own frame: root position, end-effector and
    body positions (point-major: (P, K, 3)), relative root quaternion (K, 4) and joint angles
    (K, nj). Proprioception is the joint angles and velocities, the torso height and
    up-vector, the end effectors relative to the root in the body frame, and the previous
    action.
    """
    batch = cur.root_mat.shape[:-2]
    R = cur.root_mat
    K = ref.points.shape[-3]
    # (..., K, P, 3) world offsets -> body frame -> point-major (..., P, K, 3)
    offsets = (ref.points - cur.points[..., None, :, :]).reshape(batch + (-1, 3)) @ R
    offsets = xp.swapaxes(offsets.reshape(batch + (K, -1, 3)), -2, -3)
    ee = cur.points[..., 1:1 + n_end_effectors, :] - cur.points[..., :1, :]
    parts = [
        offsets,
        quat_mul(xp, quat_conj(xp, cur.root_quat)[..., None, :], ref.root_quat),
        ref.joints - cur.joints[..., None, :],
        cur.joints,
        cur.joint_vel,
        cur.torso_z[..., None],
        cur.torso_up,
        ee @ R,
        prev_action,
    ]
    return xp.concatenate([p.reshape(batch + (-1,)) for p in parts], axis=-1)


# --- reward and termination ----------------------------------------------------------------


def errors(xp, cur: Kin, ref: Kin, n_end_effectors: int) -> dict:
    """Tracking errors of ``cur`` against one reference frame ``ref`` (same shapes), each (...)."""
    # ||R1 - R2||_F = 2 sqrt(2) sin(theta / 2): stable near theta = 0, unlike the trace.
    frob = xp.sqrt(((cur.root_mat - ref.root_mat) ** 2).sum(axis=(-2, -1)))
    d2 = ((ref.points - cur.points) ** 2).sum(axis=-1)  # (..., P) squared distances
    n = 1 + n_end_effectors
    return {
        "root_pos": xp.sqrt(d2[..., 0]),
        "root_rot": 2.0 * xp.arcsin(xp.minimum(frob * (0.5 / np.sqrt(2.0)), 1.0)),
        "joints": xp.sqrt(_mean(xp, (ref.joints - cur.joints) ** 2)),
        "end_effectors": xp.sqrt(_mean(xp, d2[..., 1:n])),
        "bodies": xp.sqrt(_mean(xp, d2[..., n:])),
    }


def _mean(xp, a):
    """Mean over the last axis; ``sum / n`` is several times faster than numpy's ``mean``."""
    return a.sum(axis=-1) * (1.0 / a.shape[-1])


def reward(xp, cfg: TaskConfig, err: dict, action, prev_action):
    """``(reward (...), terms)``; ``terms`` holds each exp term and the two costs, each (...)."""
    e = xp.stack([err[name] for name in REWARD_TERMS], axis=-1) * cfg.inv_scales
    exp_terms = xp.exp(-(e**2))  # (..., 4)
    terms = {name: exp_terms[..., i] for i, name in enumerate(REWARD_TERMS)}
    ctrl, smooth = COSTS
    terms[ctrl] = cfg.ctrl_cost * _mean(xp, action**2)
    terms[smooth] = cfg.smooth_cost * _mean(xp, (action - prev_action) ** 2)
    return exp_terms @ cfg.weights - terms[ctrl] - terms[smooth], terms


def termination(xp, cfg: TaskConfig, err: dict, cur: Kin, healthy_z, finite):
    """``(terminated (...), causes)``: each cause in :data:`TERMINATIONS` as a bool (...).

    ``finite`` (...) says whether the physics state is free of NaN and Inf; a non-finite
    state terminates whatever its errors say.
    """
    lo, hi = cfg.healthy_z if cfg.healthy_z is not None else healthy_z
    finite = xp.asarray(finite, dtype=bool)
    nan = ~finite
    causes = {
        "too_far": (err["root_pos"] > cfg.max_root_pos) & finite,
        "bad_pose": (err["joints"] > cfg.max_joints) & finite,
        "bad_orientation": (err["root_rot"] > cfg.max_root_rot) & finite,
        "bad_height": ((cur.torso_z < lo) | (cur.torso_z > hi)) & finite,
        "nan": nan,
    }
    terminated = causes["nan"]
    for name in TERMINATIONS[:-1]:
        terminated = terminated | causes[name]
    return terminated, causes


def metrics(xp, err: dict, terms: dict, causes: dict) -> dict:
    """The :data:`METRICS` of one step from :func:`errors`, :func:`reward`'s terms and
    :func:`termination`'s causes: ``err_*``, ``rew_*`` and ``term_*`` (0.0 or 1.0), each (...)."""
    return {**{f"err_{k}": err[k] for k in ERRORS},
            **{f"rew_{k}": terms[k] for k in (*REWARD_TERMS, *COSTS)},
            **{f"term_{k}": xp.asarray(causes[k], dtype=xp.float32) for k in TERMINATIONS}}


def cause_code(xp, metrics: dict):
    """1 + the index in :data:`TERMINATIONS` of the first cause set in ``metrics``, 0 for none."""
    code = xp.zeros(xp.shape(metrics[f"term_{TERMINATIONS[0]}"]), dtype=xp.int32)
    for k in reversed(range(len(TERMINATIONS))):  # the first cause set wins
        code = xp.where(metrics[f"term_{TERMINATIONS[k]}"] > 0, k + 1, code)
    return code
