"""Clip files: validate, slice-read and atomically write ``clip_<i>.h5``.

One clip is one HDF5 file holding time-aligned datasets, all with the same number of frames T:

====================  ===========  ========  =========================================
dataset               shape        stored    meaning
====================  ===========  ========  =========================================
``obs`` (required*)   (T, D_obs)   float32   observation; columns named by ``obs_layout``
``ctrl`` (required*)  (T, A)       float32   ``ctrl[t]`` moved the body from frame t-1 to t
``latent_mean``       (T, Z)       float32   intention behind ``ctrl[t]``
``syllables``         (T,)         int32     syllable behind ``ctrl[t]``
``qpos``              (T, nq)      float64   full physics state, for exact replay / reset
``qvel``              (T, nv)      float64
``act``               (T, na)      float64   actuator activation state
``ctrl_expert``       (T, A)       float32   DART clips: the expert's noise-free label for
                                             ``ctrl[t]``, at the state of frame t-1
====================  ===========  ========  =========================================

* A **reference-only** clip holds ``qpos`` (and optionally ``qvel``, ``act``) without ``obs``
or ``ctrl``: motion to track, such as a fit of the body to recorded keypoints. The env computes
the observation from the body; the training modes that read what it lacks refuse it.

File attributes: ``schema_version`` (int), ``obs_layout`` (JSON string; only with ``obs``),
``body`` (str), ``control_dt`` (float, seconds), ``generator`` (str), and for a DART clip (a
noisy rollout tracking another clip of the folder) ``dart_of`` (int, that clip's index). A clip
made from a recording (``ncssm-data import``, ``fit-keypoints``) says where it came from:
``source`` (str, the file) and ``source_start_s`` (float, its first frame's time in the
recording, seconds); a keypoint fit adds ``interpolated`` (int array, the frames filled in
between fitted ones because too few keypoints were present).
Other datasets are ignored on read.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import re
import secrets
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from ncssm_data.errors import ClipError, WriteError, show, write_error
from ncssm_data.layout import (
    LEGACY_LAYOUT,
    Layout,
    check_layout,
    layout_from_json,
    layout_to_json,
    layout_width,
    obs_slice,
)

SCHEMA_VERSION = 1
CHUNK_FRAMES = 64  # frames per HDF5 chunk: a slice read touches only the chunks it overlaps
CHUNK_COLS = 64  # columns per chunk: reading one named obs slice skips the other columns


class _Spec(NamedTuple):
    ndim: int
    required: bool
    dtype: np.dtype  # how write_clip stores it


_SPECS: dict[str, _Spec] = {
    "obs": _Spec(2, True, np.dtype(np.float32)),
    "ctrl": _Spec(2, True, np.dtype(np.float32)),
    "latent_mean": _Spec(2, False, np.dtype(np.float32)),
    "syllables": _Spec(1, False, np.dtype(np.int32)),
    "qpos": _Spec(2, False, np.dtype(np.float64)),
    "qvel": _Spec(2, False, np.dtype(np.float64)),
    "act": _Spec(2, False, np.dtype(np.float64)),
    "ctrl_expert": _Spec(2, False, np.dtype(np.float32)),
}
SCHEMA_KEYS = frozenset(_SPECS)  # the clip schema's datasets
_CLIP_NAME = re.compile(r"^clip_(\d+)\.h5$")


# --------------------------------------------------------------------------- checks shared by read and write


def _check_headers(headers: Mapping[str, tuple[tuple[int, ...], np.dtype]], where: str) -> int:
    """Check the shapes and dtypes of known datasets; return T. ``headers``: key -> (shape, dtype)."""
    for key, spec in _SPECS.items():
        if spec.required and key not in headers and "qpos" not in headers:
            raise ClipError(f"In {where}, the required dataset {key!r} is missing (a clip holds "
                            f"'obs' and 'ctrl', or is reference-only with 'qpos').")
    for key, (shape, dtype) in headers.items():
        spec = _SPECS[key]
        if dtype.kind not in "iuf":
            raise ClipError(f"In {where}, dataset {key!r} has dtype {dtype}, expected a numeric (int or float) dtype.")
        if key == "syllables" and dtype.kind not in "iu":
            raise ClipError(f"In {where}, dataset 'syllables' has dtype {dtype}, expected an integer dtype.")
        if len(shape) != spec.ndim:
            want = "(T,)" if spec.ndim == 1 else "(T, D)"
            raise ClipError(f"In {where}, dataset {key!r} has shape {tuple(shape)}, expected {spec.ndim} dims {want}.")
        if any(d == 0 for d in shape[1:]):
            raise ClipError(f"In {where}, dataset {key!r} has shape {tuple(shape)}, expected a non-zero width.")
    t_key = next(key for key in _SPECS if key in headers)
    t = headers[t_key][0][0]
    for key, (shape, _) in headers.items():
        if shape[0] != t:
            raise ClipError(
                f"In {where}, dataset {key!r} has {shape[0]} frames but {t_key!r} has {t}; all datasets must share T."
            )
    return int(t)


def _check_finite(data: np.ndarray, key: str, where: str, first_frame: int = 0) -> None:
    """Raise if ``data`` (frames along axis 0, starting at absolute frame ``first_frame``) has NaN/Inf."""
    if data.dtype.kind != "f" or data.size == 0:
        return
    finite = np.isfinite(data)
    if finite.all():
        return
    rows = finite.reshape(len(data), -1)
    row = int(np.argmin(rows.all(axis=1)))
    bad = data.reshape(len(data), -1)[row][~rows[row]][0]
    what = "NaN" if np.isnan(bad) else "Inf"
    raise ClipError(f"In {where}, dataset {key!r} holds a non-finite value ({what}) at frame {first_frame + row}.")


def _check_control_dt(value: Any, where: str) -> float:
    if (
        np.ndim(value) != 0
        or isinstance(value, (bool, np.bool_, str, bytes))
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(float(value))
        or float(value) <= 0
    ):
        raise ClipError(f"In {where}, control_dt is {show(value)}, expected a positive finite number of seconds.")
    return float(value)


def _check_text(value: Any, name: str, where: str, *, empty: bool) -> str:
    """``value`` if it is a string an HDF5 attribute can hold (UTF-8, no NUL); else a ClipError."""
    if not isinstance(value, str) or (not value and not empty):
        raise ClipError(f"In {where}, {name} is {show(value)}, expected a "
                        f"{'' if empty else 'non-empty '}string.")
    if "\x00" in value or not _utf8(value):
        raise ClipError(f"In {where}, {name} is {value!r}, which HDF5 cannot store (a NUL "
                        f"character or a lone surrogate).")
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- writing


def _write_dataset(f: h5py.File, key: str, data: np.ndarray) -> None:
    """Write one dataset in chunks of ``CHUNK_FRAMES`` frames x ``CHUNK_COLS`` columns, uncompressed."""
    chunks = (min(CHUNK_FRAMES, data.shape[0]), *(min(CHUNK_COLS, d) for d in data.shape[1:]))
    f.create_dataset(key, data=data, chunks=chunks)


def write_clip(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    *,
    obs_layout: Mapping[str, tuple[int, int]] | None,
    body: str,
    control_dt: float,
    generator: str,
    dart_of: int | None = None,
    source: str | None = None,
    source_start_s: float | None = None,
    interpolated: np.ndarray | None = None,
) -> Path:
    """Validate and atomically write one clip file; return its path.

    ``arrays`` holds ``obs`` (T, D_obs) and ``ctrl`` (T, A), and optionally ``latent_mean``
    (T, Z), ``syllables`` (T,) integer, ``qpos`` (T, nq), ``qvel`` (T, nv), ``act`` (T, na);
    or, reference-only, ``qpos`` without ``obs`` or ``ctrl`` (``obs_layout`` None).
    Everything is checked before anything is written; the file appears under ``path`` only
    complete (temp file in the same folder, fsync, ``os.replace``), and on any failure a file
    already at ``path`` is left untouched.
    """
    path = Path(path)
    where = f"new clip file {path}"
    unknown = sorted(set(arrays) - set(_SPECS))
    if unknown:
        raise ClipError(f"In {where}, dataset key(s) {unknown} are unknown; known keys are {list(_SPECS)}.")
    given = {key: np.asarray(value) for key, value in arrays.items()}
    if _check_headers({key: (a.shape, a.dtype) for key, a in given.items()}, where) == 0:
        raise ClipError(f"In {where}, the datasets have 0 frames, expected at least 1.")
    if "obs" in given:
        layout = check_layout(obs_layout, given["obs"].shape[1], where)
    elif obs_layout:
        raise ClipError(f"In {where}, obs_layout is given but there is no dataset 'obs'.")
    else:
        layout = None
    _check_text(body, "body", where, empty=False)
    _check_text(generator, "generator", where, empty=True)
    dt = _check_control_dt(control_dt, where)
    dart_of = _check_dart_of(dart_of, where)
    provenance = _check_provenance(source, source_start_s, interpolated, where)

    data: dict[str, np.ndarray] = {}
    for key in _SPECS:  # canonical order
        if key not in given:
            continue
        a = given[key]
        dtype = _SPECS[key].dtype
        if dtype.kind == "i" and a.size and (a.min() < np.iinfo(dtype).min or a.max() > np.iinfo(dtype).max):
            raise ClipError(f"In {where}, dataset {key!r} has values outside the {dtype} range.")
        with np.errstate(over="ignore"):
            a = np.ascontiguousarray(a, dtype=dtype)
        _check_finite(a, key, where)  # after the cast: float64 -> float32 may overflow to Inf
        data[key] = a

    if not path.parent.is_dir():
        raise ClipError(f"In {where}, the folder {path.parent} does not exist.")
    with atomic_path(path) as tmp, h5py.File(tmp, "w-") as f:
        for key, a in data.items():
            _write_dataset(f, key, a)
        f.attrs["schema_version"] = SCHEMA_VERSION
        if layout is not None:
            f.attrs["obs_layout"] = layout_to_json(layout)
        f.attrs["body"] = body
        f.attrs["control_dt"] = dt
        f.attrs["generator"] = generator
        if dart_of is not None:
            f.attrs["dart_of"] = int(dart_of)
        for name, value in provenance.items():
            f.attrs[name] = value
    return path


def _check_provenance(source: Any, start_s: Any, interpolated: Any, where: str) -> dict[str, Any]:
    """The provenance attributes to write (those given), each checked."""
    out: dict[str, Any] = {}
    if source is not None:
        out["source"] = _check_text(source, "source", where, empty=False)
    if start_s is not None:
        ok = isinstance(start_s, (int, float, np.integer, np.floating)) and not isinstance(
            start_s, (bool, np.bool_)) and math.isfinite(start_s)
        if not ok:
            raise ClipError(f"In {where}, source_start_s is {show(start_s)}, expected a finite "
                            f"number of seconds.")
        out["source_start_s"] = float(start_s)
    if interpolated is not None:
        a = np.asarray(interpolated)
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise ClipError(f"In {where}, interpolated has shape {a.shape} and dtype {a.dtype}, "
                            f"expected a 1-D array of frame indices.")
        out["interpolated"] = a.astype(np.int64)
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """A temp path in ``path``'s folder (ending in ``suffix``) to write the new file to.

    When the block ends, the temp file is synced and renamed onto ``path``, and the folder is
    synced. If the block raises, the temp file is removed and a file already at ``path`` is
    untouched. Every file of the project that must never be seen half-written goes through here.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)) and not isinstance(err, WriteError) and \
                (refused := write_error(path, err)) is not None:
            raise refused from None  # a full disk, a read-only folder: one sentence
        raise
    _fsync_folder(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`: the old file or the new one,
    never half of either."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        tmp.write_text(text)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Header:
    """What opening a clip learns without reading data."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    length: int
    layout: Layout
    legacy: bool  # no obs_layout attribute: LEGACY_LAYOUT assumed
    body: str | None
    control_dt: float | None
    dart_of: int | None = None  # a DART clip: the index of the clip it tracked
    provenance: tuple = ()  # (name, value) of source, source_start_s, interpolated as stored


def check_stored(ds: h5py.Dataset, key: str, where: str) -> None:
    """Refuse dataset ``ds`` unless the file holds all of its data. HDF5 reads chunks that were
    never written (and a contiguous dataset never allocated) as zeros, so a header declaring
    10**9 frames in a file of a few KB would have a reader allocate for data that is not there."""
    if ds.shape is None or ds.size == 0 or ds.external or ds.is_virtual:
        return
    if ds.chunks is not None:
        want, have, unit = math.prod(-(-n // c) for n, c in zip(ds.shape, ds.chunks)), \
            ds.id.get_num_chunks(), "chunks"
    else:
        want, have, unit = ds.nbytes, ds.id.get_storage_size(), "bytes"
    if have < want:
        size = f"{ds.shape[0]} frames (shape {ds.shape})" if ds.ndim else f"shape {ds.shape}"
        raise ClipError(f"In {where}, dataset {key!r} declares {size} but stores only {have} of "
                        f"its {want} {unit} of data, so it is refused unread (a header without "
                        f"its data?).")


def _attr_str(attrs: Mapping[str, Any], name: str, where: str) -> str | None:
    value = attrs.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise ClipError(f"In {where}, attribute {name!r} is {show(value)}, expected a string.")
    return str(value)


def _read_header(path: Path) -> _Header:
    """Open ``path`` read-only and validate its headers (shapes, dtypes, attributes) only."""
    where = f"clip file {path}"
    try:
        with h5py.File(path, "r") as f:
            headers = {}
            for key in _SPECS:
                if key in f:
                    obj = _lookup(f, key)
                    if obj is None:
                        raise ClipError(f"In {where}, {key!r} is a link that leads to nothing (dangling, a loop of "
                                        f"links or a missing file), expected a dataset.")
                    if not isinstance(obj, h5py.Dataset):
                        raise ClipError(f"In {where}, {key!r} is a {type(obj).__name__}, expected a dataset.")
                    if obj.shape is None:
                        raise ClipError(f"In {where}, dataset {key!r} is empty (a null dataspace), expected an array.")
                    check_stored(obj, key, where)
                    headers[key] = (obj.shape, obj.dtype)
            attrs = dict(f.attrs)
    except OSError as e:
        raise ClipError(f"Clip file {path} is not a readable HDF5 file (truncated or corrupt?).") from e

    length = _check_headers(headers, where)
    version = attrs.get("schema_version")
    if version is not None and not (
        np.ndim(version) == 0
        and isinstance(version, (int, float, np.integer, np.floating))
        and not isinstance(version, (bool, np.bool_))
        and version == SCHEMA_VERSION
    ):
        raise ClipError(
            f"In {where}, schema_version is {show(version)}, expected {SCHEMA_VERSION} (or none for legacy files)."
        )
    text = _attr_str(attrs, "obs_layout", where)
    if "obs" not in headers:  # reference-only: no observation, so no layout
        layout, legacy = {}, False
    elif text is None:
        obs_dim = headers["obs"][0][1]
        if layout_width(LEGACY_LAYOUT) != obs_dim:
            raise ClipError(
                f"Clip file {path} has no obs_layout attribute and its obs dim {obs_dim} does not match "
                f"the legacy {layout_width(LEGACY_LAYOUT)}."
            )
        layout, legacy = dict(LEGACY_LAYOUT), True
    else:
        layout = check_layout(layout_from_json(text, where), headers["obs"][0][1], where)
        legacy = False
    control_dt = attrs.get("control_dt")
    return _Header(
        path=path,
        shapes={key: tuple(int(d) for d in shape) for key, (shape, _) in headers.items()},
        length=length,
        layout=layout,
        legacy=legacy,
        body=_attr_str(attrs, "body", where),
        control_dt=None if control_dt is None else _check_control_dt(control_dt, where),
        dart_of=_check_dart_of(attrs.get("dart_of"), where),
        provenance=tuple(_check_provenance(
            _attr_str(attrs, "source", where), attrs.get("source_start_s"),
            attrs.get("interpolated"), where).items()),
    )


def _lookup(group: h5py.Group, key: str) -> Any:
    """The object named ``key`` in ``group``; None when there is none, or when its link leads
    nowhere (dangling, a loop of links, a missing external file)."""
    try:
        return group.get(key)
    except RuntimeError:  # h5py's "too many links" (a loop)
        return None


def _plain_name(key: Any) -> bool:
    """Whether ``key`` can name an HDF5 dataset as it is: a non-empty UTF-8 string without NUL
    (h5py cuts a name at its first NUL, so ``"a\\x00b"`` would find ``"a"``)."""
    return isinstance(key, str) and bool(key) and "\x00" not in key and _utf8(key)


def _check_dart_of(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0 \
            or value > np.iinfo(np.int64).max:
        raise ClipError(f"In {where}, dart_of is {show(value)}, expected the index (an int >= 0) "
                        f"of the clip it tracked.")
    return int(value)


def _check_agree(a: _Header, b: _Header) -> None:
    """Clips of one store share layout, body, control_dt and the widths of common datasets."""

    def differ(what: str, x: Any, y: Any) -> ClipError:
        return ClipError(f"Clip files {a.path} and {b.path} disagree on {what}: {x!r} vs {y!r}.")

    if a.layout != b.layout:
        raise differ("obs_layout", json.loads(layout_to_json(a.layout)), json.loads(layout_to_json(b.layout)))
    if a.body != b.body:
        raise differ("body", a.body, b.body)
    if (a.control_dt is None) != (b.control_dt is None) or (
        a.control_dt is not None and not math.isclose(a.control_dt, b.control_dt, rel_tol=1e-9)
    ):
        raise differ("control_dt", a.control_dt, b.control_dt)
    for key in a.shapes.keys() & b.shapes.keys():
        if a.shapes[key][1:] != b.shapes[key][1:]:
            raise differ(f"the width of {key!r}", a.shapes[key][1:], b.shapes[key][1:])


def _clip_paths(root: Path) -> list[Path]:
    """``clip_<i>.h5`` files in ``root``, sorted by the integer i (clip_2 before clip_10)."""
    found = [(int(m.group(1)), p.name, p) for p in root.iterdir() if (m := _CLIP_NAME.match(p.name)) and p.is_file()]
    return [p for _, _, p in sorted(found)]


class ClipStore:
    """A folder of ``clip_<i>.h5`` files, validated on open (headers only), read by frame slices.

    Opening reads shapes, dtypes and attributes of every clip and checks them against each
    other; data are read only by :meth:`read` / :meth:`obs` / :meth:`read_clip`, which check
    that what they read is finite. File handles are opened on first read and cached.
    """

    def __init__(self, root: str | os.PathLike[str], *, min_length: int = 1) -> None:
        if min_length < 1:
            raise ValueError(f"min_length is {min_length}, expected at least 1.")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ClipError(f"Clip folder {self.root} does not exist or is not a folder.")
        paths = _clip_paths(self.root)
        if not paths:
            raise ClipError(f"Clip folder {self.root} holds no clip_<i>.h5 files.")
        headers = [_read_header(p) for p in paths]
        for h in headers:
            if h.length < min_length:
                raise ClipError(f"Clip file {h.path} has {h.length} frames, fewer than min_length {min_length}.")
        for h in headers[1:]:
            _check_agree(headers[0], h)
        n_legacy = sum(h.legacy for h in headers)
        if n_legacy:
            warnings.warn(
                f"{n_legacy} of {len(headers)} clip files in {self.root} have no obs_layout attribute; "
                f"the default legacy layout {LEGACY_LAYOUT} is assumed.",
                UserWarning,
                stacklevel=2,
            )
        self._headers = headers
        self._handles: dict[int, h5py.File] = {}
        self._datasets: dict[tuple[int, str], h5py.Dataset] = {}
        self._pid = os.getpid()

    # ---------------------------------------------------------------- description

    def __len__(self) -> int:
        return len(self._headers)

    def __repr__(self) -> str:
        return f"ClipStore({str(self.root)!r}, clips={len(self)}, frames={int(self.lengths.sum())})"

    @property
    def paths(self) -> list[Path]:
        """The clip files, in clip order."""
        return [h.path for h in self._headers]

    @property
    def lengths(self) -> np.ndarray:
        """(n_clips,) int64: T of each clip."""
        return np.array([h.length for h in self._headers], dtype=np.int64)

    @property
    def keys(self) -> frozenset[str]:
        """The dataset keys present in every clip."""
        return frozenset.intersection(*(frozenset(h.shapes) for h in self._headers))

    @property
    def dims(self) -> dict[str, tuple[int, ...]]:
        """key -> trailing shape (``()`` for syllables, ``(D,)`` otherwise), for keys in every clip."""
        shapes = self._headers[0].shapes
        return {key: shapes[key][1:] for key in _SPECS if key in self.keys}

    @property
    def obs_layout(self) -> Layout:
        """The observation layout shared by all clips (a copy)."""
        return dict(self._headers[0].layout)

    @property
    def body(self) -> str | None:
        """The ``body`` attribute shared by all clips, or None if absent."""
        return self._headers[0].body

    @property
    def control_dt(self) -> float | None:
        """Seconds between frames, shared by all clips, or None if absent."""
        return self._headers[0].control_dt

    @property
    def dart_of(self) -> np.ndarray:
        """(n_clips,) int64: for each DART clip the index of the clip it tracked, -1 for the
        others. A DART clip that names a missing clip, or another DART clip, is refused."""
        out = np.array([-1 if h.dart_of is None else h.dart_of for h in self._headers])
        for i, j in enumerate(out):
            if j >= 0 and (j >= len(out) or out[j] >= 0):
                raise ClipError(f"Clip file {self._headers[i].path} is a DART rollout of clip {j}, "
                                f"which is not a nominal clip of {self.root}.")
        return out

    def provenance(self, i: int) -> dict[str, Any]:
        """Where clip ``i`` came from, as far as its file says: ``source`` (str),
        ``source_start_s`` (float) and ``interpolated`` (frame indices), each when present."""
        return dict(self._headers[i].provenance)

    def clip_has(self, i: int, key: str) -> bool:
        """Whether clip ``i`` holds dataset ``key``."""
        return key in self._header(i).shapes

    def has(self, key: str) -> bool:
        """Whether every clip holds dataset ``key``."""
        return key in self.keys

    # ---------------------------------------------------------------- reading

    def _header(self, i: int) -> _Header:
        i = operator.index(i)
        if not 0 <= i < len(self._headers):
            raise ClipError(f"Clip index {i} is out of range for the {len(self)} clips in {self.root}.")
        return self._headers[i]

    def _file(self, i: int) -> h5py.File:
        if self._pid != os.getpid():  # forked: HDF5 handles must not be shared across processes
            self._handles, self._datasets, self._pid = {}, {}, os.getpid()
        f = self._handles.get(i)
        if f is None:
            path = self._headers[i].path
            try:
                f = h5py.File(path, "r")
            except OSError as e:
                raise ClipError(f"Clip file {path} is not a readable HDF5 file (truncated or corrupt?).") from e
            self._handles[i] = f
        return f

    def _dataset(self, i: int, key: str) -> h5py.Dataset:
        """The open dataset ``key`` of clip ``i``, looked up once (a lookup costs ~0.1 ms)."""
        ds = self._datasets.get((i, key))
        if ds is None or self._pid != os.getpid():
            ds = self._file(i)[key]
            if ds.shape != self._headers[i].shapes[key]:
                raise ClipError(
                    f"Clip file {self._headers[i].path} changed since the store was opened: {key!r} now "
                    f"has shape {ds.shape}, not {self._headers[i].shapes[key]}."
                )
            self._datasets[(i, key)] = ds
        return ds

    def _read(self, i: int, key: str, start: int, stop: int | None, cols: slice | None = None) -> np.ndarray:
        h = self._header(i)
        if key not in h.shapes:
            raise ClipError(f"Clip file {h.path} has no dataset {key!r}; it has {sorted(h.shapes)}.")
        start = operator.index(start)
        stop = h.length if stop is None else operator.index(stop)
        if not 0 <= start < stop <= h.length:
            raise ClipError(
                f"Frames [{start}, {stop}) of {key!r} are out of range for clip file {h.path}, "
                f"which has {h.length} frames."
            )
        ds = self._dataset(i, key)
        try:
            data = ds[start:stop] if cols is None else ds[start:stop, cols]
        except OSError as e:
            raise ClipError(f"Clip file {h.path} dataset {key!r} could not be read (truncated or corrupt?).") from e
        _check_finite(data, key, f"clip file {h.path}", first_frame=start)
        return data

    def read(self, i: int, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``[start, stop)`` of dataset ``key`` of clip ``i``: (stop - start, *dims[key]).

        Only those frames are read from disk. Raises :class:`ClipError` if they hold NaN/Inf.
        """
        return self._read(i, key, start, stop)

    def holds(self, key: str) -> bool:
        """Whether every clip has a dataset ``key``: one of the schema's, or any other (the
        labels ``ncssm-data segment`` writes, say)."""
        return key in self.keys or _plain_name(key) and all(
            isinstance(_lookup(self._file(i), key), h5py.Dataset) for i in range(len(self)))

    def read_labels(self, i: int, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``[start, stop)`` of the integer label dataset ``key`` of clip ``i`` (T,), which
        need not be one the schema knows (``/syllables_arhmm``, say); anything but integers >= 0
        is a ClipError."""
        h = self._header(i)  # the clip's validated header: path, length, known datasets
        where = f"clip file {h.path}"
        if key in h.shapes:  # a dataset the store knows and validated
            data = self.read(i, key, start, stop)
            if data.ndim != 1 or data.dtype.kind not in "iu":
                raise ClipError(f"In {where}, dataset {key!r} has shape {h.shapes[key]} and dtype "
                                f"{data.dtype}; syllable labels must be integers >= 0, shape (T,).")
        else:
            if not _plain_name(key):
                raise ClipError(f"In {where}, {show(key)} is not a dataset name (a non-empty UTF-8 "
                                f"string without NUL).")
            ds = _lookup(self._file(i), key)
            if not isinstance(ds, h5py.Dataset):
                raise ClipError(f"Clip file {h.path} has no dataset {key!r}.")
            if ds.shape != (h.length,):
                raise ClipError(f"In {where}, dataset {key!r} has shape {ds.shape}, expected "
                                f"({h.length},): one syllable label per frame of /obs.")
            if ds.dtype.kind not in "iu":
                raise ClipError(f"In {where}, dataset {key!r} has dtype {ds.dtype}; syllable labels "
                                f"must be integers >= 0.")
            start = int(start)
            stop = h.length if stop is None else int(stop)
            if not 0 <= start < stop <= h.length:
                raise ClipError(f"Frames [{start}, {stop}) of {key!r} are out of range for {where}, "
                                f"which has {h.length} frames.")
            try:
                data = ds[start:stop]
            except OSError as e:
                raise ClipError(f"Clip file {h.path} dataset {key!r} could not be read (truncated or "
                                f"corrupt?).") from e
        if data.size and data.min() < 0:
            k = int(np.argmax(data < 0))
            raise ClipError(f"In {where}, dataset {key!r} holds the label {data[k]} at frame "
                            f"{int(start) + k}; syllable labels must be integers >= 0.")
        return data

    def obs(self, i: int, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The layout slice ``name`` of ``obs`` for frames ``[start, stop)``: (stop - start, width)."""
        if not self.has("obs"):
            raise ClipError(f"Clips in {self.root} hold no dataset 'obs' (reference-only clips), "
                            f"so they have no {name!r}.")
        cols = obs_slice(self._headers[0].layout, name, where=f"the observation layout of {self.root}")
        return self._read(i, "obs", start, stop, cols)

    def read_clip(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All frames of ``keys`` of clip ``i`` (default: every dataset it holds): key -> (T, ...)."""
        if keys is None:
            keys = self._header(i).shapes
        return {key: self._read(i, key, 0, None) for key in keys}

    # ---------------------------------------------------------------- handles

    def close(self) -> None:
        """Close the cached file handles (a later read reopens them)."""
        handles, self._handles, self._datasets = self._handles, {}, {}
        for f in handles.values():
            f.close()

    def __enter__(self) -> ClipStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
