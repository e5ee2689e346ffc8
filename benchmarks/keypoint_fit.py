"""Keypoint fitting speed: :func:`ncssm_env.keypoint_fit.fit_keypoints` with the default
FitConfig (4 rounds of [IK over the frames, then the offsets], then a final IK pass) against
one IK pass at the map's initial offsets (``rounds=0``, no offset fit), in this process.

The comparison is the choice a user makes (``FitConfig.rounds``): it prints what the offset
fit costs in time (the ratio of frames/s; about 5 passes against 1, so near 5x unless the
offset fit or the first frame's 200 iterations weigh) and what it buys in residual (the map's
offsets are first guesses: a limb keypoint at the joint it is named after, the head and spine
keypoints at their body's origin, so one pass leaves millimetres to centimetres). The
ms per frame per pass (``Fit.seconds_per_frame``) shows that both sides' IK passes cost alike.

Input: the shared 1000-frame DANNCE rat (``--keypoints``, millimetres at 30 fps; a DANNCE
.mat has no names, so they come from ``rat23_skeleton.mat`` beside it, else the map's order,
which is the skeleton's), its first ``--frames``; or ``--synthetic``: the map's keypoints at
offsets 1 cm off the map's on the rodent at qpos0 with small sinusoidal joint motion and a
slow walk (no shared data needed). Each side runs ``--repeats`` times after an untimed
warm-up (mink's import, the first solves); frames/s is wall time of the whole call (the model
build and the residuals included). The fit runs with one BLAS thread (threadpoolctl; mink's
small dense solves only lose from threads: about 8 ms per solve with 2 threads, 1.8 with 1).

    python benchmarks/keypoint_fit.py                       # 1000 frames x 3 repeats: ~5 min
    python benchmarks/keypoint_fit.py --frames 200 --repeats 1
    python benchmarks/keypoint_fit.py --synthetic --frames 4 --repeats 1    # smoke
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: read once, at load

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("NCSSM_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))
MAP = ROOT / "configs" / "keypoints_rodent.yaml"


def real_keypoints(path: Path, model, frames: int):
    """(xyz (T, K, 3) metres in the map's order, the map, a description) of ``path``."""
    import scipy.io

    from ncssm_data.keypoints import read_keypoints
    from ncssm_env.keypoint_fit import UNITS, detect_units, load_keypoint_map

    kmap = load_keypoint_map(MAP, model)
    names = kmap.names
    skeleton = path.parent / "rat23_skeleton.mat"
    if path.suffix.lower() == ".mat" and skeleton.is_file():
        names = tuple(str(np.ravel(n)[0]) for n in
                      np.ravel(scipy.io.loadmat(skeleton)["joint_names"]))
    rec = read_keypoints(path, names=names if path.suffix.lower() == ".mat" else None,
                         fps=30.0 if path.suffix.lower() == ".mat" else None)
    kmap = load_keypoint_map(MAP, model, rec)
    unit, ratio = detect_units(rec, model, kmap)
    xyz = rec.xyz[:frames or None, [rec.names.index(n) for n in kmap.names]] / UNITS[unit]
    return xyz, kmap, (f"{path.name}, first {len(xyz)} of {len(rec.xyz)} frames, "
                       f"{len(kmap.names)} keypoints, {unit} (animal {ratio:.2f}x the body)")


def synthetic_keypoints(model, frames: int, seed: int = 0):
    """(xyz (T, K, 3) metres, the map, a description): the map's keypoints at offsets off the
    map's by N(0, 1 cm) per axis, on the rodent at qpos0 plus sinusoidal joint motion (0.15
    rad, 0.5-2 Hz, each joint its own phase, within its range) walking at 10 cm/s, 30 fps."""
    import mujoco

    from ncssm_env.keypoint_fit import load_keypoint_map, map_positions

    kmap = load_keypoint_map(MAP, model)
    rng = np.random.default_rng(seed)
    off = rng.normal(0, 0.01, kmap.offsets.shape)
    true = dataclasses.replace(kmap, offsets=kmap.offsets + off)
    hinge = np.flatnonzero(model.jnt_type == mujoco.mjtJoint.mjJNT_HINGE)
    adr, lo, hi = model.jnt_qposadr[hinge], model.jnt_range[hinge, 0], model.jnt_range[hinge, 1]
    freq, phase = rng.uniform(0.5, 2.0, len(hinge)), rng.uniform(0, 2 * np.pi, len(hinge))
    limited = model.jnt_limited[hinge].astype(bool)
    xyz = np.empty((frames, len(kmap.names), 3))
    for t in range(frames):
        q = model.qpos0.copy()
        q[0] += 0.1 * t / 30.0
        angle = q[adr] + 0.15 * np.sin(2 * np.pi * freq * t / 30.0 + phase)
        q[adr] = np.where(limited, np.clip(angle, lo, hi), angle)
        xyz[t] = map_positions(model, true, q)
    return xyz, kmap, (f"synthetic: {frames} frames, {len(kmap.names)} keypoints 1 cm off the "
                       f"map's offsets, joints qpos0 + 0.15 rad sines")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keypoints", type=Path, default=REAL / "rat_dannce_keypoints_1000.mat")
    p.add_argument("--frames", type=int, default=0, help="the first N frames (0: all)")
    p.add_argument("--synthetic", action="store_true", help="built-in keypoints, no file")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from importlib.metadata import version

    import mujoco

    from ncssm_env.body import build_model
    from ncssm_env.keypoint_fit import FitConfig, fit_keypoints

    model = build_model("rodent")
    if args.synthetic:
        xyz, kmap, what = synthetic_keypoints(model, args.frames or 100)
    else:
        if not args.keypoints.is_file():
            p.error(f"{args.keypoints} does not exist; give --keypoints FILE or --synthetic")
        xyz, kmap, what = real_keypoints(args.keypoints, model, args.frames)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, OPENBLAS_NUM_THREADS="
          f"{os.environ['OPENBLAS_NUM_THREADS']}, mujoco {mujoco.__version__}, mink "
          f"{version('mink')}; {what}; {args.repeats} repeats", flush=True)

    sides = {"default (4 rounds + final IK)": FitConfig(),
             "IK only (rounds=0, map offsets)": FitConfig(rounds=0)}
    fit_keypoints(xyz[:2], "rodent", kmap, FitConfig(rounds=0, first_iterations=20))  # warm-up
    rows = {}
    for name, cfg in sides.items():
        walls, passes, fit = [], [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fit = fit_keypoints(xyz, "rodent", kmap, cfg)
            walls.append(time.perf_counter() - t0)
            passes.append(fit.seconds_per_frame)
        res = fit.residual[np.isfinite(fit.residual)] * 1e3
        rows[name] = (len(xyz) / np.median(walls), 1e3 * np.median(passes), np.median(res),
                      np.percentile(res, 95))
    print(f"{'side':32s} {'frames/s':>9s} {'ms/frame/pass':>14s} {'median res mm':>14s} "
          f"{'p95 res mm':>11s}")
    for name, (fps, ms, med, p95) in rows.items():
        print(f"{name:32s} {fps:9.2f} {ms:14.1f} {med:14.2f} {p95:11.2f}")
    default, ik_only = (rows[name][0] for name in sides)
    print(f"ratio IK only / default: {ik_only / default:.2f}x frames/s")


if __name__ == "__main__":
    main()
