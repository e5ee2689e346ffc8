"""Fitting the body to recorded keypoints (issue 19): the keypoint map and the units.

- :func:`load_keypoint_map`: a config such as ``configs/keypoints_rodent.yaml`` (each keypoint's
  body and initial offset in that body's frame, metres), checked against the model and the
  recording: a keypoint the file lacks, a body the model lacks, a bad offset are one sentence.
- :func:`detect_units`: the recording's length unit, from its keypoint distances against the
  body's: files state units unreliably (the shared NWB says ``pixels`` and holds millimetres).

The per-frame inverse kinematics (mink) and the offset fit come next.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
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


def load_keypoint_map(path: str | Path, model: mujoco.MjModel,
                      recorded: Keypoints | None = None) -> KeypointMap:
    """The map in the YAML ``path`` (``keypoints: {NAME: {body: BODY, offset: [x, y, z]}}``),
    its bodies looked up in ``model`` (with or without the ``walker/`` prefix) and, with
    ``recorded``, its keypoints looked up in the recording."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ClipError(f"Keypoint map {path} cannot be read as YAML "
                        f"({type(err).__name__}).") from None
    entries = cfg.get("keypoints") if isinstance(cfg, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ClipError(f"Keypoint map {path} has no 'keypoints' mapping, expected "
                        f"keypoints: {{NAME: {{body: BODY, offset: [x, y, z]}}}}.")
    bodies = {mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, i): i
              for i in range(1, model.nbody)}
    short = {name.split("/", 1)[-1]: i for name, i in bodies.items()}
    names, ids, offsets = [], [], []
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
    if recorded is not None:
        missing = [n for n in names if n not in recorded.names]
        if missing:
            close = difflib.get_close_matches(missing[0], recorded.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ClipError(f"Keypoint map {path} names keypoint {missing[0]!r}, which "
                            f"{recorded.source} does not have{hint}; it has "
                            f"{', '.join(recorded.names)}.")
    return KeypointMap(tuple(names), np.asarray(ids), np.asarray(offsets), str(path))


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
