"""Batches per second: ClipDataset streaming and preload against a loader in the seed's style.

The seed's loader opened a clip file for every sample, read every dataset of the whole clip,
then sliced the segment it needed. Here it takes the clips and starts of each batch from
``ClipDataset.draw`` (so it samples exactly as the dataset does), and the script checks that
all loaders give identical batches before timing them. All sides run in this one process, on
the built-in rodent clips unless ``--clips`` names a folder. Every dataset is built raw (no
normalizer, no noise), as the seed's loader reads.

    python benchmarks/data_loading.py --batches 30 --batch-size 32 --seg-len 490
    python benchmarks/data_loading.py --clips CLIP_DIR --batches 2 --batch-size 4 \
        --seg-len 20 --repeats 1                                              # smoke
"""

from __future__ import annotations

import argparse
import platform
import time

import h5py
import numpy as np

from ncssm_data import ClipDataset, ClipStore, get_mode, obs_slice


class SeedStyleLoader:
    """Per sample: open the file, read all of every dataset, slice the segment."""

    def __init__(self, ds: ClipDataset):
        self.ds, self.store = ds, ClipStore(ds.root_dir)
        self.mode = get_mode(ds.mode.name)
        self.k = 0  # the index of the next batch

    def __next__(self):
        L = self.ds.seg_len
        clips, starts = self.ds.draw(self.k)  # the dataset's own sampling of batch k
        self.k += 1
        samples = []
        for clip, start in zip(clips, starts):
            with h5py.File(self.store.paths[clip], "r") as f:
                whole = {key: f[key][()] for key in f}  # the whole clip, every dataset
            arrays = {
                s: whole[s] if s in whole else whole["obs"][:, obs_slice(self.store.obs_layout, s)]
                for s in self.mode.sources
            }
            segs = {s: a[start:start + L + 1] for s, a in arrays.items()}
            if "syllables" in segs:  # integer IDs, one-hot as ClipDataset gives them
                n = self.ds.n_syllables
                segs["syllables"] = np.eye(n)[np.clip(segs["syllables"], 0, n - 1)]
            samples.append({s: a.astype(np.float32) for s, a in segs.items()})
        seg = {s: np.stack([x[s] for x in samples]) for s in self.mode.sources}
        x_in = tuple(seg[s][:, :-1] for s in self.mode.x_in)
        return (x_in if len(x_in) > 1 else x_in[0]), seg[self.mode.x_tgt][:, 1:]


def rate(loader, n: int) -> float:
    next(loader)  # warm-up (starts the prefetch thread, fills caches)
    t = time.perf_counter()
    for _ in range(n):
        next(loader)
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", default=None, help="clip folder (default: the built-in rodent clips)")
    p.add_argument("--mode", default="state_action")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seg-len", type=int, default=490)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.clips is None:
        from ncssm_env.synthetic import builtin_clips

        args.clips = builtin_clips("rodent")
    # Raw batches on every side: the seed-style loader neither normalizes nor adds noise.
    kw = dict(batch_size=args.batch_size, seg_len=args.seg_len, mmode=args.mode, seed=0,
              normalizer=None, noise_std=0.0)

    # Same batches first.
    a, b = ClipDataset(args.clips, preload=False, **kw), ClipDataset(args.clips, **kw)
    c = SeedStyleLoader(ClipDataset(args.clips, **kw))
    for _ in range(3):
        (xa, ya), (xb, yb), (xc, yc) = next(a), next(b), next(c)
        for x, y in ((xb, yb), (xc, yc)):
            np.testing.assert_array_equal(ya, y)
            for u, v in zip(xa if isinstance(xa, tuple) else (xa,), x if isinstance(x, tuple) else (x,)):
                np.testing.assert_array_equal(u, v)
    a.close()
    print("streaming, preload and seed-style loaders give identical batches")

    rates = {"seed style (whole clip per sample)": [], "ClipDataset streaming": [],
             "ClipDataset preload": []}
    for _ in range(args.repeats):
        rates["seed style (whole clip per sample)"].append(
            rate(SeedStyleLoader(ClipDataset(args.clips, **kw)), args.batches))
        stream = ClipDataset(args.clips, preload=False, **kw)
        rates["ClipDataset streaming"].append(rate(stream, args.batches))
        stream.close()
        rates["ClipDataset preload"].append(rate(ClipDataset(args.clips, **kw), args.batches))

    store = ClipStore(args.clips)
    print(f"machine: {platform.machine()}, {len(store)} clips x {int(np.median(store.lengths))} frames "
          f"in {args.clips}; mode {args.mode}, B {args.batch_size}, T {args.seg_len}; "
          f"{args.batches} batches x {args.repeats} repeats")
    print(f"{'loader':38s} {'median batches/s':>17s}")
    med = {k: float(np.median(v)) for k, v in rates.items()}
    for k, v in med.items():
        print(f"{k:38s} {v:17.1f}")
    base = med["seed style (whole clip per sample)"]
    print(f"streaming / seed style: {med['ClipDataset streaming'] / base:.1f}x (goal >= 10x)")
    print(f"preload / seed style:   {med['ClipDataset preload'] / base:.1f}x")


if __name__ == "__main__":
    main()
