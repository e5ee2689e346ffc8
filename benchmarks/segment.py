"""AR-HMM EM fit time per iteration as clips and frames grow.

Sequences are sampled from a random sticky AR-HMM (``--states`` K, ``--dim`` P, one lag) with
dynamax. One EM iteration is what ``LinearAutoregressiveHMM.fit_em`` (and so
:func:`ncssm_policies.arhmm.fit`) runs per iteration: a vmapped E-step over the batch of
sequences, then the M-step. It is jitted once per size (the compile time is printed), then
timed ``--iters`` times. Printed per size: the compile time, the median seconds per
iteration, the time per frame, and the ratio to the first size.

    python benchmarks/segment.py --clips 16,64,256 --frames 600
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def sample(n: int, T: int, K: int, P: int, seed: int = 0) -> list[np.ndarray]:
    import jax

    from ncssm_policies.arhmm import make_hmm

    hmm = make_hmm(K, P, 1, 0.0)
    params, _ = hmm.initialize(jax.random.PRNGKey(seed))
    A = np.full((K, K), 0.02 / (K - 1)) + np.eye(K) * (0.98 - 0.02 / (K - 1))
    w = np.asarray(params.emissions.weights) * 0.5  # a stable AR(1) per state
    params, _ = hmm.initialize(jax.random.PRNGKey(seed), transition_matrix=jax.numpy.asarray(A),
                               emission_weights=jax.numpy.asarray(w))
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), n)
    _, x = jax.vmap(lambda k: hmm.sample(params, k, T))(keys)
    return list(np.asarray(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", default="16,64,256")
    p.add_argument("--frames", default="600", help="frames per clip; several: 300,600,1200")
    p.add_argument("--states", type=int, default=8)
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    import jax

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; K {args.states}, P {args.dim}, 1 lag, "
          f"{args.iters} timed EM iterations per size (medians)")
    print(f"{'clips':>6} {'frames':>7} {'total frames':>13} {'compile s':>10} {'s / iter':>10} "
          f"{'µs / frame':>11} {'vs first':>9}")
    base = None
    for T in [int(t) for t in args.frames.split(",")]:
        for n in [int(c) for c in args.clips.split(",")]:
            compile_s, per = em_timing(sample(n, T, args.states, args.dim), args.states,
                                       args.iters)
            base = base or per
            print(f"{n:>6} {T:>7} {n * T:>13} {compile_s:>10.1f} {per:>10.4f} "
                  f"{1e6 * per / (n * T):>11.2f} {per / base:>8.1f}x", flush=True)


def em_timing(xs: list[np.ndarray], K: int, iters: int) -> tuple[float, float]:
    """(compile seconds, median seconds per EM iteration) on sequences ``xs``."""
    from functools import partial

    import jax

    from ncssm_policies.arhmm import Features, make_hmm, pieces

    feats = Features.fit("x", xs, None)
    X = jax.numpy.asarray(pieces([feats(x) for x in xs]))
    hmm = make_hmm(K, feats.dim, 1, 1e3)
    params, props = hmm.initialize(jax.random.PRNGKey(0), method="kmeans",
                                   emissions=X.reshape(-1, feats.dim))
    inputs = jax.vmap(hmm.compute_inputs)(X)

    @jax.jit
    def em(params, m_state):
        stats, lls = jax.vmap(partial(hmm.e_step, params))(X, inputs)
        params, m_state = hmm.m_step(params, props, stats, m_state)
        return params, m_state, lls.sum()

    state = (params, hmm.initialize_m_step_state(params, props))
    t = time.perf_counter()
    *state, ll = em(*state)
    jax.block_until_ready(ll)
    compile_s = time.perf_counter() - t
    runs = []
    for _ in range(iters):
        t = time.perf_counter()
        *state, ll = em(*state)
        jax.block_until_ready(ll)
        runs.append(time.perf_counter() - t)
    return compile_s, float(np.median(runs))


if __name__ == "__main__":
    main()
