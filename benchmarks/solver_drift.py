"""How far capped solver iterations drift from the arena's solver on a clip replay (MuJoCo C).

GPU users cap the constraint solver (talmolab runs this rodent with 5 iterations and 5
line-search iterations). Both sides here replay the same built-in clips' recorded controls
from the same frame, in this one process: the arena's solver (Newton, 50 / 20, what the clips
were made with) and each capped setting. Prints, per setting, the RMS joint-angle error
against the arena's run and against the clip's own qpos after ``--steps`` control steps
(median and max over clips), the time per control step, and the ratio of times; and how many
Newton iterations the arena's solver used (it stops on its tolerance).

    python benchmarks/solver_drift.py --body rodent --clips 8 --steps 250
    python benchmarks/solver_drift.py --body test --clips 2 --steps 5 --clip-dir CLIP_DIR  # smoke
"""

from __future__ import annotations

import argparse
import time

import mujoco
import numpy as np

from ncssm_data import ClipStore
from ncssm_env.body import build_model
from ncssm_env.synthetic import builtin_clips


def replay(model, store, clip: int, start: int, steps: int, n_substeps: int):
    """(qpos after each control step (steps, nq), seconds per control step, Newton iterations
    of every substep)."""
    q, v, a, u = (store.read(clip, k) for k in ("qpos", "qvel", "act", "ctrl"))
    d = mujoco.MjData(model)
    d.qpos[:], d.qvel[:], d.act[:] = q[start], v[start], a[start]
    out, iters = np.empty((steps, model.nq)), []
    t = time.perf_counter()
    for k in range(steps):
        d.ctrl[:] = u[start + k + 1]
        for _ in range(n_substeps):
            mujoco.mj_step(model, d)
            iters.append(int(d.solver_niter[0]))
        out[k] = d.qpos
    return out, (time.perf_counter() - t) / steps, np.array(iters)


def rms_joints(a, b) -> float:
    return float(np.sqrt(np.mean((a[7:] - b[7:]) ** 2)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body", default="rodent")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--start", type=int, default=10)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--settings", default="newton:5:5,cg:5:5",
                   help="capped settings to compare, solver:iterations:ls_iterations,...")
    p.add_argument("--clip-dir", default=None,
                   help="clips of --body made with the arena's solver (default: the built-in ones)")
    args = p.parse_args()
    store = ClipStore(args.clip_dir or builtin_clips(args.body))
    n_substeps = 10
    base = build_model(args.body)
    clips = range(min(args.clips, len(store)))
    ref = {c: replay(base, store, c, args.start, args.steps, n_substeps) for c in clips}
    iters = np.concatenate([r[2] for r in ref.values()])
    t_base = np.median([r[1] for r in ref.values()])
    vs_clip = [rms_joints(ref[c][0][-1], store.read(c, "qpos")[args.start + args.steps])
               for c in clips]
    print(f"{args.body}: {len(clips)} built-in clips from frame {args.start}, {args.steps} "
          f"control steps of {n_substeps} substeps, recorded controls, MuJoCo "
          f"{mujoco.__version__} C; RMS joint error (rad) after the last step, median (max)")
    print(f"arena newton 50/20: {1e6 * t_base:7.0f} us/step; Newton iterations per substep "
          f"mean {iters.mean():.1f}, max {iters.max()}; vs the clip {np.median(vs_clip):.2e} "
          f"({np.max(vs_clip):.2e})")
    for setting in args.settings.split(","):
        solver, it, ls = setting.split(":")
        model = build_model(args.body, solver=solver, iterations=int(it), ls_iterations=int(ls))
        runs = {c: replay(model, store, c, args.start, args.steps, n_substeps) for c in clips}
        drift = [rms_joints(runs[c][0][-1], ref[c][0][-1]) for c in clips]
        worst = [max(rms_joints(x, y) for x, y in zip(runs[c][0], ref[c][0])) for c in clips]
        clip = [rms_joints(runs[c][0][-1], store.read(c, "qpos")[args.start + args.steps])
                for c in clips]
        t = np.median([r[1] for r in runs.values()])
        print(f"{solver} {it}/{ls}: {1e6 * t:7.0f} us/step ({t_base / t:.2f}x the arena's "
              f"speed); vs the arena's run {np.median(drift):.2e} ({np.max(drift):.2e}), worst "
              f"step {np.max(worst):.2e}; vs the clip {np.median(clip):.2e} ({np.max(clip):.2e})")


if __name__ == "__main__":
    main()
