"""Recorded 3D keypoints in: NWB (ndx-pose), DANNCE ``.mat``, SLEAP ``.slp`` and SLEAP analysis
``.h5``.

:func:`read_keypoints` gives one :class:`Keypoints`: ``xyz`` (T, K, 3) float64 with NaN where a
keypoint is missing, its K ``names``, the T ``times`` in seconds, the (T, K) ``confidence`` when
the file has one, and the ``unit`` the file states. The unit is only reported, never trusted:
ndx-pose series often say ``pixels`` while holding millimetres, so the fit detects units from
bone lengths. Coordinates are read as stored (a series' ``conversion`` and ``offset`` are not
applied).

Formats, chosen by extension or ``format``:

``nwb``
    ndx-pose's ``PoseEstimation`` (or ``MultiCameraPoseEstimation``) in
    ``processing/<module>/``, one ``PoseEstimationSeries`` per keypoint: ``data`` (T, 3),
    ``confidence`` (T,), ``timestamps`` (T,) or ``starting_time`` with its ``rate``, ``unit``.
    Read through ``pynwb`` and ``ndx_pose`` when both are installed (the ``keypoints`` extra);
    when they are not, or ``pynwb`` cannot build the file (files written by ndx-pose 0.1.x hold
    an empty ``edges`` that ndx-pose 0.4 rejects), read through ``h5py`` over the same layout.
    Both give the same :class:`Keypoints`. The keypoint order is the skeleton's ``nodes`` (the
    linked ``Skeleton``'s, or the group's own in files before ndx-pose 0.2) when they name the
    series, else the series in name order. A file with several such groups holds several
    animals: ``animal`` picks one by group name.
``mat``
    DANNCE's predictions: ``pred`` (T, 3, K), MATLAB v5 (``scipy.io``) or v7.3 (HDF5). It has no
    names and no times: ``names`` and ``fps`` must be given.
``slp``
    SLEAP labels (``.slp``) through ``sleap_io.load_slp`` (the ``keypoints`` extra). The fit
    needs 3D points, so only a recording session's triangulated instances are read (each
    ``InstanceGroup``'s ``instance_3d``: points (K, 3), ``point_scores`` when predicted); a file
    of 2D instances only is refused, as 2D analysis files are. Names are the 3D instances'
    skeleton nodes; frames run from the animal's first labelled frame to its last (NaN where
    unlabelled), ``times`` frame index / fps, with the fps the session's videos state, else
    ``fps``. Animals are named by the group's identity, else its 2D instances' track; a file
    with several needs ``animal``.
``sleap``
    A SLEAP analysis file (``.h5``), through ``h5py``: ``tracks`` (n_tracks, D, K, T) as h5py
    reads it, D 2 or 3 (2 refused), ``node_names``, ``track_names``, ``point_scores``; ``fps``
    must be given. A file with several tracks holds several animals: ``animal`` picks one by
    track name.

Every problem is a :class:`~ncssm_data.errors.ClipError` of one sentence naming the file and
what was expected.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ncssm_data.errors import ClipError

FORMATS = {".nwb": "nwb", ".mat": "mat", ".slp": "slp", ".h5": "sleap", ".hdf5": "sleap"}


@dataclass(frozen=True)
class Keypoints:
    """3D keypoints of one animal: ``xyz`` (T, K, 3), NaN where missing; ``names`` (K);
    ``times`` (T,) seconds; ``confidence`` (T, K) or None; ``unit`` as the file states it (or
    None); ``source`` the file, ``animal`` the animal picked (or None)."""

    xyz: np.ndarray
    names: tuple[str, ...]
    times: np.ndarray
    confidence: np.ndarray | None
    unit: str | None
    source: str
    animal: str | None = None

    @property
    def fps(self) -> float:
        """The median frame rate of ``times``."""
        return float(1.0 / np.median(np.diff(self.times))) if len(self.times) > 1 else float("nan")


def read_keypoints(path: str | Path, format: str | None = None, *, animal: str | None = None,
                   names: Sequence[str] | None = None, fps: float | None = None) -> Keypoints:
    """The keypoints in ``path`` (see the module docstring for each ``format``: ``"nwb"``,
    ``"mat"``, ``"slp"``, ``"sleap"``; default: from the extension). ``names`` and ``fps`` are
    needed where the file has none (``mat``; ``fps`` for ``sleap``, and for ``slp`` when its
    videos state none) and override nothing a file states."""
    path = Path(path)
    if format is None:
        format = FORMATS.get(path.suffix.lower())
        if format is None:
            raise ClipError(f"Keypoint file {path} has extension {path.suffix!r}, which names no "
                            f"format; expected {', '.join(sorted(FORMATS))} or --format "
                            f"nwb|mat|slp|sleap.")
    if format not in ("nwb", "mat", "slp", "sleap"):
        raise ClipError(f"Keypoint format {format!r} is unknown; expected nwb, mat, slp or "
                        f"sleap.")
    if not path.is_file():
        raise ClipError(f"Keypoint file {path} does not exist.")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ClipError(f"The frame rate for {path} is {fps!r}; expected a positive number.")
    kp = {"nwb": _read_nwb, "mat": _read_mat, "slp": _read_slp, "sleap": _read_sleap}[format](
        path, animal, names, fps)
    return _checked(kp)


# --- NWB (ndx-pose): through pynwb, or h5py over the same layout ----------------------------

POSE_KINDS = ("PoseEstimation", "MultiCameraPoseEstimation")


@dataclass(frozen=True)
class _Series:
    """One keypoint's PoseEstimationSeries as either reader found it; ``where`` its HDF5 path."""

    name: str
    where: str
    data: np.ndarray
    confidence: np.ndarray | None
    unit: str | None
    timestamps: np.ndarray | None
    starting_time: float | None
    rate: float | None


@dataclass(frozen=True)
class _Pose:
    """The picked pose group: its name, how many the file holds, its HDF5 path, its skeleton's
    nodes (or None) and its series."""

    key: str
    n_groups: int
    where: str
    nodes: list[str] | None
    series: list[_Series]


def _open(path: Path, what: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ClipError(f"{what} {path} is not a readable HDF5 file (truncated or corrupt?).") \
            from err


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _kind(obj: h5py.HLObject) -> str:
    return _text(obj.attrs.get("neurodata_type", ""))


def _read_nwb(path: Path, animal, names, fps) -> Keypoints:
    pose = _pose_via_pynwb(path, animal)
    if pose is None:
        pose = _pose_via_h5py(path, animal)
    return _nwb_keypoints(path, pose)


def _no_pose(path: Path) -> ClipError:
    return ClipError(f"NWB file {path} holds no ndx-pose PoseEstimation group under "
                     f"processing/ (expected processing/<module>/PoseEstimation/"
                     f"<keypoint>/data).")


def _pose_via_pynwb(path: Path, animal: str | None) -> _Pose | None:
    """The pose group through ``pynwb`` and ndx-pose's classes; None when either is not
    installed or ``pynwb`` cannot build the file (the caller then reads it with h5py)."""
    try:
        import ndx_pose
        import pynwb
    except ImportError:
        return None
    kinds = tuple(getattr(ndx_pose, k) for k in POSE_KINDS if hasattr(ndx_pose, k))
    with warnings.catch_warnings():  # e.g. "Ignoring cached namespace ndx-pose 0.1.1"
        warnings.simplefilter("ignore")
        try:
            io = pynwb.NWBHDF5IO(str(path), "r")
        except Exception:  # noqa: BLE001 - not HDF5, not NWB: h5py's reader says which
            return None
        with io:
            try:
                nwb = io.read()
            except Exception:  # noqa: BLE001 - ConstructError (old ndx-pose) and the like
                return None
            groups = {}
            for module in nwb.processing.values():
                for name, obj in module.data_interfaces.items():
                    if isinstance(obj, kinds):
                        groups[name] = (f"/processing/{module.name}/{name}", obj)
            if not groups:
                raise _no_pose(path)
            key = _pick_animal(f"NWB file {path}", animal, sorted(groups))
            where, group = groups[key]
            skeleton = group.skeleton
            nodes = None if skeleton is None else [_text(n) for n in skeleton.nodes[:]]
            series = []
            for name, s in group.pose_estimation_series.items():
                series.append(_Series(
                    name, f"{where}/{name}", np.asarray(s.data[()], np.float64),
                    None if s.confidence is None else np.asarray(s.confidence[()], np.float64),
                    s.unit or None,
                    None if s.timestamps is None else np.asarray(s.timestamps[()], np.float64),
                    None if s.rate is None else float(s.starting_time or 0.0),
                    None if s.rate is None else float(s.rate)))
    return _Pose(key, len(groups), where, nodes, series)


def _pose_groups(f: h5py.File) -> dict[str, h5py.Group]:
    """Pose groups under ``processing/*``: by ``neurodata_type``, or by name."""
    found = {}
    processing = f.get("processing")
    if not isinstance(processing, h5py.Group):
        return found
    for module in processing.values():
        if not isinstance(module, h5py.Group):
            continue
        for name, group in module.items():
            if not isinstance(group, h5py.Group):
                continue
            kind = _kind(group)
            if kind in POSE_KINDS or (not kind and name.startswith("PoseEstimation")):
                found[name] = group
    return found


def _pose_via_h5py(path: Path, animal: str | None) -> _Pose:
    """The pose group through h5py over ndx-pose's layout (any ndx-pose version)."""
    with _open(path, "NWB file") as f:
        groups = _pose_groups(f)
        if not groups:
            raise _no_pose(path)
        key = _pick_animal(f"NWB file {path}", animal, sorted(groups))
        group = groups[key]
        nodes = group.get("nodes")  # ndx-pose < 0.2 keeps them on the group; later ones link
        skeletons = [g for g in group.values()  # a Skeleton (the link named as it is)
                     if isinstance(g, h5py.Group) and _kind(g) == "Skeleton"]
        if not isinstance(nodes, h5py.Dataset) and len(skeletons) == 1:
            nodes = skeletons[0].get("nodes")
        nodes = ([_text(n) for n in nodes[()]] if isinstance(nodes, h5py.Dataset)
                 and nodes.ndim == 1 else None)
        series = []
        for name, g in group.items():
            if not (isinstance(g, h5py.Group) and isinstance(g.get("data"), h5py.Dataset)
                    and _kind(g) in ("", "PoseEstimationSeries")):
                continue
            c, t, start = g.get("confidence"), g.get("timestamps"), g.get("starting_time")
            rated = isinstance(start, h5py.Dataset) and "rate" in start.attrs
            series.append(_Series(
                name, g.name, np.asarray(g["data"][()], np.float64),
                np.asarray(c[()], np.float64) if isinstance(c, h5py.Dataset) else None,
                _text(g["data"].attrs.get("unit", "")) or None,
                np.asarray(t[()], np.float64) if isinstance(t, h5py.Dataset) else None,
                float(start[()]) if rated else None,
                float(start.attrs["rate"]) if rated else None))
        where = group.name
    return _Pose(key, len(groups), where, nodes, series)


def _nwb_keypoints(path: Path, pose: _Pose) -> Keypoints:
    """The keypoints of ``pose``, checked alike whichever reader found it."""
    where = f"NWB file {path}"
    series = {s.name: s for s in pose.series}
    if not series:
        raise ClipError(f"In {where}, {pose.where} holds no keypoint series "
                        f"(<keypoint>/data datasets).")
    order = sorted(series)
    if pose.nodes and sorted(pose.nodes) == order:
        order = list(pose.nodes)
    xyz, conf, times, unit = [], [], None, None
    for name in order:
        s = series[name]
        if s.data.ndim != 2 or s.data.shape[1] != 3:
            raise ClipError(f"In {where}, {s.where}/data has shape {s.data.shape}, expected "
                            f"(T, 3): 3D keypoints.")
        xyz.append(s.data)
        conf.append(s.confidence)
        t = _series_times(s, len(s.data), where)
        if times is None:
            times, unit = t, s.unit
        elif len(t) != len(times) or not np.allclose(t, times):
            raise ClipError(f"In {where}, {s.where} has other timestamps than "
                            f"{series[order[0]].where}; expected one clock for all keypoints.")
    lengths = {len(a) for a in xyz} | {len(c) for c in conf if c is not None}
    if len(lengths) != 1:
        raise ClipError(f"In NWB file {path}, the keypoint series have different lengths "
                        f"{sorted(lengths)}; expected one.")
    confidence = None if any(c is None for c in conf) else np.stack(conf, axis=1)
    return Keypoints(np.stack(xyz, axis=1), tuple(order), times, confidence, unit, str(path),
                     pose.key if pose.n_groups > 1 else None)


def _series_times(s: _Series, n: int, where: str) -> np.ndarray:
    if s.timestamps is not None:
        if s.timestamps.shape != (n,):
            raise ClipError(f"In {where}, {s.where}/timestamps has shape {s.timestamps.shape}, "
                            f"expected ({n},), one per frame.")
        return s.timestamps
    if s.rate is not None:
        if not (np.isfinite(s.rate) and s.rate > 0):
            raise ClipError(f"In {where}, {s.where}/starting_time has rate {s.rate!r}, "
                            f"expected a positive number.")
        return s.starting_time + np.arange(n) / s.rate
    raise ClipError(f"In {where}, {s.where} has neither timestamps nor starting_time with a "
                    f"rate.")


# --- DANNCE .mat ------------------------------------------------------------------------------


def _read_mat(path: Path, animal, names, fps) -> Keypoints:
    if names is None or fps is None:
        raise ClipError(f"DANNCE file {path} names no keypoints and no frame rate; give both "
                        f"(the config's keypoint order, and --fps).")
    pred = None
    if h5py.is_hdf5(path):  # MATLAB v7.3: HDF5, arrays stored transposed
        with _open(path, "DANNCE file") as f:
            if isinstance(f.get("pred"), h5py.Dataset):
                pred = np.asarray(f["pred"][()]).T
    else:
        import scipy.io

        try:
            pred = scipy.io.loadmat(path, variable_names=["pred"]).get("pred")
        except Exception as err:  # noqa: BLE001 - scipy raises many kinds for a bad file
            cause = (str(err).strip().splitlines() or [""])[0].rstrip(".")
            raise ClipError(f"DANNCE file {path} is not a readable MATLAB file "
                            f"({type(err).__name__}: {cause}).") from err
    if pred is None:
        raise ClipError(f"DANNCE file {path} has no 'pred' array, expected pred (T, 3, K).")
    if pred.dtype.kind not in "fiu" or pred.ndim != 3 or pred.shape[1] != 3:
        raise ClipError(f"In DANNCE file {path}, pred has shape {pred.shape} ({pred.dtype}), "
                        f"expected numbers of shape (T, 3, K).")
    if pred.shape[2] != len(names):
        raise ClipError(f"In DANNCE file {path}, pred has {pred.shape[2]} keypoints, but "
                        f"{len(names)} names were given.")
    xyz = np.transpose(np.asarray(pred, np.float64), (0, 2, 1))
    return Keypoints(xyz, tuple(names), np.arange(len(xyz)) / float(fps), None, None, str(path))


# --- SLEAP labels .slp (sleap-io) -------------------------------------------------------------


def _read_slp(path: Path, animal, names, fps) -> Keypoints:
    where = f"SLEAP file {path}"
    try:
        import sleap_io
    except ImportError as err:
        raise ClipError(f"Reading {where} needs sleap-io (pip install 'ncssm[keypoints]').") \
            from err
    if not h5py.is_hdf5(path):
        raise ClipError(f"{where} is not a readable HDF5 file (truncated or corrupt?).")
    try:
        labels = sleap_io.load_slp(str(path), open_videos=False)
    except OSError as err:
        raise ClipError(f"{where} is not a readable HDF5 file (truncated or corrupt?).") from err
    except Exception as err:  # noqa: BLE001 - sleap-io raises many kinds for a bad file
        cause = (str(err).strip().strip("\"'").splitlines() or [""])[0].rstrip(".")
        raise ClipError(f"{where} is not SLEAP labels that sleap-io reads "
                        f"({type(err).__name__}: {cause}).") from err
    sessions = [s for s in labels.sessions
                if any(g.instance_3d is not None for fg in s.frame_groups.values()
                       for g in fg.instance_groups)]
    if not sessions:
        if any(len(lf.instances) for lf in labels.labeled_frames):
            raise ClipError(f"{where} holds 2D points; the fit needs 3D keypoints (triangulate "
                            f"them first, e.g. with sleap-anipose).")
        raise ClipError(f"{where} holds no instances; expected 3D points (a recording "
                        f"session's instance groups).")
    if len(sessions) > 1:
        raise ClipError(f"{where} holds 3D points from {len(sessions)} recording sessions; "
                        f"expected one.")
    session = sessions[0]
    rows = [(int(f), _slp_animal(g), g.instance_3d)
            for f, fg in sorted(session.frame_groups.items())
            for g in fg.instance_groups if g.instance_3d is not None]
    animals = sorted({a for _, a, _ in rows if a is not None})
    if animals and any(a is None for _, a, _ in rows):
        raise ClipError(f"{where} has 3D instances named by neither identity nor track beside "
                        f"animals {', '.join(animals)}; expected every instance named.")
    if not animals and animal is not None:
        raise ClipError(f"{where} names no animals (no identity or track on its 3D "
                        f"instances), so --animal {animal} picks none; leave it out.")
    picked = _pick_animal(where, animal, animals) if animals else None
    rows = [(f, inst) for f, a, inst in rows if a == picked]
    frames = [f for f, _ in rows]
    if len(set(frames)) != len(frames):
        twice = next(f for f in frames if frames.count(f) > 1)
        raise ClipError(f"{where} has 2 3D instances of animal {picked or '(unnamed)'} in frame "
                        f"{twice}; expected one per frame.")
    nodes = tuple(_text(n) for n in rows[0][1].skeleton.node_names)
    if any(tuple(inst.skeleton.node_names) != nodes for _, inst in rows):
        raise ClipError(f"{where} uses several skeletons for animal {picked or '(unnamed)'}; "
                        f"expected one.")
    fps = _slp_fps(where, session, labels, fps)
    first = frames[0]
    xyz = np.full((frames[-1] - first + 1, len(nodes), 3), np.nan)
    scored = any(getattr(inst, "point_scores", None) is not None for _, inst in rows)
    conf = np.full(xyz.shape[:2], np.nan) if scored else None
    for f, inst in rows:
        points = inst.numpy()
        if points.shape != (len(nodes), 3):
            raise ClipError(f"In {where}, frame {f} holds 3D points of shape {points.shape}, "
                            f"expected ({len(nodes)}, 3).")
        xyz[f - first] = points
        if scored and getattr(inst, "point_scores", None) is not None:
            conf[f - first] = inst.point_scores
    return Keypoints(xyz, nodes, np.arange(first, frames[-1] + 1) / fps, conf, None, str(path),
                     picked if len(animals) > 1 else None)


def _slp_animal(group) -> str | None:
    """An instance group's animal: its identity's name, else its 2D instances' one track."""
    if group.identity is not None and group.identity.name:
        return group.identity.name
    tracks = {i.track.name for i in group.instances if i.track is not None and i.track.name}
    return tracks.pop() if len(tracks) == 1 else None


def _slp_fps(where: str, session, labels, fps: float | None) -> float:
    """The frame rate the session's videos (else the file's videos) state, else ``fps``."""
    stated = {float(v.fps) for v in (session.videos or labels.videos)
              if v.fps is not None and np.isfinite(v.fps) and v.fps > 0}
    if len(stated) > 1:
        raise ClipError(f"In {where}, the videos state frame rates "
                        f"{', '.join(f'{r:g}' for r in sorted(stated))}; expected one.")
    if stated:
        return stated.pop()
    if fps is None:
        raise ClipError(f"{where} states no frame rate (its videos have none); give --fps.")
    return float(fps)


# --- SLEAP analysis .h5 -----------------------------------------------------------------------


def _read_sleap(path: Path, animal, names, fps) -> Keypoints:
    if fps is None:
        raise ClipError(f"SLEAP analysis file {path} has no frame rate; give --fps.")
    with _open(path, "SLEAP analysis file") as f:
        if not isinstance(f.get("tracks"), h5py.Dataset) or "node_names" not in f:
            raise ClipError(f"SLEAP analysis file {path} has no 'tracks' and 'node_names', "
                            f"expected SLEAP's analysis export.")
        tracks = np.asarray(f["tracks"][()], np.float64)  # (n_tracks, D, K, T)
        nodes = [_text(n) for n in f["node_names"][()]]
        track_names = ([_text(n) for n in f["track_names"][()]] if "track_names" in f
                       else [str(i) for i in range(len(tracks))])
        scores = np.asarray(f["point_scores"][()], np.float64) if "point_scores" in f else None
    if tracks.ndim != 4 or tracks.shape[1] not in (2, 3) or tracks.shape[2] != len(nodes):
        raise ClipError(f"In SLEAP analysis file {path}, tracks has shape {tracks.shape}, "
                        f"expected (n_tracks, 2 or 3, {len(nodes)}, T).")
    if tracks.shape[1] != 3:
        raise ClipError(f"SLEAP analysis file {path} holds 2D points; the fit needs 3D "
                        f"keypoints (triangulate them first, e.g. with sleap-anipose).")
    i = track_names.index(_pick_animal(f"SLEAP analysis file {path}", animal, track_names))
    xyz = np.transpose(tracks[i], (2, 1, 0))  # (T, K, 3)
    conf = None if scores is None else np.transpose(scores[i], (1, 0))
    return Keypoints(xyz, tuple(nodes), np.arange(len(xyz)) / float(fps), conf, None, str(path),
                     animal)


def _pick_animal(where: str, animal: str | None, available: list[str]) -> str:
    """``animal`` if ``available`` has it; the only one when ``animal`` is None; else one
    sentence naming them."""
    if animal is None and len(available) > 1:
        raise ClipError(f"{where} holds {len(available)} animals ({', '.join(available)}); "
                        f"pick one with --animal.")
    if animal is not None and animal not in available:
        raise ClipError(f"{where} has no animal {animal!r}; it holds {', '.join(available)}.")
    return available[0] if animal is None else animal


def _checked(kp: Keypoints) -> Keypoints:
    """One sentence for keypoints the fit cannot use: no frames, Inf, repeated names, times
    that do not increase."""
    if kp.xyz.shape[0] == 0:
        raise ClipError(f"Keypoint file {kp.source} holds no frames.")
    if np.isinf(kp.xyz).any():
        raise ClipError(f"Keypoint file {kp.source} holds Inf coordinates; expected finite "
                        f"numbers or NaN for a missing keypoint.")
    if len(set(kp.names)) != len(kp.names):
        dup = sorted({n for n in kp.names if kp.names.count(n) > 1})[0]
        raise ClipError(f"Keypoint file {kp.source} names keypoint {dup!r} twice.")
    if len(kp.times) > 1 and not (np.diff(kp.times) > 0).all():
        raise ClipError(f"In keypoint file {kp.source}, the timestamps do not increase.")
    return kp
