"""Import recorded motion as reference-only clips: qpos arrays in, ``clip_<i>.h5`` out.

A source file (``.npz`` or ``.h5``/``.hdf5``) holds qpos (T, nq) sampled at ``fps``: root
position (3), root quaternion (w, x, y, z), then the hinge angles. Columns follow the model's
order, or are named by a string array (``names_key``) and mapped onto the model's joints. Each
clip is checked (width, finite, unit quaternions, joint ranges), resampled to the control rate
(slerp for quaternions, linear for the rest), given finite-difference velocities, and written
with :func:`ncssm_data.clips.write_clip` as ``qpos`` and ``qvel`` only, with its ``source``
(the file, and the clip's group or index in it) and ``source_start_s`` (0: each clip is a whole
array). :func:`write_reference_clips` is the writer ``ncssm-data fit-keypoints`` shares.
"""

from __future__ import annotations

import math
import numbers
import re
import zipfile
from pathlib import Path
from typing import NamedTuple

import h5py
import mujoco
import numpy as np

from ncssm_data.clips import check_stored, write_clip
from ncssm_data.errors import ClipError, check_count
from ncssm_env.body import PREFIX, build_model
from ncssm_env.reference import finite_difference_qvel

QUAT_TOL = 1e-3  # |‖q‖ - 1| beyond this in the source is refused
_FREE, _BALL, _SLIDE, _HINGE = (int(t) for t in (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_BALL,
                                                  mujoco.mjtJoint.mjJNT_SLIDE, mujoco.mjtJoint.mjJNT_HINGE))
_QPOS_WIDTH = {_FREE: 7, _BALL: 4, _SLIDE: 1, _HINGE: 1}
_CLIP_FILE = re.compile(r"^clip_\d+\.h5$")


def slerp(q0: np.ndarray, q1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spherical interpolation of quaternions q0, q1 (N, 4) at weights w (N,) in [0, 1].

    q1 is negated where it lies in the other hemisphere, so the path is the short one; the
    result (N, 4) has unit length.
    """
    q0 = q0 / np.linalg.norm(q0, axis=-1, keepdims=True)
    q1 = q1 / np.linalg.norm(q1, axis=-1, keepdims=True)
    dot = np.sum(q0 * q1, axis=-1)
    q1 = np.where(dot[:, None] < 0, -q1, q1)
    theta = np.arccos(np.clip(np.abs(dot), 0.0, 1.0))
    sin = np.sin(theta)
    near = sin < 1e-9  # (anti)parallel: the chord is the arc
    safe = np.where(near, 1.0, sin)
    a = np.where(near, 1 - w, np.sin((1 - w) * theta) / safe)
    b = np.where(near, w, np.sin(w * theta) / safe)
    q = a[:, None] * q0 + b[:, None] * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def resample(qpos: np.ndarray, fps: float, control_dt: float, quats: list[slice]) -> np.ndarray:
    """qpos (T, nq) at ``fps`` -> (n, nq) at times 0, dt, 2 dt, ... up to the last source time.

    Columns in ``quats`` (4 wide each) are slerped and normalized; the others interpolated linearly.
    """
    T = len(qpos)
    n = math.floor((T - 1) / fps / control_dt + 1e-6) + 1
    u = np.arange(n) * (control_dt * fps)  # each target time, in source frames
    i0 = np.minimum(np.floor(u + 1e-9).astype(int), max(T - 2, 0))
    i1 = np.minimum(i0 + 1, T - 1)
    w = np.clip(u - i0, 0.0, 1.0)
    out = (1 - w)[:, None] * qpos[i0] + w[:, None] * qpos[i1]
    for s in quats:
        out[:, s] = slerp(qpos[i0, s], qpos[i1, s], w)
    return out


def _names(ds) -> np.ndarray:
    """The column names in dataset or array ``ds``, bytes decoded to str."""
    a = np.asarray(ds[()])
    return np.array([n.decode() if isinstance(n, bytes) else n for n in a.ravel()]).reshape(a.shape)


def _read(path: Path, key: str, names_key: str | None) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(label, qpos (T, width), names (width,) or None) for each clip in ``path``; label is
    ``""``, ``":/group"`` or ``"[i]"`` (leading clip axis)."""
    clips = []
    if path.suffix == ".npz":
        try:
            f = np.load(path, allow_pickle=False)
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ClipError(f"{path} is not an .npz archive (a single .npy array?).")
            with f:
                for k in (key, names_key):
                    if k is not None and k not in f.files:
                        raise ClipError(f"{path} has no array {k!r}; it holds {sorted(f.files)}.")
                clips.append(("", f[key], None if names_key is None else _names(f[names_key])))
        except ClipError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not an archive, pickled, cut
            raise ClipError(f"{path} is not a readable .npz file without pickled data ({e}).") from e
    elif path.suffix in (".h5", ".hdf5"):
        try:
            with h5py.File(path, "r") as f:
                if isinstance(f.get(key), h5py.Dataset):
                    groups = [f]
                else:
                    groups = [g for g in f.values()
                              if isinstance(g, h5py.Group) and isinstance(g.get(key), h5py.Dataset)]
                    groups.sort(key=lambda g: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", g.name)])
                if not groups:
                    raise ClipError(f"{path} has no dataset {key!r}, at its top or in a group; "
                                    f"it holds {sorted(f)}.")
                for g in groups:
                    names = None
                    check_stored(g[key], key, f"{path}:{g[key].name}")  # before reading it whole
                    if names_key is not None:
                        ds = g.get(names_key, f.get(names_key))
                        if not isinstance(ds, h5py.Dataset):
                            raise ClipError(f"{path} has no dataset {names_key!r} next to {g[key].name!r} "
                                            f"or at its top.")
                        check_stored(ds, names_key, f"{path}:{ds.name}")
                        names = _names(ds)
                    clips.append(("" if g is f else f":{g.name}", g[key][()], names))
        except OSError as e:
            raise ClipError(f"{path} is not a readable HDF5 file (truncated or corrupt?).") from e
    else:
        raise ClipError(f"{path} has suffix {path.suffix!r}, expected .npz, .h5 or .hdf5.")
    out = []
    for label, data, names in clips:
        where = f"{path}{label}"
        if data.dtype.kind not in "iuf" or data.ndim not in (2, 3):
            raise ClipError(f"In {where}, {key!r} has shape {data.shape} and dtype {data.dtype}, expected "
                            f"numbers of shape (T, nq) or (n_clips, T, nq).")
        if names is not None and (names.ndim != 1 or names.dtype.kind != "U"):
            raise ClipError(f"In {where}, {names_key!r} has shape {names.shape} and dtype {names.dtype}, "
                            f"expected one string per column of {key!r}.")
        out += [(label, data, names)] if data.ndim == 2 else \
            [(f"{label}[{i}]", clip, names) for i, clip in enumerate(data)]
    return out


def _columns(model: mujoco.MjModel, names: np.ndarray, where: str, names_key: str, body: str) -> np.ndarray:
    """(nq,) column index into the file for each of the model's qpos entries, from ``names``."""
    joints = {model.joint(j).name.removeprefix(PREFIX): j for j in range(model.njnt)}
    found: dict[str, list[int]] = {}
    for c, name in enumerate(str(n).removeprefix(PREFIX) for n in names):
        if name not in joints:
            raise ClipError(f"In {where}, {names_key!r} names {name!r} (column {c}), which is not a joint "
                            f"of body {body!r}.")
        found.setdefault(name, []).append(c)
    cols = np.empty(model.nq, dtype=int)
    for name, j in joints.items():
        width, adr = _QPOS_WIDTH[int(model.jnt_type[j])], model.jnt_qposadr[j]
        got = found.get(name, [])
        if not got:
            raise ClipError(f"In {where}, {names_key!r} lacks joint {PREFIX + name!r} of body {body!r}.")
        if len(got) != width:
            raise ClipError(f"In {where}, {names_key!r} names joint {PREFIX + name!r} of body {body!r} "
                            f"{len(got)} times, expected {width} (its qpos width).")
        cols[adr: adr + width] = got
    return cols


def _check(model: mujoco.MjModel, q: np.ndarray, where: str, key: str, margin: float) -> None:
    """Refuse non-finite values, non-unit quaternions and limited joints beyond range + margin."""
    bad = ~np.isfinite(q)
    if bad.any():
        t, c = np.argwhere(bad)[0]
        j = np.searchsorted(model.jnt_qposadr, c, side="right") - 1
        raise ClipError(f"In {where}, {key!r} holds {q[t, c]} at frame {t} (joint {model.joint(j).name!r}), "
                        f"expected finite values.")
    types = model.jnt_type
    for j in np.flatnonzero((types == _FREE) | (types == _BALL)):
        a = model.jnt_qposadr[j] + (3 if types[j] == _FREE else 0)
        off = np.abs(np.linalg.norm(q[:, a: a + 4], axis=1) - 1)
        if (off > QUAT_TOL).any():
            t = int(np.argmax(off > QUAT_TOL))
            raise ClipError(f"In {where}, {key!r} frame {t} has the quaternion of joint {model.joint(j).name!r} "
                            f"at norm {np.linalg.norm(q[t, a: a + 4]):.6g}, expected 1 within {QUAT_TOL}.")
    lim = np.flatnonzero(model.jnt_limited.astype(bool) & np.isin(types, (_HINGE, _SLIDE)))
    v = q[:, model.jnt_qposadr[lim]]
    lo, hi = model.jnt_range[lim].T
    over = np.maximum(lo - v, v - hi) > margin
    if over.any():
        t, k = np.argwhere(over)[0]
        j = lim[k]
        unit = "rad" if types[j] == _HINGE else "m"
        raise ClipError(f"In {where}, {key!r} frame {t} puts joint {model.joint(j).name!r} at {v[t, k]:.6g} {unit}, "
                        f"beyond its range [{lo[k]:.6g}, {hi[k]:.6g}] by more than {margin} {unit}.")


def floor_distance(model: mujoco.MjModel, qpos: np.ndarray) -> float:
    """The smallest signed distance (m; negative: inside) between the floor plane and any
    body geom that collides with it, over the frames of ``qpos`` (T, nq)."""
    data = mujoco.MjData(model)
    planes = np.flatnonzero(model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE)
    if planes.size == 0:
        raise ClipError("z_offset 'floor' needs a floor, and the body's model has no plane geom.")
    floor = int(planes[0])
    hits = [g for g in range(model.ngeom) if g != floor and (
        model.geom_contype[g] & model.geom_conaffinity[floor]
        or model.geom_conaffinity[g] & model.geom_contype[floor])]
    best = np.inf
    for t in range(len(qpos)):
        data.qpos[:] = qpos[t]
        mujoco.mj_kinematics(model, data)
        best = min(best, *(mujoco.mj_geomDistance(model, data, floor, g, 1.0, None) for g in hits))
    return float(best)


def import_qpos(path, out_dir, *, body: str = "rodent", key: str = "qpos", fps: float = 50.0,
                names_key: str | None = None, K: int = 5, range_margin: float = 0.1,
                control_dt: float = 0.02, overwrite: bool = False,
                z_offset: float | str = 0.0) -> list[Path]:
    """Write each qpos clip in ``path`` as a reference-only ``clip_<i>.h5`` in ``out_dir``.

    ``path[key]`` is (T, width) or (n_clips, T, width) at ``fps``; in an .h5 file, it may
    instead be one group per clip, each holding ``key``. Without ``names_key`` the columns are
    the model's qpos (width nq); with it, ``path[names_key]`` (width,) names each column's
    joint (with or without the ``walker/`` prefix; the free root's 7 columns share its name and
    keep their order). Every clip is checked, resampled to 1/``control_dt`` Hz and must keep at
    least K+2 frames before anything is written. Each clip file holds ``qpos`` (T', nq) and
    ``qvel`` (T', nv) (finite differences). ``overwrite`` replaces clip files already in
    ``out_dir`` (removing any beyond the new ones). ``z_offset`` lifts the root by that many
    metres, or with ``"floor"`` by what puts the lowest paw of each clip's deepest frame just
    on the floor (a fit made against another floor height sinks the body into ours, or floats
    it; paws, because an unfitted tail may hang through any floor). Returns the clip paths, in
    clip order.
    """
    path, out_dir = Path(path), Path(out_dir)
    for name, value, zero_ok in (("fps", fps, False), ("control_dt", control_dt, False),
                                 ("range_margin", range_margin, True)):
        number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not (number and (value >= 0 if zero_ok else value > 0)):
            want = "a non-negative" if zero_ok else "a positive"
            raise ClipError(f"{name} is {value!r} for {path}, expected {want} finite number.")
    K = check_count("K", K)
    old = old_clips(out_dir, overwrite)
    if not path.is_file():
        raise ClipError(f"The qpos file {path} does not exist.")
    model = build_model(body)
    types = model.jnt_type
    quats = [slice(a, a + 4) for a in np.concatenate([model.jnt_qposadr[types == _FREE] + 3,
                                                      model.jnt_qposadr[types == _BALL]])]
    clips = []
    for label, data, names in _read(path, key, names_key):
        where, width = f"{path}{label}", data.shape[1]
        if names is not None and len(names) != width:
            raise ClipError(f"In {where}, {key!r} has width {width} but {names_key!r} names {len(names)} columns.")
        if names is None and width != model.nq:
            raise ClipError(f"In {where}, {key!r} has width {width}, expected nq {model.nq} of body {body!r} "
                            f"(root position 3, quaternion 4, then the joints).")
        q = np.asarray(data, dtype=np.float64)
        if names is not None:
            q = q[:, _columns(model, names, where, names_key, body)]
        _check(model, q, where, key, range_margin)
        q = resample(q, fps, control_dt, quats)
        if len(q) < K + 2:
            raise ClipError(f"In {where}, {key!r} has {len(data)} frames at {fps:g} fps, {len(q)} at "
                            f"{1 / control_dt:g} Hz, fewer than the K+2 = {K + 2} the env needs.")
        if isinstance(z_offset, str) and z_offset == "floor":
            q[:, 2] -= floor_distance(build_model(body, contacts="paws"), q)
        elif isinstance(z_offset, numbers.Real) and math.isfinite(z_offset):
            q[:, 2] += z_offset
        else:
            raise ClipError(f"z_offset is {z_offset!r} for {path}, expected metres or 'floor'.")
        clips.append(ReferenceClip(
            q, f"ncssm-data import {path.name}{label} (fps {fps:g} -> {1 / control_dt:g})",
            f"{path.resolve()}{label}", 0.0))
    return write_reference_clips(out_dir, clips, model, body, control_dt, old)


class ReferenceClip(NamedTuple):
    """One clip to write: ``qpos`` (T, nq) at the control rate, its ``generator`` text, its
    ``source`` file, its first frame's time in it (``source_start_s``), and the
    ``interpolated`` frames (indices) where it has any."""

    qpos: np.ndarray
    generator: str
    source: str
    source_start_s: float
    interpolated: np.ndarray | None = None


def old_clips(out_dir: Path, overwrite: bool) -> list[Path]:
    """The clip files already in ``out_dir``, refused in one sentence unless ``overwrite``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ClipError(f"The output folder {out_dir} exists and is not a folder.")
    old = sorted(p for p in out_dir.iterdir() if _CLIP_FILE.match(p.name)) if out_dir.is_dir() else []
    if old and not overwrite:
        shown = ", ".join(p.name for p in old[:3]) + (", ..." if len(old) > 3 else "")
        raise ClipError(f"The output folder {out_dir} already holds clip files ({shown}); "
                        f"pass overwrite=True (--overwrite) to replace them.")
    return old


def write_reference_clips(out_dir: Path, clips: list[ReferenceClip], model: mujoco.MjModel,
                          body: str, control_dt: float, old: list[Path]) -> list[Path]:
    """Write each of ``clips`` as the reference-only ``out_dir/clip_<i>.h5`` (``qpos`` and its
    finite-difference ``qvel``), then remove the ``old`` clip files not written over. Every
    clip is checked by :func:`write_clip` before it is written, each file atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, c in enumerate(clips):
        qvel = finite_difference_qvel(model, c.qpos, control_dt)
        written.append(write_clip(
            out_dir / f"clip_{i}.h5", {"qpos": c.qpos, "qvel": qvel}, obs_layout=None,
            body=body, control_dt=control_dt, generator=c.generator, source=c.source,
            source_start_s=c.source_start_s, interpolated=c.interpolated))
    for p in old:
        if p not in written:
            p.unlink()
    return written
