"""Distributional scores of behaviour: does what a policy generates look like the data?

For autonomous policies (modes ``state_action``, ``syllable_state_intention``), which cannot
know where the reference goes, so tracking error is the wrong judge. Pure NumPy/SciPy.

1. **Pose features**, per frame (F = 2·nj + 4): the joint angles (nj), the torso height (1),
   the torso up-vector (the torso's z axis in world coordinates, 3) and the joint speeds
   |q̇| (nj). Rollouts read them from the observation's slices ``qpos_local``, ``qvel_local``,
   ``torso_height`` and ``torso_up`` (:func:`features_from_obs`); clips from the forward
   kinematics of their qpos and qvel (:func:`features_from_qpos`), the same quantities.
2. **Pose space** (:class:`PoseSpace`): each feature is z-scored with the mean and std (floored
   at 1e-6) of all training frames; sequences are cut into windows of ``window`` frames
   (default 50, 1 s at 50 Hz) every ``stride`` frames (default 10), each flattened to
   window·F (frame-major); PCA fitted on the training windows (SVD, signs fixed) maps them to
   ``n_components`` dims (default 16). A sequence of T >= window frames gives
   floor((T - window) / stride) + 1 windows; a shorter one gives none. Fitting needs more
   training windows than ``n_components``.
3. **Fréchet distance** (:func:`frechet_distance`) between Gaussians fitted to two sets of
   embedded windows (sample means, covariances with ddof 1): ‖μx − μy‖² + tr(Σx + Σy −
   2 (Σx Σy)^½), with scipy's ``sqrtm`` (retried with 1e-6·I added to both covariances if it
   is not finite), its real part, and a negative result clamped to 0. This is the *squared*
   2-Wasserstein distance, the FID convention; 0 for identical sets. Each set needs at least
   2 samples, both of the same dimension.
4. **Falls per minute** (:func:`falls_per_minute`): a frame is fallen when the torso height is
   outside ``healthy_z = (lo, hi)`` or the up-vector's z component is below ``min_up``
   (default 0.5). A fall is a fallen frame whose previous frame is not fallen; a sequence whose
   first frame is fallen counts one fall there. Falls of all sequences are summed and divided
   by their total duration, sum of T_i · control_dt / 60 minutes.
5. **Syllable usage** (:func:`usage_jsd`): the Jensen–Shannon divergence, base 2 (in [0, 1]),
   between the fractions of frames spent in each of ``n_states`` syllables by two sets of
   label sequences (all frames of a set pooled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ncssm_data.layout import obs_slice

POSE_PARTS = ("qpos_local", "qvel_local", "torso_height", "torso_up")


def pose_features(qpos_local, qvel_local, torso_height, torso_up) -> np.ndarray:
    """Per-frame pose features ``(T, 2·nj + 4)``: joint angles, torso height, torso up-vector,
    joint speeds, from ``qpos_local (T, nj)``, ``qvel_local (T, nj)``, ``torso_height (T,)`` or
    ``(T, 1)`` and ``torso_up (T, 3)``."""
    q, qd = np.asarray(qpos_local, float), np.asarray(qvel_local, float)
    h = np.asarray(torso_height, float).reshape(len(q), 1)
    up = np.asarray(torso_up, float).reshape(len(q), 3)
    return np.concatenate([q, h, up, np.abs(qd)], axis=1)


def pose_columns(layout: Mapping[str, tuple[int, int]]) -> tuple[np.ndarray, dict]:
    """``(cols, pose_layout)``: the observation columns of :data:`POSE_PARTS` (what a rollout
    keeps of each observation), and the layout naming them within ``obs[:, cols]``."""
    cols = [np.arange(*obs_slice(layout, name).indices(10**9)[:2]) for name in POSE_PARTS]
    stops = np.cumsum([len(c) for c in cols])
    return np.concatenate(cols), {n: (int(b - len(c)), int(b))
                                  for n, c, b in zip(POSE_PARTS, cols, stops)}


def features_from_obs(obs, layout: Mapping[str, tuple[int, int]]) -> np.ndarray:
    """:func:`pose_features` of observations ``obs (T, D_obs)`` named by ``layout``."""
    obs = np.asarray(obs)
    return pose_features(*(obs[:, obs_slice(layout, name)] for name in POSE_PARTS))


def features_from_qpos(model, idx, qpos, qvel) -> np.ndarray:
    """:func:`pose_features` of a clip's ``qpos (T, nq)`` and ``qvel (T, nv)`` through the forward
    kinematics of ``model`` (body index ``idx``), as the env's observation computes them."""
    from ncssm_env.reference import clip_kinematics

    k = clip_kinematics(model, idx, np.asarray(qpos, float), np.asarray(qvel, float))
    return pose_features(k.joints, k.joint_vel, k.torso_z, k.torso_up)


@dataclass
class PoseSpace:
    """z-scored pose windows, PCA-reduced: :meth:`fit` on training clips, then :meth:`embed`.

    After fitting: ``mean``, ``std`` (F,) the feature stats; ``center`` (window·F,) and
    ``components`` (n_components, window·F) the PCA.
    """

    window: int = 50
    stride: int = 10
    n_components: int = 16
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    center: np.ndarray | None = None
    components: np.ndarray | None = None

    def windows(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """The z-scored windows of feature sequences (each (T_i, F)), flattened: (n, window·F)."""
        F = len(self.mean)
        out = []
        for seq in sequences:
            z = (np.asarray(seq, float) - self.mean) / self.std
            if z.ndim != 2 or z.shape[1] != F:
                raise ValueError(f"A pose sequence has shape {z.shape}, expected (T, {F}).")
            if len(z) >= self.window:
                w = np.lib.stride_tricks.sliding_window_view(z, self.window, axis=0)[::self.stride]
                out.append(w.transpose(0, 2, 1).reshape(len(w), -1))  # frame-major
        return np.concatenate(out) if out else np.zeros((0, self.window * F))

    def fit(self, sequences: Sequence[np.ndarray]) -> PoseSpace:
        """Fit the z-score and the PCA on training feature sequences (each (T_i, F)); returns self."""
        frames = np.concatenate([np.asarray(s, float) for s in sequences])
        self.mean, self.std = frames.mean(0), np.maximum(frames.std(0), 1e-6)
        X = self.windows(sequences)
        if len(X) <= self.n_components:
            raise ValueError(f"PoseSpace.fit needs more than n_components={self.n_components} "
                             f"training windows of {self.window} frames, got {len(X)}.")
        self.center = X.mean(0)
        _, _, vt = np.linalg.svd(X - self.center, full_matrices=False)
        vt = vt[: self.n_components]
        # a deterministic sign: each component's largest-magnitude entry is positive
        self.components = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]
        return self

    def embed(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """The windows of feature sequences (each (T_i, F)) in PCA space: (n_windows, n_components)."""
        if self.components is None:
            raise ValueError("PoseSpace.embed needs a fitted PoseSpace; call fit first.")
        return (self.windows(sequences) - self.center) @ self.components.T

    def save(self, path) -> None:
        """Write the fitted space as an ``.npz`` of plain arrays (no pickle)."""
        np.savez(path, window=self.window, stride=self.stride, n_components=self.n_components,
                 mean=self.mean, std=self.std, center=self.center, components=self.components)

    @classmethod
    def load(cls, path) -> PoseSpace:
        """A space written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            return cls(int(f["window"]), int(f["stride"]), int(f["n_components"]),
                       f["mean"], f["std"], f["center"], f["components"])


def frechet_distance(x, y) -> float:
    """The squared Fréchet (2-Wasserstein) distance between Gaussians fitted to ``x (n, d)`` and
    ``y (m, d)``: ‖μx − μy‖² + tr(Σx + Σy − 2 (Σx Σy)^½), the FID convention."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"frechet_distance needs two sets of at least 2 samples of the same "
                         f"dimension, (n, d) and (m, d); got {x.shape} and {y.shape}.")
    sx, sy = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    root = scipy.linalg.sqrtm(sx @ sy)
    if not np.isfinite(root).all():  # a singular product: nudge both covariances
        eps = 1e-6 * np.eye(len(sx))
        root = scipy.linalg.sqrtm((sx + eps) @ (sy + eps))
    d = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sx + sy - 2.0 * np.real(root))
    return float(max(d, 0.0))


def falls_per_minute(torso_height: Sequence[np.ndarray], torso_up_z: Sequence[np.ndarray],
                     healthy_z: tuple[float, float], control_dt: float,
                     min_up: float = 0.5) -> float:
    """Falls per minute over sequences of ``torso_height (T_i,)`` and ``torso_up_z (T_i,)``.

    A frame is fallen when its height is outside ``healthy_z = (lo, hi)`` or ``up_z < min_up``; a
    fall is a fallen frame after a non-fallen one, or a fallen first frame.
    """
    lo, hi = healthy_z
    falls, frames = 0, 0
    for h, up in zip(torso_height, torso_up_z, strict=True):
        h, up = np.ravel(h), np.ravel(up)
        if h.shape != up.shape:
            raise ValueError(f"Torso height {h.shape} and up_z {up.shape} differ in length.")
        fallen = (h < lo) | (h > hi) | (up < min_up)
        falls += int(fallen[:1].sum() + (fallen[1:] & ~fallen[:-1]).sum())
        frames += len(h)
    if frames == 0:
        raise ValueError("falls_per_minute needs at least one frame.")
    return falls / (frames * control_dt / 60.0)


def usage(labels: Sequence[np.ndarray], n_states: int) -> np.ndarray:
    """The fraction of all frames of ``labels`` (int sequences) in each state, (n_states,)."""
    flat = np.concatenate([np.ravel(s) for s in labels]).astype(np.int64)
    if flat.size == 0 or flat.min() < 0 or flat.max() >= n_states:
        raise ValueError(f"Syllable labels must be non-empty ints in [0, {n_states}).")
    return np.bincount(flat, minlength=n_states) / flat.size


def usage_jsd(labels_a: Sequence[np.ndarray], labels_b: Sequence[np.ndarray],
              n_states: int) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) between the syllable usages of two sets."""
    p, q = usage(labels_a, n_states), usage(labels_b, n_states)
    m = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return np.sum(a[nz] * np.log2(a[nz] / m[nz]))

    return float(min(max(0.5 * kl(p) + 0.5 * kl(q), 0.0), 1.0))
