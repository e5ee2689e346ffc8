"""Recorded 3D keypoints in: NWB (ndx-pose), DANNCE ``.mat`` and SLEAP analysis ``.h5``.

:func:`read_keypoints` gives one :class:`Keypoints`: ``xyz`` (T, K, 3) float64 with NaN where a
keypoint is missing, its K ``names``, the T ``times`` in seconds, the (T, K) ``confidence`` when
the file has one, and the ``unit`` the file states. The unit is only reported, never trusted:
ndx-pose series often say ``pixels`` while holding millimetres, so the fit detects units from
bone lengths.

Formats, chosen by extension or ``format``:

``nwb``
    Read through ``h5py`` over ndx-pose's documented layout, so files that today's ``pynwb``
    refuses are read too (ndx-pose 0.1.x writes an empty ``edges`` that ndx-pose 0.4 rejects):
    ``processing/<module>/<PoseEstimation>/<keypoint>/data`` (T, 3), ``confidence`` (T,),
    ``timestamps`` (T,) or ``starting_time`` with its ``rate``. The keypoint order is the
    group's ``nodes`` when it has them, else its series in name order. A file with several
    PoseEstimation groups holds several animals: ``animal`` picks one by group name.
``mat``
    DANNCE's predictions: ``pred`` (T, 3, K), MATLAB v5 (``scipy.io``) or v7.3 (HDF5). It has no
    names and no times: ``names`` and ``fps`` must be given.
``sleap``
    A SLEAP analysis file (``.h5``): ``tracks`` (n_tracks, D, K, T) as h5py reads it, D 2 or 3,
    ``node_names``, ``track_names``, ``point_scores``; ``fps`` must be given. A file with
    several tracks holds several animals: ``animal`` picks one by track name.

Every problem is a :class:`~ncssm_data.errors.ClipError` of one sentence naming the file and
what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ncssm_data.errors import ClipError

FORMATS = {".nwb": "nwb", ".mat": "mat", ".h5": "sleap", ".hdf5": "sleap"}


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
    ``"mat"``, ``"sleap"``; default: from the extension). ``names`` and ``fps`` are needed where
    the file has none (``mat``; ``fps`` for ``sleap``) and override nothing a file states."""
    path = Path(path)
    if format is None:
        format = FORMATS.get(path.suffix.lower())
        if format is None:
            raise ClipError(f"Keypoint file {path} has extension {path.suffix!r}, which names no "
                            f"format; expected {', '.join(sorted(FORMATS))} or --format "
                            f"nwb|mat|sleap.")
    if format not in ("nwb", "mat", "sleap"):
        raise ClipError(f"Keypoint format {format!r} is unknown; expected nwb, mat or sleap.")
    if not path.is_file():
        raise ClipError(f"Keypoint file {path} does not exist.")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ClipError(f"The frame rate for {path} is {fps!r}; expected a positive number.")
    kp = {"nwb": _read_nwb, "mat": _read_mat, "sleap": _read_sleap}[format](
        path, animal, names, fps)
    return _checked(kp)


# --- NWB (ndx-pose), read through h5py --------------------------------------------------------


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


def _pose_groups(f: h5py.File) -> dict[str, h5py.Group]:
    """PoseEstimation groups under ``processing/*``: by ``neurodata_type``, or by name."""
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
            kind = _text(group.attrs.get("neurodata_type", ""))
            if kind == "PoseEstimation" or (not kind and name.startswith("PoseEstimation")):
                found[name] = group
    return found


def _read_nwb(path: Path, animal, names, fps) -> Keypoints:
    with _open(path, "NWB file") as f:
        groups = _pose_groups(f)
        if not groups:
            raise ClipError(f"NWB file {path} holds no ndx-pose PoseEstimation group under "
                            f"processing/ (expected processing/<module>/PoseEstimation/"
                            f"<keypoint>/data).")
        key = _pick_animal(f"NWB file {path}", animal, sorted(groups))
        group = groups[key]
        series = {n: g for n, g in group.items()
                  if isinstance(g, h5py.Group) and isinstance(g.get("data"), h5py.Dataset)}
        if not series:
            raise ClipError(f"In NWB file {path}, {group.name} holds no keypoint series "
                            f"(<keypoint>/data datasets).")
        order = sorted(series)
        nodes = group.get("nodes")
        if isinstance(nodes, h5py.Dataset) and nodes.ndim == 1 and len(nodes):
            listed = [_text(n) for n in nodes[()]]
            if sorted(listed) == order:
                order = listed
        where = f"NWB file {path}"
        xyz, conf, times, unit = [], [], None, None
        for name in order:
            g = series[name]
            data = np.asarray(g["data"][()], np.float64)
            if data.ndim != 2 or data.shape[1] != 3:
                raise ClipError(f"In {where}, {g.name}/data has shape {data.shape}, expected "
                                f"(T, 3): 3D keypoints.")
            xyz.append(data)
            c = g.get("confidence")
            conf.append(None if c is None else np.asarray(c[()], np.float64))
            t = _series_times(g, len(data), where)
            if times is None:
                times, unit = t, _text(g["data"].attrs.get("unit", "")) or None
            elif len(t) != len(times) or not np.allclose(t, times):
                raise ClipError(f"In {where}, {g.name} has other timestamps than "
                                f"{series[order[0]].name}; expected one clock for all keypoints.")
    lengths = {len(a) for a in xyz} | {len(c) for c in conf if c is not None}
    if len(lengths) != 1:
        raise ClipError(f"In NWB file {path}, the keypoint series have different lengths "
                        f"{sorted(lengths)}; expected one.")
    confidence = None if any(c is None for c in conf) else np.stack(conf, axis=1)
    return Keypoints(np.stack(xyz, axis=1), tuple(order), times, confidence, unit, str(path),
                     key if len(groups) > 1 else None)


def _series_times(g: h5py.Group, n: int, where: str) -> np.ndarray:
    if isinstance(g.get("timestamps"), h5py.Dataset):
        t = np.asarray(g["timestamps"][()], np.float64)
        if t.shape != (n,):
            raise ClipError(f"In {where}, {g.name}/timestamps has shape {t.shape}, expected "
                            f"({n},), one per frame.")
        return t
    start = g.get("starting_time")
    if isinstance(start, h5py.Dataset) and "rate" in start.attrs:
        rate = float(start.attrs["rate"])
        if not (np.isfinite(rate) and rate > 0):
            raise ClipError(f"In {where}, {g.name}/starting_time has rate {rate!r}, expected "
                            f"a positive number.")
        return float(start[()]) + np.arange(n) / rate
    raise ClipError(f"In {where}, {g.name} has neither timestamps nor starting_time with a "
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
