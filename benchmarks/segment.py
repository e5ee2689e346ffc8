"""AR-HMM sweep time: dynamax's ``fit_em`` per sweep point (before) against one compiled EM
program per K, reused across kappas and restarts (after, :func:`ncssm_policies.arhmm.fit`).

Both sides run the same grid (``--states`` x ``--kappas``) in this process on the same
clips, sampled from a random sticky AR-HMM (K 8, ``--dim`` dims, one lag) lifted to
``--width`` dims, in the built-in clips' shape (``--clips`` fitting clips and ``--held-out``
clips of ``--frames`` frames). Each sweep point is what ``ncssm-data segment --sweep`` does:
PCA to ``--dim``, fit by EM (``--iters``, one restart on both sides), Viterbi labels of every
clip, the held-out log-likelihood and the scores.

- **before** is the code before issue 16: dynamax's ``LinearAutoregressiveHMM.fit_em`` (kappa
  is a constant of the model, so every point traces and compiles anew) and a fresh
  ``jax.jit`` of the Viterbi and marginal passes per point.
- **after** is ``arhmm.run_one``, as ``arhmm.sweep`` calls it.

Printed: each side's sweep seconds (and its first point, which compiles), and the ratio.
Both sides first run one untimed point at K 2 (imports and one-off compiles).
``--sizes`` also prints the seconds per EM iteration as clips and frames grow (after's
program, compiled once per size).

    python benchmarks/segment.py
    python benchmarks/segment.py --sizes 16x600,64x600,256x600,64x300,64x1200
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def sample(n: int, T: int, K: int, P: int, seed: int = 0, width: int | None = None):
    """n sequences (T, width) of a random sticky K-state AR(1)-HMM (stay 0.98) in P dims,
    lifted by a fixed random map to ``width`` dims (None: P), and their states (T,)."""
    import jax

    from ncssm_policies.arhmm import make_hmm

    hmm = make_hmm(K, P, 1, 0.0)
    params, _ = hmm.initialize(jax.random.PRNGKey(seed))
    A = np.full((K, K), 0.02 / (K - 1)) + np.eye(K) * (0.98 - 0.02 / (K - 1))
    w = np.asarray(params.emissions.weights) * 0.5  # a stable AR(1) per state
    params, _ = hmm.initialize(jax.random.PRNGKey(seed), transition_matrix=jax.numpy.asarray(A),
                               emission_weights=jax.numpy.asarray(w))
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), n)
    z, x = jax.vmap(lambda k: hmm.sample(params, k, T))(keys)
    x = np.asarray(x, np.float32)
    if width:
        x = x @ np.random.default_rng(seed).standard_normal((P, width)).astype(np.float32)
    return list(x), list(np.asarray(z))


def before(cfg, data, K, kappa, n_pcs):
    """One sweep point as the code before issue 16 ran it (``run_one``): features fitted anew,
    k-means init and dynamax's ``fit_em`` on the fitting clips, then freshly jitted Viterbi
    and marginal passes, then the scores."""
    import jax

    from ncssm_policies.arhmm import Features, make_hmm, scores

    feats = Features.fit(cfg.feature, [data.raw[i] for i in data.train_ids], n_pcs)
    xs = [feats(x) for x in data.raw]
    hmm = make_hmm(K, feats.dim, cfg.num_lags, kappa)
    X = jax.numpy.asarray(np.stack([xs[i] for i in data.train_ids]))
    k_init, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params, props = hmm.initialize(k_init, method="kmeans", emissions=X.reshape(-1, feats.dim))
    params, _ = hmm.fit_em(params, props, X, jax.vmap(hmm.compute_inputs)(X),
                           num_iters=cfg.num_iters, verbose=False)
    labels = jax.jit(jax.vmap(lambda x: hmm.most_likely_states(params, x, hmm.compute_inputs(x))))(
        jax.numpy.asarray(np.stack(xs)))
    ll = jax.jit(jax.vmap(lambda x: hmm.marginal_log_prob(params, x, hmm.compute_inputs(x))))(
        jax.numpy.asarray(np.stack([xs[i] for i in data.val_ids])))
    return float(ll.sum()), scores(list(np.asarray(labels)), data.truth, data.dt)


def sweep_seconds(run, grid) -> tuple[float, float]:
    """(whole sweep, first point) in seconds."""
    t0 = time.perf_counter()
    first = None
    for K, kappa in grid:
        run(K, kappa)
        first = first or time.perf_counter() - t0
    return time.perf_counter() - t0, first


def em_iteration(n: int, T: int, K: int, P: int, reps: int = 5) -> tuple[float, float]:
    """(compile seconds, median seconds per EM iteration) of after's program on n x T."""
    import jax
    import jax.numpy as jnp

    from ncssm_policies.arhmm import padded, programs

    xs = sample(n, T, K, P)[0]
    prog = programs(K, P, 1)
    X, U, mask = (jnp.asarray(a) for a in padded(xs, 1))
    params = prog.init(0, 0, np.concatenate(xs), 1e7)
    t = time.perf_counter()
    jax.block_until_ready(prog.em(params, X, U, mask, jnp.float32(1e7), num_iters=10))
    compile_s = time.perf_counter() - t
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(prog.em(params, X, U, mask, jnp.float32(1e7), num_iters=10))
        runs.append((time.perf_counter() - t) / 10)
    return compile_s - float(np.median(runs)) * 10, float(np.median(runs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=51, help="fitting clips (the built-in: 51)")
    p.add_argument("--held-out", type=int, default=13)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--width", type=int, default=67, help="feature width (qpos_local: 67)")
    p.add_argument("--dim", type=int, default=10, help="PCs (and the AR-HMM's dims)")
    p.add_argument("--iters", type=int, default=50, help="EM iterations per fit")
    p.add_argument("--states", default="5,6,8,10,12")
    p.add_argument("--kappas", default="1e5,1e6,1e7,1e8")
    p.add_argument("--sizes", default="", help="clips x frames for the per-iteration table")
    args = p.parse_args()
    from pathlib import Path

    import jax

    from ncssm_policies.arhmm import Data, SegmentConfig, run_one

    grid = [(int(k), float(c)) for k in args.states.split(",") for c in args.kappas.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; {args.clips} + {args.held_out} clips x {args.frames} "
          f"frames, {args.width}-d features to {args.dim} PCs, {args.iters} EM iterations, 1 "
          f"restart; grid {len(grid)} points (K {args.states} x kappa {args.kappas})",
          flush=True)
    n = args.clips + args.held_out
    raw, truth = sample(n, args.frames, 8, args.dim, width=args.width)
    data = Data(Path("."), [], raw, truth, np.arange(args.clips), np.arange(args.clips, n), 0.02)
    cfg = SegmentConfig(feature="x", n_pcs=args.dim, num_iters=args.iters, num_restarts=1)
    cache: dict = {}
    run_one(cfg, data, 2, 1.0, args.dim, features={})  # warm-up: imports, one-off compiles
    before(cfg, data, 2, 1.0, args.dim)  # (K 2 is not in the grid: its programs are not reused)
    t_after, first_after = sweep_seconds(
        lambda K, c: run_one(cfg, data, K, c, args.dim, features=cache), grid)
    t_before, first_before = sweep_seconds(lambda K, c: before(cfg, data, K, c, args.dim), grid)
    print(f"{'':>7} {'sweep s':>9} {'first point s':>14} {'s per point':>12}")
    for name, t, f in (("before", t_before, first_before), ("after", t_after, first_after)):
        print(f"{name:>7} {t:>9.1f} {f:>14.1f} {t / len(grid):>12.2f}")
    print(f"ratio (before / after): {t_before / t_after:.1f}x", flush=True)

    if args.sizes:
        print(f"\nEM iteration (after's program), K 8, P {args.dim}, median of 5 x 10 iterations")
        print(f"{'clips':>6} {'frames':>7} {'total':>8} {'compile s':>10} {'s / iter':>9} "
              f"{'µs / frame':>11}")
        for size in args.sizes.split(","):
            n, T = (int(v) for v in size.split("x"))
            c, per = em_iteration(n, T, 8, args.dim)
            print(f"{n:>6} {T:>7} {n * T:>8} {c:>10.1f} {per:>9.4f} {1e6 * per / (n * T):>11.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
