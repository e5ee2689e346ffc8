"""The tracking task's math, written once against an array namespace ``xp``.

Every function takes ``xp`` (``numpy`` for the MuJoCo C env, ``jax.numpy`` for the MJX env) and
broadcasts over any leading batch shape ``...``: one env, ``N`` envs, or ``T`` frames of a clip.
Nothing here touches ``MjData``; the callers gather a :class:`Kin` from their own state.

Quaternions are ``(w, x, y, z)``, MuJoCo's order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

from ncssm_env.body import BodyIndex

REWARD_TERMS = ("root_pos", "root_rot", "joints", "end_effectors")
ERRORS = ("root_pos", "root_rot", "joints", "end_effectors", "bodies")
TERMINATIONS = ("too_far", "bad_pose", "bad_orientation", "bad_height", "nan")


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

    root_pos (..., 3), root_quat (..., 4), joints (..., nj), joint_vel (..., nj),
    end_effectors (..., ne, 3), bodies (..., nb, 3) in world coordinates, torso_z (...),
    torso_up (..., 3): the torso's z axis in world coordinates.
    """

    root_pos: Any
    root_quat: Any
    joints: Any
    joint_vel: Any
    end_effectors: Any
    bodies: Any
    torso_z: Any
    torso_up: Any


def kin(xp, idx: BodyIndex, qpos, qvel, xpos, xmat) -> Kin:
    """Gather a :class:`Kin` from ``qpos (..., nq)``, ``qvel (..., nv)``, ``xpos (..., nbody, 3)``
    and ``xmat (..., nbody, 9)`` of a body with a free root (qpos[0:7], qvel[0:6])."""
    torso_mat = xmat[..., idx.torso, :]
    return Kin(
        root_pos=qpos[..., 0:3],
        root_quat=qpos[..., 3:7],
        joints=qpos[..., 7:],
        joint_vel=qvel[..., 6:],
        end_effectors=xpos[..., idx.end_effectors, :],
        bodies=xpos[..., idx.bodies, :],
        torso_z=xpos[..., idx.torso, 2],
        torso_up=xp.stack([torso_mat[..., 2], torso_mat[..., 5], torso_mat[..., 8]], axis=-1),
    )


def take(xp, ref: Kin, t) -> Kin:
    """Frames ``t`` (an int or an int array of shape S) of a clip's ``ref`` (fields (T, ...))."""
    return Kin(*(xp.take(a, t, axis=0) for a in ref))


def window(xp, T: int, t, K: int):
    """Indices of the K reference frames after ``t`` (shape ``t.shape + (K,)``), held at T-1."""
    return xp.minimum(xp.asarray(t)[..., None] + 1 + xp.arange(K), T - 1)


# --- quaternions ---------------------------------------------------------------------------


def quat_conj(xp, q):
    """Conjugate (the inverse, for unit quaternions) of ``q (..., 4)``."""
    return xp.concatenate([q[..., :1], -q[..., 1:]], axis=-1)


def quat_mul(xp, a, b):
    """Hamilton product ``a * b`` of quaternions (..., 4)."""
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return xp.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def rotate_inv(xp, q, v):
    """Express world vectors ``v (..., 3)`` in the frame of unit quaternion ``q (..., 4)``:
    ``R(q)^T v = v - 2w (u x v) + 2 u x (u x v)`` with ``q = (w, u)``."""
    w, u = q[..., :1], q[..., 1:]
    uv = xp.cross(u, v)
    return v - 2.0 * w * uv + 2.0 * xp.cross(u, uv)


# --- observation ---------------------------------------------------------------------------

# The order of the observation's parts; ``obs_layout`` and ``observation`` both follow it.
REF_PARTS = ("ref_root_pos", "ref_root_quat", "ref_joints", "ref_end_effectors", "ref_bodies")
PROPRIO_PARTS = (
    "qpos_local", "qvel_local", "torso_height", "torso_up", "end_effectors", "prev_action",
)


def part_dims(K: int, idx: BodyIndex) -> dict[str, int]:
    """The width of each observation part for K reference frames and the body ``idx``."""
    nj, ne, nb = idx.nq - 7, len(idx.end_effectors), len(idx.bodies)
    return {
        "ref_root_pos": 3 * K,
        "ref_root_quat": 4 * K,
        "ref_joints": nj * K,
        "ref_end_effectors": 3 * ne * K,
        "ref_bodies": 3 * nb * K,
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


def observation(xp, cur: Kin, ref: Kin, prev_action):
    """The observation ``(..., D_obs)`` of state ``cur`` (fields (..., d)) tracking the K frames
    ``ref`` (fields (..., K, d)), given the previous action ``(..., nu)``.

    Reference features are errors in the body's own frame: root position, relative root
    quaternion, joint angles, end-effector and body positions. Proprioception is the joint
    angles and velocities, the torso height and up-vector, the end effectors relative to the
    root in the body frame, and the previous action.
    """
    batch = cur.root_pos.shape[:-1]
    q = cur.root_quat[..., None, :]  # (..., 1, 4) against K frames
    q2 = q[..., None, :]  # (..., 1, 1, 4) against K frames of n bodies

    parts = [
        rotate_inv(xp, q, ref.root_pos - cur.root_pos[..., None, :]),
        quat_mul(xp, quat_conj(xp, q), ref.root_quat),
        ref.joints - cur.joints[..., None, :],
        rotate_inv(xp, q2, ref.end_effectors - cur.end_effectors[..., None, :, :]),
        rotate_inv(xp, q2, ref.bodies - cur.bodies[..., None, :, :]),
        cur.joints,
        cur.joint_vel,
        cur.torso_z[..., None],
        cur.torso_up,
        rotate_inv(xp, q, cur.end_effectors - cur.root_pos[..., None, :]),
        prev_action,
    ]
    return xp.concatenate([xp.reshape(p, batch + (-1,)) for p in parts], axis=-1)


# --- reward and termination ----------------------------------------------------------------


def errors(xp, cur: Kin, ref: Kin) -> dict:
    """Tracking errors of ``cur`` against one reference frame ``ref`` (same shapes), each (...)."""
    rel = quat_mul(xp, quat_conj(xp, cur.root_quat), ref.root_quat)
    sin_half = xp.sqrt(xp.sum(rel[..., 1:] ** 2, axis=-1))
    return {
        "root_pos": xp.sqrt(xp.sum((ref.root_pos - cur.root_pos) ** 2, axis=-1)),
        "root_rot": 2.0 * xp.arctan2(sin_half, xp.abs(rel[..., 0])),
        "joints": xp.sqrt(xp.mean((ref.joints - cur.joints) ** 2, axis=-1)),
        "end_effectors": _rms_dist(xp, ref.end_effectors, cur.end_effectors),
        "bodies": _rms_dist(xp, ref.bodies, cur.bodies),
    }


def _rms_dist(xp, a, b):
    return xp.sqrt(xp.mean(xp.sum((a - b) ** 2, axis=-1), axis=-1))


def reward(xp, cfg: TaskConfig, err: dict, action, prev_action):
    """``(reward (...), terms)``; ``terms`` holds each exp term and the two costs, each (...)."""
    terms = {
        name: xp.exp(-((err[name] / getattr(cfg, f"scale_{name}")) ** 2))
        for name in REWARD_TERMS
    }
    terms["ctrl_cost"] = cfg.ctrl_cost * xp.mean(action**2, axis=-1)
    terms["smooth_cost"] = cfg.smooth_cost * xp.mean((action - prev_action) ** 2, axis=-1)
    total = sum(getattr(cfg, f"w_{name}") * terms[name] for name in REWARD_TERMS)
    return total - terms["ctrl_cost"] - terms["smooth_cost"], terms


def termination(xp, cfg: TaskConfig, err: dict, cur: Kin, healthy_z, finite):
    """``(terminated (...), causes)``: each cause in :data:`TERMINATIONS` as a bool (...).

    ``finite`` (...) says whether the physics state is free of NaN and Inf; a non-finite
    state terminates whatever its errors say.
    """
    lo, hi = cfg.healthy_z if cfg.healthy_z is not None else healthy_z
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
