"""Fitting the body to recorded keypoints (issue 19): the keypoint map, the units, the fit.

- :func:`load_keypoint_map`: a config such as ``configs/keypoints_rodent.yaml`` (each keypoint's
  body and initial offset in that body's frame, metres), checked against the model and the
  recording: a keypoint the file lacks, a body the model lacks, a bad offset are one sentence.
- :func:`detect_units`: the recording's length unit, from its keypoint distances against the
  body's: files state units unreliably (the shared NWB says ``pixels`` and holds millimetres).
- :func:`fit_keypoints`: STAC's idea with mink: per-frame inverse kinematics (one position
  task per keypoint site, joint limits, a posture task toward the previous frame, warm
  started) alternating with the least-squares fit of each keypoint's offset in its body's
  frame, shared over frames and pulled toward its initial value.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np
import yaml

from ncssm_data.errors import ClipError
from ncssm_data.keypoints import Keypoints

UNITS = {"m": 1.0, "cm": 100.0, "mm": 1000.0}  # unit -> the number of them in a metre
UNIT_TOLERANCE = 3.0  # the data may be this many times larger or smaller than the body


@dataclass(frozen=True)
class KeypointMap:
    """Keypoint ``names`` (K), the ``bodies`` (K,) int model body ids they sit on, and their
    initial ``offsets`` (K, 3) in those bodies' frames, metres; ``source`` the config."""

    names: tuple[str, ...]
    bodies: np.ndarray
    offsets: np.ndarray
    source: str
    body_names: tuple[str, ...] = ()  # the bodies' names in the body file (no "walker/")


CONFIG_KEYS = ("body", "keypoints", "fit")


def read_keypoint_config(path: str | Path) -> dict:
    """The keypoint config ``path`` as a mapping with keys among :data:`CONFIG_KEYS`
    (``body``: the body it maps onto; ``keypoints``: the map; ``fit``: :class:`FitConfig`'s
    values). YAML is read safely (no tags run); anything else is one sentence."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError) as err:
        raise ClipError(f"Keypoint config {path} cannot be read as YAML "
                        f"({type(err).__name__}).") from None
    if not isinstance(cfg, dict):
        raise ClipError(f"Keypoint config {path} holds {type(cfg).__name__}, expected a mapping "
                        f"with keys {', '.join(CONFIG_KEYS)}.")
    unknown = [k for k in cfg if k not in CONFIG_KEYS]
    if unknown:
        raise ClipError(f"Keypoint config {path} has unknown key {unknown[0]!r}; known keys are "
                        f"{', '.join(CONFIG_KEYS)}.")
    if "body" in cfg and not (isinstance(cfg["body"], str) and cfg["body"]):
        raise ClipError(f"Keypoint config {path}: body is {cfg['body']!r}, expected a body name.")
    return cfg


def load_keypoint_map(path: str | Path, model: mujoco.MjModel,
                      recorded: Keypoints | None = None) -> KeypointMap:
    """The map in the YAML ``path`` (``keypoints: {NAME: {body: BODY, offset: [x, y, z]}}``),
    its bodies looked up in ``model`` (with or without the ``walker/`` prefix) and, with
    ``recorded``, its keypoints looked up in the recording."""
    path = Path(path)
    entries = read_keypoint_config(path).get("keypoints")
    if not isinstance(entries, dict) or not entries:
        raise ClipError(f"Keypoint map {path} has no 'keypoints' mapping, expected "
                        f"keypoints: {{NAME: {{body: BODY, offset: [x, y, z]}}}}.")
    bodies = {mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, i): i
              for i in range(1, model.nbody)}
    short = {name.split("/", 1)[-1]: i for name, i in bodies.items()}
    names, ids, offsets, body_names = [], [], [], []
    for name, entry in entries.items():
        where = f"Keypoint map {path}: keypoint {name!r}"
        if not isinstance(entry, dict) or set(entry) - {"body", "offset"} or "body" not in entry:
            raise ClipError(f"{where} must be {{body: BODY, offset: [x, y, z]}}, got "
                            f"{entry!r}.")
        body = str(entry["body"])
        i = bodies.get(body, short.get(body))
        if i is None:
            close = difflib.get_close_matches(body, sorted(short), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ClipError(f"{where} sits on body {body!r}, which the model does not have"
                            f"{hint}.")
        offset = np.asarray(entry.get("offset", [0.0, 0.0, 0.0]), dtype=object)
        try:
            offset = offset.astype(np.float64)
        except (TypeError, ValueError):
            offset = np.full(0, np.nan)
        if offset.shape != (3,) or not np.isfinite(offset).all() or np.abs(offset).max() > 0.5:
            raise ClipError(f"{where} has offset {entry.get('offset')!r}, expected 3 finite "
                            f"numbers in metres (each within 0.5).")
        names.append(str(name))
        ids.append(i)
        offsets.append(offset)
        body_names.append(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, i).split("/", 1)[-1])
    if recorded is not None:
        missing = [n for n in names if n not in recorded.names]
        if missing:
            close = difflib.get_close_matches(missing[0], recorded.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ClipError(f"Keypoint map {path} names keypoint {missing[0]!r}, which "
                            f"{recorded.source} does not have{hint}; it has "
                            f"{', '.join(recorded.names)}.")
    return KeypointMap(tuple(names), np.asarray(ids), np.asarray(offsets), str(path),
                       tuple(body_names))


def map_positions(model: mujoco.MjModel, kmap: KeypointMap,
                  qpos: np.ndarray | None = None) -> np.ndarray:
    """The map's keypoints on the body at ``qpos`` (default: the model's ``qpos0``), (K, 3)
    metres: each body's position plus its rotation applied to the offset."""
    data = mujoco.MjData(model)
    data.qpos[:] = model.qpos0 if qpos is None else qpos
    mujoco.mj_kinematics(model, data)
    rot = data.xmat[kmap.bodies].reshape(-1, 3, 3)
    return data.xpos[kmap.bodies] + np.einsum("kij,kj->ki", rot, kmap.offsets)


def detect_units(recorded: Keypoints, model: mujoco.MjModel,
                 kmap: KeypointMap) -> tuple[str, float]:
    """The recording's length unit (``"m"``, ``"cm"`` or ``"mm"``) and its size ratio: the
    median over keypoint pairs on different bodies of the pair's median distance in the
    recording over its distance on the body at rest, in metres. Refused in one sentence when
    no unit brings the ratio within a factor of :data:`UNIT_TOLERANCE` of 1."""
    index = [recorded.names.index(n) for n in kmap.names]
    xyz = recorded.xyz[:, index]  # (T, K, 3), the map's order
    rest = map_positions(model, kmap)
    ratios = []
    for a in range(len(index)):
        for b in range(a + 1, len(index)):
            if kmap.bodies[a] == kmap.bodies[b]:
                continue
            d = np.linalg.norm(xyz[:, a] - xyz[:, b], axis=-1)
            d = d[np.isfinite(d)]
            ref = float(np.linalg.norm(rest[a] - rest[b]))
            if len(d) and ref > 1e-3:
                ratios.append(float(np.median(d)) / ref)
    if not ratios:
        raise ClipError(f"Keypoint file {recorded.source} has no frame where two keypoints on "
                        f"different bodies are both present, so its units cannot be detected; "
                        f"give --units.")
    ratio = float(np.median(ratios))
    unit = min(UNITS, key=lambda u: abs(np.log(ratio / UNITS[u])))
    if not 1 / UNIT_TOLERANCE <= ratio / UNITS[unit] <= UNIT_TOLERANCE:
        raise ClipError(f"Keypoint file {recorded.source} is {ratio:.3g} times the body's size "
                        f"in metres, which matches no unit (m, cm, mm) within a factor of "
                        f"{UNIT_TOLERANCE:g}; check its scale (off by 1000?) or give --units.")
    return unit, ratio / UNITS[unit]


# --- the fit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitConfig:
    """``posture_cost``: the pull toward the previous frame's pose, against a position cost of
    1 per metre; ``iterations`` Gauss-Newton steps per frame (``first_iterations`` for the
    first); ``rounds`` of [IK over the frames, then the offsets]; ``offset_pull`` how hard each
    offset is pulled toward its initial value (0: free); ``offset_every`` the frame stride of
    the offset fit; ``min_keypoints`` below which a frame is interpolated, not fitted;
    ``min_confidence`` below which a keypoint counts as missing (where the file has
    confidences)."""

    posture_cost: float = 3e-3
    iterations: int = 10
    first_iterations: int = 200
    rounds: int = 4
    offset_pull: float = 0.1
    offset_every: int = 2
    min_keypoints: int = 6
    min_confidence: float = 0.0
    solver: str = "daqp"
    tol: float = 1e-6


def load_fit_config(path: str | Path) -> FitConfig:
    """The ``fit:`` mapping of the keypoint config ``path`` over :class:`FitConfig`'s defaults
    (absent: the defaults). An unknown key, or a value of the wrong type or sign, is one
    sentence."""
    path = Path(path)
    entries = read_keypoint_config(path).get("fit", {})
    if not isinstance(entries, dict):
        raise ClipError(f"Keypoint config {path}: 'fit' is {entries!r}, expected a mapping of "
                        f"{', '.join(FitConfig.__dataclass_fields__)}.")
    defaults = FitConfig()
    values = {}
    for key, value in entries.items():
        if key not in FitConfig.__dataclass_fields__:
            close = difflib.get_close_matches(str(key), FitConfig.__dataclass_fields__, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ClipError(f"Keypoint config {path}: fit key {key!r} is unknown{hint}; known "
                            f"keys are {', '.join(FitConfig.__dataclass_fields__)}.")
        kind = type(getattr(defaults, key))
        if kind is str:
            ok = isinstance(value, str) and value
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and np.isfinite(value) and value >= 0)
        if not ok:
            raise ClipError(f"Keypoint config {path}: fit.{key} is {value!r}, expected a "
                            f"non-negative {'string' if kind is str else kind.__name__}.")
        values[key] = kind(value)
    return FitConfig(**values)


@dataclass
class Fit:
    """The fit of T frames: ``qpos`` (T, nq), the keypoint ``offsets`` (K, 3) in their bodies'
    frames, the ``residual`` (T, K) metres (NaN where a keypoint is missing), ``interpolated``
    (T,) the frames with too few keypoints, ``limit_hits`` (T,) hinge joints at a limit, the
    IK's ``seconds_per_frame`` (per frame and pass), and ``site_xyz`` (T, K, 3) metres the
    keypoints on the fitted body."""

    qpos: np.ndarray
    offsets: np.ndarray
    residual: np.ndarray
    interpolated: np.ndarray
    limit_hits: np.ndarray
    seconds_per_frame: float = field(default=0.0)
    site_xyz: np.ndarray | None = None


def fitting_model(body: str, kmap: KeypointMap, offsets: np.ndarray | None = None):
    """The body with one site per keypoint (``walker/kp_<name>``, at ``offsets``, default the
    map's) and the sites' ids (K,)."""
    from ncssm_env.body import build_model

    offsets = kmap.offsets if offsets is None else offsets
    model = build_model(body, sites={f"kp_{n}": (b, tuple(o)) for n, b, o in
                                     zip(kmap.names, kmap.body_names, offsets, strict=True)})
    ids = np.array([model.site(f"walker/kp_{n}").id for n in kmap.names])
    # A site compiled at its body's origin is marked "same frame" and kinematics then ignore
    # its site_pos: unmark them, so that the offsets the fit moves are used.
    model.site_sameframe[ids] = 0
    return model, ids


def _kabsch_root(model, data, sites: np.ndarray, target: np.ndarray) -> np.ndarray:
    """qpos0 with the free root moved and turned so that the present ``target`` keypoints
    (K, 3) best match the sites at rest (Kabsch)."""
    qpos = model.qpos0.copy()
    data.qpos[:] = qpos
    mujoco.mj_kinematics(model, data)
    ok = np.isfinite(target).all(axis=1)
    a, b = data.site_xpos[sites[ok]], target[ok]
    ca, cb = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    rot = vt.T @ np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))]) @ u.T
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (rot @ _quat_mat(qpos[3:7])).ravel())
    qpos[:3] = rot @ (qpos[:3] - ca) + cb
    qpos[3:7] = quat
    return qpos


def _quat_mat(quat: np.ndarray) -> np.ndarray:
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, quat)
    return mat.reshape(3, 3)


def fit_keypoints(xyz: np.ndarray, body: str, kmap: KeypointMap,
                  cfg: FitConfig = FitConfig()) -> Fit:
    """Fit ``body`` to keypoints ``xyz`` (T, K, 3) metres, in ``kmap``'s order, NaN where
    missing. See the module docstring; the offsets start at the map's."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small dense solves: BLAS threads only cost (20 vs 65 ms/frame)
        return _fit(xyz, body, kmap, cfg)


def _fit(xyz, body, kmap, cfg) -> Fit:
    import time

    import mink

    model, sites = fitting_model(body, kmap)
    data = mujoco.MjData(model)
    xyz = np.asarray(xyz, np.float64)
    present = np.isfinite(xyz).all(axis=2)  # (T, K)
    fitted = present.sum(axis=1) >= cfg.min_keypoints
    if not fitted.any():
        raise ClipError(f"No frame has {cfg.min_keypoints} or more keypoints present (of "
                        f"{len(kmap.names)}); nothing can be fitted.")
    tasks = [mink.FrameTask(f"walker/kp_{n}", "site", position_cost=1.0, orientation_cost=0.0)
             for n in kmap.names]
    posture = mink.PostureTask(model, cost=cfg.posture_cost)
    limits = [mink.ConfigurationLimit(model)]
    conf = mink.Configuration(model)
    offsets = kmap.offsets.copy()
    t0 = time.perf_counter()
    qpos = np.empty((len(xyz), model.nq))
    for rnd in range(cfg.rounds + 1):  # [IK, offsets] x rounds, then the final IK
        model.site_pos[sites] = offsets  # mutable after compiling: no rebuild
        q = None
        for t in np.flatnonzero(fitted):
            q = _kabsch_root(model, data, sites, xyz[t]) if q is None else q
            conf.update(q)
            posture.set_target(q)
            active = [posture]
            for k in np.flatnonzero(present[t]):
                tasks[k].set_target(mink.SE3.from_translation(xyz[t, k]))
                active.append(tasks[k])
            for _ in range(cfg.first_iterations if t == np.flatnonzero(fitted)[0]
                           else cfg.iterations):
                v = mink.solve_ik(conf, active, 1.0, cfg.solver, damping=1e-6, limits=limits)
                conf.integrate_inplace(v, 1.0)
                if np.linalg.norm(v) < cfg.tol:
                    break
            q = conf.q.copy()
            qpos[t] = q
        if rnd < cfg.rounds:
            offsets = _fit_offsets(model, data, kmap, qpos, xyz, present & fitted[:, None],
                                   cfg)
    seconds = (time.perf_counter() - t0) / ((cfg.rounds + 1) * fitted.sum())
    qpos = _interpolate(qpos, fitted)
    model.site_pos[sites] = offsets
    residual = np.full(present.shape, np.nan)
    site_xyz = np.empty(xyz.shape)
    hits = np.zeros(len(xyz), int)
    hinge = model.jnt_type == mujoco.mjtJoint.mjJNT_HINGE
    adr, lo, hi = model.jnt_qposadr[hinge], model.jnt_range[hinge, 0], model.jnt_range[hinge, 1]
    for t in range(len(xyz)):
        data.qpos[:] = qpos[t]
        mujoco.mj_kinematics(model, data)
        site_xyz[t] = data.site_xpos[sites]
        err = np.linalg.norm(site_xyz[t] - xyz[t], axis=1)
        residual[t, present[t]] = err[present[t]]
        angle = qpos[t, adr]
        hits[t] = int(((angle <= lo + 1e-4) | (angle >= hi - 1e-4)).sum())
    return Fit(qpos, offsets, residual, ~fitted, hits, seconds, site_xyz)


def determined_joints(model: mujoco.MjModel, sites: np.ndarray, qpos: np.ndarray,
                      min_m_per_rad: float = 0.01, frames: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Which hinge joints the keypoints pin down: for each hinge, the part of its column of the
    keypoint sites' Jacobian (3K,) that no combination of the other joints (the root
    included) can reproduce, metres per radian, the median over up to ``frames`` frames of
    ``qpos`` (T, nq). A joint below ``min_m_per_rad`` can move without moving any keypoint
    more than the others can undo (the tail, the toes, a chain of vertebrae between two
    keypoints), so its angle comes from the posture task, not the data. Returns the hinges'
    qpos addresses (H,) and their scores (H,); the determined ones are ``score >=
    min_m_per_rad``."""
    data = mujoco.MjData(model)
    hinge = np.flatnonzero(model.jnt_type == mujoco.mjtJoint.mjJNT_HINGE)
    dofs = model.jnt_dofadr[hinge]
    jac, col = np.zeros((3 * len(sites), model.nv)), np.zeros((3, model.nv))
    scores = []
    for q in qpos[np.linspace(0, len(qpos) - 1, min(frames, len(qpos))).astype(int)]:
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        for i, s in enumerate(sites):
            mujoco.mj_jacSite(model, data, col, None, int(s))
            jac[3 * i:3 * i + 3] = col
        row = []
        for d in dofs:
            others = np.delete(jac, d, axis=1)
            coef = np.linalg.lstsq(others, jac[:, d], rcond=None)[0]
            row.append(np.linalg.norm(jac[:, d] - others @ coef))
        scores.append(row)
    return model.jnt_qposadr[hinge], np.median(scores, axis=0)


def _fit_offsets(model, data, kmap, qpos, xyz, use, cfg) -> np.ndarray:
    """Each keypoint's offset in its body's frame, over every ``offset_every``-th fitted frame:
    the mean of R_b(t)^T (x_t - p_b(t)) (least squares, R orthonormal), pulled toward the
    map's initial offset by ``offset_pull`` (STAC's regularizer; one keypoint per body trades
    its offset against the joint angle)."""
    total = np.zeros((len(kmap.names), 3))
    count = np.zeros(len(kmap.names))
    for t in np.flatnonzero(use.any(axis=1))[::cfg.offset_every]:
        data.qpos[:] = qpos[t]
        mujoco.mj_kinematics(model, data)
        rot = data.xmat[kmap.bodies].reshape(-1, 3, 3)
        local = np.einsum("kji,kj->ki", rot, xyz[t] - data.xpos[kmap.bodies])
        total[use[t]] += local[use[t]]
        count[use[t]] += 1
    pull = cfg.offset_pull * max(count.max(), 1.0)
    return (total + pull * kmap.offsets) / (count + pull)[:, None]


def _interpolate(qpos: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """The frames not ``fitted`` (T,) filled from their fitted neighbours: linear for the
    position and the hinges, the root quaternion interpolated and renormalized."""
    if fitted.all():
        return qpos
    t_ok = np.flatnonzero(fitted)
    out = qpos.copy()
    for j in range(qpos.shape[1]):
        out[:, j] = np.interp(np.arange(len(qpos)), t_ok, qpos[t_ok, j])
    out[:, 3:7] /= np.linalg.norm(out[:, 3:7], axis=1, keepdims=True)
    return out
