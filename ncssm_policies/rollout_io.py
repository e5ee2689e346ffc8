"""Closed-loop rollouts on disk: save/load episode records as HDF5, render one episode to mp4.

An episode record is a dict of per-step arrays, all with the same number of steps T,

=========================  ===========  ==========================================
key                        shape        meaning
=========================  ===========  ==========================================
``qpos`` (required)        (T, nq)      the body's achieved physics state
``ref_qpos`` (required)    (T, nq)      the reference clip's qpos at the same frames
``ctrl`` (required)        (T, nu)      the actions applied
``reward`` (required)      (T,)         the reward of each step
``err_*``, ``rew_*``       (T,)         per-step tracking errors and reward terms
=========================  ===========  ==========================================

and scalars ``clip`` (int), ``start`` (int, first clip frame), ``length`` (int), ``cause``
(str), all required, and ``fraction`` (float, optional).

A rollout file holds one group per episode, ``/episode_0000``, ``/episode_0001``, ..., with
each array as a float32 dataset (gzip, Fletcher-32 checksum) and each scalar as a group
attribute. File attributes: ``format`` (``"ncssm-rollouts"``), ``schema_version`` (int) and
``meta`` (a JSON string: checkpoint, body, backend, seed, summary, ...; never pickle).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ncssm_data.clips import atomic_path

FORMAT = "ncssm-rollouts"
SCHEMA_VERSION = 1
REQUIRED_ARRAYS = ("qpos", "ref_qpos", "ctrl", "reward")
REQUIRED_SCALARS = ("clip", "start", "length", "cause")
REQUIRED = REQUIRED_ARRAYS + REQUIRED_SCALARS
_ARRAY_NDIM = {"qpos": 2, "ref_qpos": 2, "ctrl": 2, "reward": 1}  # err_* / rew_*: 1
_SCALAR_KIND = {"clip": "int", "start": "int", "length": "int", "cause": "str", "fraction": "float"}
_METRIC = re.compile(r"^(err|rew)_\w+$")
_GROUP = re.compile(r"^episode_(\d+)$")


class RolloutError(ValueError):
    """A bad episode record or rollout file; the message is one sentence naming the episode or file."""


# --------------------------------------------------------------------------- checks shared by save and load


def _check_scalar(value: Any, key: str, where: str) -> int | float | str:
    """``value`` as the python type of scalar ``key`` (int, float or str)."""
    kind = _SCALAR_KIND[key]
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if kind == "str":
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise RolloutError(f"In {where}, {key!r} is {value!r}, expected a string.")
        return str(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        want = "an int" if kind == "int" else "a float"
        raise RolloutError(f"In {where}, {key!r} is {value!r}, expected {want}.")
    if kind == "int":
        if isinstance(value, (float, np.floating)):
            if not float(value).is_integer():
                raise RolloutError(f"In {where}, {key!r} is {value!r}, expected an int.")
        return int(value)
    return float(value)


def _check_episode(ep: Mapping[str, Any], where: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split one record into float32 arrays and python scalars, checking keys, shapes and T."""
    if not isinstance(ep, Mapping):
        raise RolloutError(f"In {where}, the record is a {type(ep).__name__}, expected a dict.")
    for key in REQUIRED:
        if key not in ep:
            raise RolloutError(f"In {where}, the required key {key!r} is missing.")
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    for key, value in ep.items():
        if key in _SCALAR_KIND:
            scalars[key] = _check_scalar(value, key, where)
            continue
        if key not in _ARRAY_NDIM and not _METRIC.match(str(key)):
            raise RolloutError(
                f"In {where}, key {key!r} is unknown; expected {list(REQUIRED)}, 'fraction', "
                f"or per-step arrays named 'err_*' / 'rew_*'."
            )
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            raise RolloutError(f"In {where}, array {key!r} has dtype {a.dtype}, expected a numeric dtype.")
        ndim = _ARRAY_NDIM.get(key, 1)
        if a.ndim != ndim:
            want = "(T,)" if ndim == 1 else "(T, D)"
            raise RolloutError(f"In {where}, array {key!r} has shape {a.shape}, expected {want}.")
        with np.errstate(over="ignore"):
            arrays[key] = np.ascontiguousarray(a, dtype=np.float32)
    t = arrays["qpos"].shape[0]
    for key, a in arrays.items():
        if a.shape[0] != t:
            raise RolloutError(
                f"In {where}, array {key!r} has {a.shape[0]} steps but 'qpos' has {t}; "
                f"all arrays must share T."
            )
    if arrays["ref_qpos"].shape != arrays["qpos"].shape:
        raise RolloutError(
            f"In {where}, 'ref_qpos' has shape {arrays['ref_qpos'].shape} but 'qpos' has "
            f"{arrays['qpos'].shape}; they must match."
        )
    return arrays, scalars


def _json_default(obj: Any) -> Any:
    """Numpy scalars and arrays in ``meta`` become python numbers and lists."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------- HDF5


def save_rollouts(path: str | os.PathLike[str], episodes: Sequence[Mapping[str, Any]],
                  meta: Mapping[str, Any]) -> Path:
    """Validate and atomically write ``episodes`` and ``meta`` to one HDF5 file; return its path.

    Each episode holds ``qpos``/``ref_qpos`` (T, nq), ``ctrl`` (T, nu), ``reward`` (T,) and any
    ``err_*``/``rew_*`` (T,) arrays, stored float32, and the scalars ``clip``, ``start``,
    ``length``, ``cause`` (and optionally ``fraction``). ``meta`` must be JSON-able (numpy
    scalars and arrays are turned into numbers and lists). Everything is checked before
    anything is written; the file appears under ``path`` only complete (temp file in the same
    folder, fsync, ``os.replace``), and on any failure a file already at ``path`` is untouched.
    """
    path = Path(path)
    checked = [_check_episode(ep, f"episode {i}") for i, ep in enumerate(episodes)]
    if not isinstance(meta, Mapping):
        raise RolloutError(f"meta is a {type(meta).__name__}, expected a JSON-able dict.")
    try:
        meta_json = json.dumps(dict(meta), default=_json_default)
    except (TypeError, ValueError) as e:
        raise RolloutError(f"meta is not JSON-serialisable ({e}).") from None
    if not path.parent.is_dir():
        raise RolloutError(f"The folder {path.parent} of rollout file {path} does not exist.")

    with atomic_path(path) as tmp, h5py.File(tmp, "w-") as f:
        f.attrs["format"] = FORMAT
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["meta"] = meta_json
        for i, (arrays, scalars) in enumerate(checked):
            g = f.create_group(f"episode_{i:04d}")
            for key, a in arrays.items():
                chunked = a.size > 0  # (gzip and checksums need chunks, which need data)
                g.create_dataset(key, data=a, compression="gzip" if chunked else None,
                                 fletcher32=chunked)
            for key, value in scalars.items():
                g.attrs[key] = value
    return path


def load_rollouts(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a file written by :func:`save_rollouts`: (episodes, meta).

    Episodes come back in order as dicts of float32 arrays and python scalars (int, float, str).
    A missing, non-HDF5, truncated or foreign file raises :class:`RolloutError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise RolloutError(f"Rollout file {path} does not exist or is not a file.")
    where = f"rollout file {path}"
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            fmt = attrs.get("format")
            fmt = fmt.decode("utf-8", "replace") if isinstance(fmt, bytes) else fmt
            if fmt != FORMAT:
                raise RolloutError(f"File {path} is not a rollout file (its format attribute is {fmt!r}).")
            if attrs.get("schema_version") != SCHEMA_VERSION:
                raise RolloutError(
                    f"Rollout file {path} has schema_version {attrs.get('schema_version')!r}, "
                    f"expected {SCHEMA_VERSION}."
                )
            groups = []
            for name, obj in f.items():
                m = _GROUP.match(name)
                if m is None or not isinstance(obj, h5py.Group):
                    raise RolloutError(f"In {where}, {name!r} is not an episode_<i> group.")
                groups.append((int(m.group(1)), name))
            groups.sort()
            if [i for i, _ in groups] != list(range(len(groups))):
                names = [n for _, n in groups]
                raise RolloutError(f"In {where}, the episode groups {names} are not numbered 0..n-1.")
            episodes = []
            for i, name in groups:
                g = f[name]
                record = {key: g.attrs[key] for key in g.attrs}
                for key, ds in g.items():
                    if not isinstance(ds, h5py.Dataset):
                        raise RolloutError(f"In {where}, {name}/{key} is not a dataset.")
                    record[key] = ds[()]
                arrays, scalars = _check_episode(record, f"{where}, {name}")
                episodes.append({**arrays, **scalars})
            meta_text = attrs.get("meta")
    except (OSError, RuntimeError, KeyError) as e:  # HDF5 reports a damaged structure in all three
        raise RolloutError(f"Rollout file {path} is not a readable HDF5 file (truncated or corrupt?).") from e
    if isinstance(meta_text, bytes):
        meta_text = meta_text.decode("utf-8", "replace")
    try:
        meta = json.loads(meta_text) if isinstance(meta_text, str) else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise RolloutError(f"In {where}, the meta attribute is missing or is not a JSON object.")
    return episodes, meta


# --------------------------------------------------------------------------- video


def _body_radius(model, data, root: int) -> float:
    """Radius (m) of a sphere about the root body that holds every geom of the body, at ``data``."""
    geoms = np.flatnonzero(model.body_rootid[model.geom_bodyid] == root)
    dist = np.linalg.norm(data.geom_xpos[geoms] - data.xpos[root], axis=1) + model.geom_rbound[geoms]
    return float(dist.max())


def render_episode(path: str | os.PathLike[str], body: str, qpos, ref_qpos=None, fps: float = 50.0,
                   width: int = 320, height: int = 240, contacts: str = "body",
                   markers=()) -> Path:
    """Render ``qpos`` (T, nq) of ``body`` to an mp4 (H.264) at ``path``; return the path.

    Each frame is (height, width, 3), or with ``ref_qpos`` (T, nq) the reference (left) and the
    policy (right) side by side, (height, 2 * width, 3). A free camera follows each panel's root
    body from a fixed angle, far enough that the body's bounding sphere fits the view; shadows
    are off (they cost most of the render time in software). ``width`` and ``height`` must be
    even (libx264 with yuv420p). Written atomically like the HDF5 files. Needs an OpenGL backend
    (``MUJOCO_GL=egl`` on a headless machine, set before importing mujoco). ``markers`` is a
    sequence of (positions (T, M, 3) metres, NaN: not drawn; rgba; radius metres) drawn as
    spheres on the (last) panel, such as recorded keypoints.
    """
    import imageio
    import mujoco

    from ncssm_env.body import PREFIX, body_def, build_model

    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"Video path {path} must end in .mp4.")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2 or v % 2:
            raise ValueError(f"{name} is {v!r}, expected an even int >= 2 (libx264 needs even sizes).")
    if (isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating))
            or not math.isfinite(fps) or fps <= 0):
        raise ValueError(f"fps is {fps!r}, expected a positive finite number.")
    bdef = body_def(body)
    model = build_model(body, contacts=contacts)
    panels = [np.asarray(qpos, dtype=np.float64)]
    if ref_qpos is not None:
        panels.insert(0, np.asarray(ref_qpos, dtype=np.float64))
    for name, q in zip(("ref_qpos", "qpos") if ref_qpos is not None else ("qpos",), panels):
        if q.ndim != 2 or q.shape[1] != model.nq or q.shape[0] < 1:
            raise ValueError(
                f"{name} has shape {q.shape}, expected (T, {model.nq}) with T >= 1 for body {body!r}."
            )
        if not np.isfinite(q).all():
            raise ValueError(f"{name} holds non-finite values; it cannot be rendered.")
    if panels[0].shape != panels[-1].shape:
        raise ValueError(
            f"ref_qpos has shape {panels[0].shape} but qpos has {panels[-1].shape}; they must match."
        )
    markers = [(np.asarray(xyz, dtype=np.float64), rgba, r) for xyz, rgba, r in markers]
    for xyz, rgba, r in markers:
        if xyz.ndim != 3 or xyz.shape[0] != panels[-1].shape[0] or xyz.shape[2] != 3 \
                or np.shape(rgba) != (4,) or not 0 < r < 1:
            raise ValueError(f"A marker array has shape {xyz.shape}, colour {rgba!r} and radius "
                             f"{r!r}, expected ({panels[-1].shape[0]}, M, 3), 4 numbers and "
                             f"metres in (0, 1).")
    if not path.parent.is_dir():
        raise ValueError(f"The folder {path.parent} of video {path} does not exist.")

    glob = model.vis.global_
    glob.offwidth, glob.offheight = max(glob.offwidth, width), max(glob.offheight, height)
    data = mujoco.MjData(model)
    root = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, PREFIX + bdef.root)
    mujoco.mj_forward(model, data)
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.azimuth, cam.elevation = 135.0, -25.0  # a front-left three-quarter view from above
    # model.stat.extent (0.8 m for both bodies) is set by the arena, so size the view by the body.
    cam.distance = _body_radius(model, data, root) / math.sin(math.radians(glob.fovy / 2))

    renderer = mujoco.Renderer(model, height, width)
    # Shadows (a 4096^2 shadow map) take ~3/4 of a rodent frame under Mesa's software EGL
    # (~0.33 s vs ~0.09 s at 320x240) and barely show under the overhead light.
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    try:
        with atomic_path(path, suffix=".mp4") as tmp:
            writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                        pixelformat="yuv420p", macro_block_size=1,
                                        ffmpeg_log_level="quiet")  # errors: ours
            with writer, warnings.catch_warnings():
                # The writer forks ffmpeg on its first frame and execs at once, which is safe.
                warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
                for t in range(panels[0].shape[0]):
                    images = []
                    for q in panels:
                        data.qpos[:] = q[t]
                        mujoco.mj_forward(model, data)
                        cam.lookat[:] = data.xpos[root]
                        renderer.update_scene(data, camera=cam)
                        if q is panels[-1]:
                            _draw_markers(renderer.scene, [(xyz[t], rgba, r)
                                                           for xyz, rgba, r in markers])
                        images.append(renderer.render())
                    writer.append_data(np.concatenate(images, axis=1))
    finally:
        renderer.close()
    return path


def _draw_markers(scene, markers) -> None:
    """Add a sphere to ``scene`` at each finite position of ``markers`` [((M, 3), rgba,
    radius)]."""
    import mujoco

    eye = np.eye(3).ravel()
    for xyz, rgba, radius in markers:
        size = np.array([radius, 0.0, 0.0])
        for p in xyz[np.isfinite(xyz).all(axis=1)]:
            if scene.ngeom >= scene.maxgeom:
                return
            mujoco.mjv_initGeom(scene.geoms[scene.ngeom], mujoco.mjtGeom.mjGEOM_SPHERE, size, p,
                                eye, np.asarray(rgba, dtype=np.float32))
            scene.ngeom += 1
