"""Observation layouts: named ``[start, stop)`` column ranges of the observation vector.

A layout is a ``dict[str, tuple[int, int]]``. Names may overlap (``"ref"`` may span several
``"ref_*"`` parts). Code looks slices up by name through :func:`obs_slice`, never by literal
indices; the layout travels with the data (the ``obs_layout`` attribute of a clip file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ncssm_data.errors import ClipError, show

Layout = dict[str, tuple[int, int]]

# The layout of the original ncssm data: a 537-dim observation holding 470 reference
# features, then the body's local qpos (67). Clip files without an ``obs_layout`` attribute
# are read with it. This is the ONE place these numbers may appear.
LEGACY_LAYOUT: Layout = {"ref": (0, 470), "qpos_local": (470, 537)}


def layout_width(layout: Mapping[str, tuple[int, int]]) -> int:
    """The smallest observation width the layout fits: the largest ``stop`` (0 if empty)."""
    return max((int(stop) for _, stop in layout.values()), default=0)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _normalize(layout: Any, where: str, obs_dim: int | None) -> Layout:
    """Check the entries of ``layout`` (and that they fit ``obs_dim`` if given); return plain ints."""
    if not isinstance(layout, Mapping):
        raise ClipError(
            f"In {where}, the observation layout is a {type(layout).__name__}, "
            f"expected a mapping of names to [start, stop]."
        )
    out: Layout = {}
    bound = "" if obs_dim is None else f" <= {obs_dim} (the obs width)"
    for name, value in layout.items():
        if not isinstance(name, str) or not name:
            raise ClipError(
                f"In {where}, observation layout name {show(name)} is invalid, expected a non-empty string."
            )
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_int, value))):
            raise ClipError(
                f"In {where}, observation layout entry {name!r} is {show(value)}, expected two ints [start, stop]."
            )
        start, stop = int(value[0]), int(value[1])
        if not (0 <= start < stop and (obs_dim is None or stop <= obs_dim)):
            raise ClipError(
                f"In {where}, observation layout entry {name!r} is [{start}, {stop}), "
                f"expected 0 <= start < stop{bound}."
            )
        out[name] = (start, stop)
    _check_nested(out, where)
    return out


def _check_nested(layout: Layout, where: str) -> None:
    """Entries must be disjoint or nested (``ref`` holds every ``ref_*`` part); two that cross,
    like [0, 6) and [4, 12), are a mistyped bound."""
    open_: list[tuple[str, int, int]] = []  # a chain of nested entries, innermost last
    for name, (start, stop) in sorted(layout.items(), key=lambda kv: (kv[1][0], -kv[1][1])):
        while open_ and open_[-1][2] <= start:
            open_.pop()
        if open_ and stop > open_[-1][2]:
            other, a, b = open_[-1]
            raise ClipError(f"In {where}, observation layout entries {other!r} [{a}, {b}) and "
                            f"{name!r} [{start}, {stop}) overlap without one holding the other; "
                            f"entries must be disjoint or nested.")
        open_.append((name, start, stop))


def check_layout(layout: Mapping[str, tuple[int, int]], obs_dim: int, where: str) -> Layout:
    """Check that every entry is ``name -> (start, stop)`` with ``0 <= start < stop <= obs_dim``.

    Returns a plain-int copy of the layout; raises :class:`ClipError` naming ``where`` otherwise.
    """
    return _normalize(layout, where, int(obs_dim))


def layout_to_json(layout: Mapping[str, tuple[int, int]]) -> str:
    """Serialize a layout as a JSON object ``{"name": [start, stop], ...}`` (order kept)."""
    return json.dumps({name: [int(start), int(stop)] for name, (start, stop) in layout.items()})


def layout_from_json(text: str | bytes, where: str) -> Layout:
    """Parse a layout written by :func:`layout_to_json`; errors name ``where`` (e.g. the file)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        raw = json.loads(text)
    except (ValueError, TypeError) as e:  # JSONDecodeError, and an int of over 4300 digits
        raise ClipError(f"In {where}, the observation layout is not valid JSON ({e}).") from e
    except RecursionError:
        raise ClipError(f"In {where}, the observation layout is not valid JSON (nested too "
                        f"deeply).") from None
    return _normalize(raw, where, None)


def obs_slice(layout: Mapping[str, tuple[int, int]], name: str, where: str = "the observation layout") -> slice:
    """The ``slice(start, stop)`` of the observation columns called ``name``."""
    try:
        start, stop = layout[name]
    except KeyError:
        raise ClipError(
            f"In {where}, there is no observation slice {name!r}; known names are {sorted(layout)}."
        ) from None
    return slice(int(start), int(stop))
