"""``ClipDataset``: ``(x_in, x_tgt)`` training batches of a modeling mode, ``(B, T, D)`` each.

Clips are split into train and val by a deterministic shuffle from the seed, so the splits are
disjoint and the same for every dataset built with that seed. Each sample of a batch is a
segment of ``seg_len`` frames at its own random start in a clip drawn from the split (without
replacement when the split has at least ``batch_size`` clips). Two loaders give identical
batches for the same seed: ``preload`` reads the mode's arrays of every clip into RAM once;
streaming reads only each segment's frames from disk, in a background thread that keeps the
next batches ready.
"""

from __future__ import annotations

import queue
import threading
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from ncssm_data.clips import ClipStore
from ncssm_data.modes import (
    DATASETS,
    SYLLABLES,
    check_sources,
    check_syllable_key,
    get_mode,
    read_source,
    store_keys,
)
from ncssm_data.normalize import Normalizer

SPLITS = ("train", "val")


def split_clips(n_clips: int, train_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_ids, val_ids)``: a deterministic shuffle of ``range(n_clips)`` from ``seed``,
    the first ``round(train_frac * n_clips)`` for training; each sorted."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac!r}.")
    perm = np.random.default_rng([seed, 0]).permutation(n_clips)
    n_train = int(round(train_frac * n_clips))
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def split_store(store, train_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_ids, val_ids)`` of a store's clips: :func:`split_clips` of its nominal clips
    (without DART clips, exactly ``split_clips(len(store), ...)``); each DART clip then joins
    training if the clip it tracked did, and is left out otherwise (val stays nominal)."""
    dart_of = store.dart_of
    nominal = np.flatnonzero(dart_of < 0)
    train, val = (nominal[ids] for ids in split_clips(len(nominal), train_frac, seed))
    extra = np.flatnonzero(np.isin(dart_of, train))
    return np.sort(np.concatenate([train, extra])), val


def check_pair(x_in, x_tgt) -> None:
    """``x_in`` (an array or tuple of arrays) and ``x_tgt`` must share ``(B, T)``."""
    parts = x_in if isinstance(x_in, tuple) else (x_in,)
    for k, x in enumerate(parts):
        if x.shape[:2] != x_tgt.shape[:2]:
            raise ValueError(
                f"x_in part {k} has (B, T) = {x.shape[:2]} but x_tgt has {x_tgt.shape[:2]}; "
                f"inputs and targets must be time-aligned."
            )


class ClipDataset:
    """An infinite iterator of ``(x_in, x_tgt)`` batches of a mode; see the module docstring.

    Args:
        root_dir: a folder of ``clip_<i>.h5`` files.
        batch_size: B, always the size asked for.
        split: ``"train"`` or ``"val"``; ``train_frac`` of the clips go to train.
        seg_len: T, frames per segment; clips shorter than ``seg_len + 1`` are skipped.
        preload: read every clip into RAM once (True) or stream slice reads (False).
        test_batch: every batch is the first ``seg_len`` frames of clip ``clip_idx`` (of the
            folder), repeated B times, for overfitting checks.
        mmode: the mode (:data:`ncssm_data.modes.MODES`).
        noise_std: Gaussian noise on the training inputs only (not targets, val or stats);
            in normalized units when ``normalizer`` is set. One-hot syllables get none.
        seed: drives the split, the sampling and the noise.
        normalizer: ``None`` (raw batches), ``"zscore"`` / ``"minmax"`` (stats fitted on the
            train split of the same seed), or a :class:`Normalizer` (checked against the mode
            and dims).
        n_syllables: one-hot width; by default the largest syllable ID in the folder + 1. IDs
            outside ``[0, n_syllables)`` are clamped, with one warning.
        syllable_key: the clip dataset the mode's ``syllables`` source reads: ``"syllables"``
            (the default), or another (T,) integer label dataset such as ``"syllables_arhmm"``
            (AR-HMM labels from ``ncssm-data segment``), whose labels must be integers >= 0.
        prefetch: batches kept ready by the streaming thread.
        start_step: the index of the first batch. Batch ``k`` depends only on the seed, the
            split and ``k``, so a dataset started at step ``k`` yields exactly the batches an
            uninterrupted one yields from its ``k``-th on (what a resumed run needs).
        shard: ``(index, count)``: yield only rows ``[index B / count, (index + 1) B / count)``
            of each global batch of B (one process's share in multi-process training), reading
            only their segments. The rows are those of the unsharded batch, noise included.

    ``x_in`` is an array (B, T, D) for one-part modes and a tuple of arrays for two-part modes;
    ``x_tgt`` is (B, T, D_tgt) (B / count rows each when sharded). All float32.
    """

    def __init__(
        self,
        root_dir: str | Path,
        batch_size: int = 32,
        split: str = "train",
        train_frac: float = 0.8,
        seg_len: int = 490,
        preload: bool = True,
        test_batch: bool = False,
        mmode: str = "state_action",
        noise_std: float = 0.0,
        clip_idx: int = 0,
        seed: int = 0,
        normalizer: str | Normalizer | None = None,
        n_syllables: int | None = None,
        prefetch: int = 2,
        start_step: int = 0,
        syllable_key: str = SYLLABLES,
        shard: tuple[int, int] = (0, 1),
    ):
        self.mode = get_mode(mmode)
        self.syllable_key = check_syllable_key(syllable_key)
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; expected 'train' or 'val'.")
        if not (isinstance(seg_len, (int, np.integer)) and seg_len > 0):
            raise ValueError(f"seg_len must be a positive int, got {seg_len!r}.")
        if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}.")
        self.store = ClipStore(root_dir)
        self.root_dir = Path(root_dir)
        keys = store_keys(self.store, syllable_key) if SYLLABLES in self.mode.sources else self.store.keys
        check_sources(self.mode, keys, self.store.obs_layout, str(self.root_dir), syllable_key)
        self.batch_size, self.split, self.seg_len = int(batch_size), split, int(seg_len)
        index, count = shard
        if not (0 <= index < count and self.batch_size % count == 0):
            raise ValueError(f"shard {shard!r}: expected (index, count) with 0 <= index < count "
                             f"and count dividing batch_size {self.batch_size}.")
        share = self.batch_size // count
        self._rows = slice(index * share, (index + 1) * share)
        self.preload, self.test_batch, self.noise_std = preload, test_batch, float(noise_std)
        self.seed, self.train_frac, self.prefetch = seed, train_frac, prefetch

        lengths = self.store.lengths
        if test_batch:
            if not 0 <= clip_idx < len(self.store):
                raise ValueError(f"clip_idx {clip_idx} is outside [0, {len(self.store)}) for {self.root_dir}.")
            ids = np.array([clip_idx])
        else:
            ids = split_store(self.store, train_frac, seed)[SPLITS.index(split)]
            if ids.size == 0:
                raise ValueError(
                    f"The {split} split of the {len(self.store)} clips in {self.root_dir} is empty "
                    f"with train_frac {train_frac}; use more clips or another train_frac."
                )
        long_enough = lengths[ids] >= self.seg_len + 1
        if not long_enough.any():
            raise ValueError(
                f"No {split} clip in {self.root_dir} has the seg_len + 1 = {self.seg_len + 1} frames "
                f"a segment needs (the longest has {lengths[ids].max()})."
            )
        if not long_enough.all():
            warnings.warn(
                f"Skipping {int((~long_enough).sum())} of {ids.size} {split} clips in {self.root_dir} "
                f"shorter than seg_len + 1 = {self.seg_len + 1} frames.",
                stacklevel=2,
            )
        self.clip_ids = ids[long_enough]
        self._lengths = lengths[self.clip_ids]

        self.n_syllables = None
        if SYLLABLES in self.mode.sources:
            self.n_syllables = n_syllables or 1 + max(
                int(self._read(i, SYLLABLES).max()) for i in range(len(self.store)))
        self._clamp_warned = False

        self._cache: dict[int, dict[str, np.ndarray]] = {}
        if preload:
            for i in self.clip_ids:
                self._cache[int(i)] = {s: self._read(int(i), s) for s in self.mode.sources}

        self.normalizer = self._normalizer(normalizer)
        if not (isinstance(start_step, (int, np.integer)) and start_step >= 0):
            raise ValueError(f"start_step must be an int >= 0, got {start_step!r}.")
        self._step = int(start_step)  # the index of the next batch
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    # --- public ---------------------------------------------------------------------------

    @property
    def dims(self) -> dict:
        """``{"x_in": (D_1, ...), "x_tgt": D}``: the width of each part."""
        def width(source):
            if source == "syllables":
                return self.n_syllables
            if source in DATASETS:
                return self.store.dims[source][0]
            a, b = self.store.obs_layout[source]
            return b - a
        return {"x_in": tuple(width(s) for s in self.mode.x_in), "x_tgt": width(self.mode.x_tgt)}

    @property
    def frames(self) -> int:
        """Frames in the clips this dataset samples from."""
        return int(self._lengths.sum())

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        if self.preload or self.test_batch:
            return self._next_batch()
        if self._queue is None:
            self._queue = queue.Queue(maxsize=max(1, self.prefetch))
            threading.Thread(target=self._produce, daemon=True, name="ClipDataset-prefetch").start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue = None
            raise item
        return item

    def draw(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(clips, starts)``, each (B,): the folder clip index and the first frame of each
        segment of batch ``k`` (the segment is frames ``start`` to ``start + seg_len``, inputs
        and one-step-shifted targets). It depends only on the seed, the split and ``k``: the
        batches this dataset yields are built from exactly these draws."""
        B = self.batch_size
        if self.test_batch:
            return np.full(B, self.clip_ids[0]), np.zeros(B, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 1 + SPLITS.index(self.split), int(k)])
        pick = rng.choice(len(self.clip_ids), B, replace=len(self.clip_ids) < B)
        return self.clip_ids[pick], rng.integers(0, self._lengths[pick] - self.seg_len)

    def close(self) -> None:
        """Stop the prefetch thread and close the clip files."""
        self._stop.set()
        if self._queue is not None:
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
        self.store.close()

    # --- batches --------------------------------------------------------------------------

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._next_batch()
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # hand it to the consumer
            self._queue.put(err)

    def _next_batch(self):
        k, self._step = self._step, self._step + 1
        clips, starts = (a[self._rows] for a in self.draw(k))
        noise_rng = np.random.default_rng([self.seed, 3, k])  # its own stream: noise never moves sampling
        seg = {s: np.stack([self._segment(int(c), s, int(t)) for c, t in zip(clips, starts)])
               for s in self.mode.sources}  # (B / count, L + 1, D)
        x_in = tuple(seg[s][:, :-1] for s in self.mode.x_in)
        x_tgt = seg[self.mode.x_tgt][:, 1:]
        if self.normalizer is not None:
            x_in = self.normalizer.normalize(x_in if len(x_in) > 1 else x_in[0])
            x_in = x_in if isinstance(x_in, tuple) else (x_in,)
            x_tgt = self.normalizer.normalize_tgt(x_tgt)
        if self.split == "train" and self.noise_std > 0 and not self.test_batch:
            B = self.batch_size  # the global batch's noise, then this shard's rows of it
            x_in = tuple(
                x if s == "syllables" else x + self.noise_std * noise_rng.standard_normal(
                    (B, *x.shape[1:]), np.float32)[self._rows]
                for s, x in zip(self.mode.x_in, x_in)
            )
        x_in = tuple(np.asarray(x, np.float32) for x in x_in)
        x_in = x_in if len(x_in) > 1 else x_in[0]
        x_tgt = np.asarray(x_tgt, np.float32)
        check_pair(x_in, x_tgt)
        return x_in, x_tgt

    def _segment(self, i: int, source: str, start: int) -> np.ndarray:
        stop = start + self.seg_len + 1
        if self.preload:
            x = self._cache[i][source][start:stop]
        else:
            x = self._read(i, source, start, stop)
        if source == "syllables":
            return self._one_hot(x)
        return x.astype(np.float32, copy=False)

    def _read(self, i: int, source: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return read_source(self.store, i, source, start, stop, syllable_key=self.syllable_key)

    def _one_hot(self, ids: np.ndarray) -> np.ndarray:
        n = self.n_syllables
        if (ids < 0).any() or (ids >= n).any():
            if not self._clamp_warned:
                warnings.warn(
                    f"Syllable IDs outside [0, {n}) in {self.root_dir} are clamped into range.",
                    stacklevel=3,
                )
                self._clamp_warned = True
            ids = np.clip(ids, 0, n - 1)
        return np.eye(n, dtype=np.float32)[ids]

    def _normalizer(self, normalizer) -> Normalizer | None:
        if normalizer is None:
            return None
        if isinstance(normalizer, Normalizer):
            normalizer.check_fits(self.mode.name, self.dims, f"the {self.split} data in {self.root_dir}")
            return normalizer
        train_ids = split_store(self.store, self.train_frac, self.seed)[0]
        return Normalizer.fit(self.store, self.mode.name, train_ids, method=normalizer,
                              n_syllables=self.n_syllables)

    def __repr__(self) -> str:
        return (f"ClipDataset({str(self.root_dir)!r}, mode={self.mode.name!r}, split={self.split!r}, "
                f"clips={len(self.clip_ids)}, B={self.batch_size}, T={self.seg_len})")


