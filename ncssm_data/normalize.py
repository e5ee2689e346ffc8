"""``Normalizer``: z-score or min-max statistics of a mode's arrays, as a pytree of arrays.

Stats are exact over every frame of the training clips, computed streaming, one clip at a
time (Chan's pairwise update for mean and variance, in float64), from clean data: no noise.
Each source of the mode (``qpos_local``, ``ctrl``, ...) gets its own stats; ``x_in`` parts and
``x_tgt`` take those of their sources, so ``pure_state`` normalizes its input and target alike.

- ``zscore``: ``(x - mean) / std``;
- ``minmax``: ``(x - (max + min) / 2) / ((max - min) / 2)``, into [-1, 1].

Scales below ``min_scale`` are raised to it, so near-constant dims never divide by zero.
One-hot syllables pass through unchanged (shift 0, scale 1).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ncssm_data.modes import Mode, get_mode, read_source

METHODS = ("zscore", "minmax")


class Normalizer:
    """Per-source ``shift`` and ``scale`` arrays for one mode.

    ``tree()`` is the checkpointable pytree ``{"x_in": [{"shift", "scale"}, ...],
    "x_tgt": {"shift", "scale"}}`` of float32 arrays (D,); ``mode`` and ``method`` travel in
    the config. ``normalize`` / ``denormalize`` work on numpy and jax arrays alike, any
    leading shape (``(B, T, D)``, ``(B, D)``, ...).
    """

    def __init__(self, mode: str, method: str, tree: dict):
        self.mode: Mode = get_mode(mode)
        if method not in METHODS:
            raise ValueError(f"Unknown normalization method {method!r}; expected one of {list(METHODS)}.")
        self.method = method
        parts = tree.get("x_in") if isinstance(tree, dict) else None
        if not isinstance(parts, (list, tuple)) or len(parts) != len(self.mode.x_in) or "x_tgt" not in tree:
            raise ValueError(
                f"Normalization stats hold {len(parts) if isinstance(parts, (list, tuple)) else 'no'} "
                f"x_in parts and {'an' if 'x_tgt' in tree else 'no'} x_tgt, but mode {mode!r} has "
                f"{len(self.mode.x_in)} x_in parts and one x_tgt; were they saved for another mode?"
            )
        self._tree = {
            "x_in": [_stat(p, f"x_in part {k}") for k, p in enumerate(parts)],
            "x_tgt": _stat(tree["x_tgt"], "x_tgt"),
        }

    @classmethod
    def fit(cls, store, mode: str, clip_ids: Sequence[int], method: str = "zscore",
            min_scale: float = 1e-4, n_syllables: int | None = None) -> "Normalizer":
        """Exact stats over every frame of clips ``clip_ids`` of a :class:`ClipStore`."""
        m = get_mode(mode)
        if method not in METHODS:
            raise ValueError(f"Unknown normalization method {method!r}; expected one of {list(METHODS)}.")
        stats = {}
        for source in m.sources:
            if source == "syllables":
                width = n_syllables
                stats[source] = {"shift": np.zeros(width), "scale": np.ones(width)}
                continue
            acc = _Moments()
            for i in clip_ids:
                acc.add(read_source(store, i, source, 0, None).astype(np.float64))
            stats[source] = acc.stats(method, min_scale)
        tree = {"x_in": [stats[s] for s in m.x_in], "x_tgt": stats[m.x_tgt]}
        return cls(mode, method, tree)

    def tree(self) -> dict:
        """The stats as a pytree of float32 arrays (what a checkpoint stores)."""
        return {"x_in": [dict(p) for p in self._tree["x_in"]], "x_tgt": dict(self._tree["x_tgt"])}

    @property
    def dims(self) -> dict[str, Any]:
        """``{"x_in": (D_1, ...), "x_tgt": D}``: the width of each part."""
        return {
            "x_in": tuple(p["shift"].shape[0] for p in self._tree["x_in"]),
            "x_tgt": self._tree["x_tgt"]["shift"].shape[0],
        }

    def check_fits(self, mode: str, dims: dict, where: str) -> None:
        """Raise unless these stats are for ``mode`` and ``dims`` (as :attr:`dims`)."""
        if mode != self.mode.name:
            raise ValueError(
                f"Normalization stats are for mode {self.mode.name!r}, but {where} is mode {mode!r}."
            )
        if tuple(dims["x_in"]) != self.dims["x_in"] or dims["x_tgt"] != self.dims["x_tgt"]:
            raise ValueError(
                f"Normalization stats have dims {self.dims}, but {where} has {dims}; were they "
                f"computed on other data?"
            )

    def normalize(self, x_in):
        """Normalize ``x_in``: an array (one part) or a tuple of arrays (one per part)."""
        parts = self._tree["x_in"]
        if len(parts) == 1:
            return _apply(x_in, parts[0])
        return tuple(_apply(x, p) for x, p in zip(x_in, parts))

    def normalize_tgt(self, x_tgt):
        return _apply(x_tgt, self._tree["x_tgt"])

    def denormalize_tgt(self, y):
        """The inverse of :meth:`normalize_tgt`: model outputs back to data units."""
        p = self._tree["x_tgt"]
        return y * p["scale"] + p["shift"]

    def denormalize(self, x_in):
        """The inverse of :meth:`normalize`."""
        parts = self._tree["x_in"]
        if len(parts) == 1:
            return x_in * parts[0]["scale"] + parts[0]["shift"]
        return tuple(x * p["scale"] + p["shift"] for x, p in zip(x_in, parts))


def _apply(x, p):
    return (x - p["shift"]) / p["scale"]


def _stat(p, where: str) -> dict:
    if not isinstance(p, dict) or set(p) != {"shift", "scale"}:
        raise ValueError(f"Normalization stats for {where} must hold exactly 'shift' and 'scale'.")
    shift, scale = (np.asarray(p[k], dtype=np.float32) for k in ("shift", "scale"))
    if shift.ndim != 1 or shift.shape != scale.shape:
        raise ValueError(
            f"Normalization stats for {where} have shift {shift.shape} and scale {scale.shape}; "
            f"expected two equal (D,) arrays."
        )
    if not (np.isfinite(shift).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"Normalization stats for {where} must be finite with positive scales.")
    return {"shift": shift, "scale": scale}


class _Moments:
    """Count, mean, M2, min and max over rows, merged one block at a time (float64)."""

    def __init__(self):
        self.n, self.mean, self.m2, self.lo, self.hi = 0, None, None, None, None

    def add(self, x: np.ndarray) -> None:
        x = x.reshape(len(x), -1)
        n_b, mean_b = len(x), x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            self.lo, self.hi = x.min(axis=0), x.max(axis=0)
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.lo, self.hi = np.minimum(self.lo, x.min(axis=0)), np.maximum(self.hi, x.max(axis=0))
        self.n = n

    def stats(self, method: str, min_scale: float) -> dict:
        if method == "zscore":
            shift, scale = self.mean, np.sqrt(self.m2 / self.n)
        else:
            shift, scale = (self.hi + self.lo) / 2, (self.hi - self.lo) / 2
        return {"shift": shift, "scale": np.maximum(scale, min_scale)}
