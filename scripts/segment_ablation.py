"""Why did ``ncssm-data segment`` fit worse than a plain dynamax AR-HMM? Each difference, alone.

On AR-HMM data with known states (K 4, a 10-d latent AR(1) per state lifted to 67 dims, the
shape of issue 16's clips), every variant starts from the same init (``arhmm.fit``'s first:
k-means centroids, the sticky prior's mode) and runs 50 EM iterations with kappa 1e7; the labels are Viterbi's.
Printed: ARI against the true states per data set ("NaN": EM went non-finite), the mean, and
how many diverged.

- ``plain``: dynamax's ``LinearAutoregressiveHMM.fit_em``, untouched.
- ``+MAP M-step``: our emission M-step with 0.01 pseudo-frames of prior (the old ncssm fit).
- ``+transitions``: our expected transition counts (``arhmm.expected_transitions``), dynamax's
  M-step.
- ``both``: the two together (``arhmm.fit`` with one restart).
- ``both, 4 restarts``: ``arhmm.fit`` as ``ncssm-data segment`` runs it (the best training
  log-likelihood of 4 k-means seeds).
- ``unscaled PCs``: ``both`` on PCs scaled by one common factor instead of z-scored.
- ``equal pieces``: ``both`` on unequal-length clips cut into pieces of the shortest (the old
  batching), against ``both`` on the whole clips (padded and masked).

    python scripts/segment_ablation.py [--sets 6]
"""

from __future__ import annotations

import argparse

import numpy as np


def sample(seed: int, lengths, K=4, lat=10, D=67, stay=0.98, bias=0.3):
    """Clips (T_i, D) of a sticky K-state AR(1) process in ``lat`` dims lifted to D, and the
    true states (T_i,)."""
    rng = np.random.default_rng(seed)
    A = [rng.uniform(0.3, 0.97) * np.linalg.qr(rng.standard_normal((lat, lat)))[0]
         for _ in range(K)]
    b = [bias * rng.standard_normal(lat) for _ in range(K)]
    sd = rng.uniform(0.05, 0.5, K)
    M = rng.standard_normal((D, lat))
    xs, zs = [], []
    for T in lengths:
        z = np.zeros(T, int)
        z[0] = rng.integers(K)
        x = np.zeros((T, lat))
        for t in range(1, T):
            z[t] = z[t - 1] if rng.random() < stay else rng.integers(K)
            x[t] = A[z[t]] @ x[t - 1] + b[z[t]] + sd[z[t]] * rng.standard_normal(lat)
        xs.append((x @ M.T + 0.001 * rng.standard_normal((T, D))).astype(np.float32))
        zs.append(z)
    return xs, zs


def with_transitions(hmm):
    """``hmm`` whose E-step is ``arhmm.e_step`` (our expected transitions), all frames real."""
    import types

    import jax.numpy as jnp

    from ncssm_policies.arhmm import e_step

    hmm.e_step = types.MethodType(
        lambda self, params, x, u: e_step(self, params, x, u, jnp.ones(len(x), bool)), hmm)
    return hmm


def fit_em(hmm, xs, kappa, iters=50):
    """dynamax's own fit_em on equal-length pieces of ``xs``, from ``arhmm.fit``'s first init;
    labels of every sequence whole, or None when EM went non-finite."""
    import jax

    from ncssm_policies.arhmm import programs

    _, props = hmm.initialize(jax.random.PRNGKey(0))
    params = programs(hmm.num_states, hmm.emission_dim, 1).init(0, 0, np.concatenate(xs), kappa)
    L = min(len(x) for x in xs)
    X = jax.numpy.asarray(np.stack([x[k * L:(k + 1) * L] for x in xs for k in range(len(x) // L)]))
    params, lps = hmm.fit_em(params, props, X, jax.vmap(hmm.compute_inputs)(X), num_iters=iters,
                             verbose=False)
    if not np.isfinite(np.asarray(lps)).all():
        return None
    return [np.asarray(hmm.most_likely_states(params, jax.numpy.asarray(x),
                                              hmm.compute_inputs(jax.numpy.asarray(x))))
            for x in xs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", type=int, default=6, help="generated data sets per kind")
    args = p.parse_args()
    from dynamax.hidden_markov_model import LinearAutoregressiveHMM
    from sklearn.metrics import adjusted_rand_score

    from ncssm_policies.arhmm import Features, fit, make_hmm

    K, kappa = 4, 1e7

    def ari(zs, labels):
        return float("nan") if labels is None else adjusted_rand_score(np.concatenate(zs),
                                                                     np.concatenate(labels))

    def ours(feats, fx, restarts=1):
        return fit(feats, fx, K, kappa, 1, 50, 0, restarts).decode(fx)

    variants = {
        "plain": lambda f, fx: fit_em(LinearAutoregressiveHMM(
            K, f.dim, transition_matrix_stickiness=kappa), fx, kappa),
        "+MAP M-step": lambda f, fx: fit_em(make_hmm(K, f.dim, 1, kappa), fx, kappa),
        "+transitions": lambda f, fx: fit_em(with_transitions(LinearAutoregressiveHMM(
            K, f.dim, transition_matrix_stickiness=kappa)), fx, kappa),
        "both": ours,
        "both, 4 restarts": lambda f, fx: ours(f, fx, 4),
    }
    equal = [(s, 0.3) for s in range(args.sets)] + [(s, 0.0) for s in range(args.sets)]
    rows = {name: [] for name in [*variants, "unscaled PCs", "whole clips", "equal pieces"]}
    for seed, bias in equal:
        xs, zs = sample(seed, [600] * 12, bias=bias)
        feats = Features.fit("x", xs, 10)
        fx = [feats(x) for x in xs]
        for name, run in variants.items():
            rows[name].append(ari(zs, run(feats, fx)))
        feats.sd = np.full_like(feats.sd, np.sqrt(np.mean(feats.sd ** 2)))
        rows["unscaled PCs"].append(ari(zs, ours(feats, [feats(x) for x in xs])))
        print(f"data set seed {seed} bias {bias}: " + ", ".join(
            f"{k} {v[-1]:.3f}" for k, v in rows.items() if v), flush=True)
    for seed in range(args.sets):
        lengths = np.random.default_rng(100 + seed).integers(150, 900, 12)
        xs, zs = sample(100 + seed, lengths)
        feats = Features.fit("x", xs, 10)
        fx = [feats(x) for x in xs]
        rows["whole clips"].append(ari(zs, ours(feats, fx)))
        rows["equal pieces"].append(ari(zs, fit_em(with_transitions(
            make_hmm(K, feats.dim, 1, kappa)), fx, kappa)))
        print(f"unequal lengths {sorted(lengths.tolist())}: whole {rows['whole clips'][-1]:.3f}, "
              f"pieces {rows['equal pieces'][-1]:.3f}", flush=True)
    print(f"\n{'variant':<18} {'mean ARI':>9} {'min':>6} {'diverged':>9}   (data sets: "
          f"{len(equal)} equal-length, {args.sets} unequal)")
    for name, v in rows.items():
        a = np.array(v)
        ok = a[np.isfinite(a)]
        print(f"{name:<18} {ok.mean() if ok.size else np.nan:>9.3f} "
              f"{ok.min() if ok.size else np.nan:>6.3f} {int((~np.isfinite(a)).sum()):>6}/{len(a)}")


if __name__ == "__main__":
    main()
