"""Behavioural syllables from clips: a sticky autoregressive HMM (dynamax), fitted by EM.

The core of keypoint-MoSeq (Weinreb et al. 2024), on the clips' own pose features:

1. **Features.** A named source of the clips (``qpos_local`` by default: a slice of ``/obs``,
   or any dataset such as ``latent_mean``), optionally PCA-reduced to ``n_pcs`` dims, then
   z-scored. PCA and z-score stats come from the training clips only.
2. **Model.** :class:`dynamax.hidden_markov_model.LinearAutoregressiveHMM` with ``num_states``
   K, ``num_lags`` and stickiness ``kappa`` (added to the Dirichlet prior's diagonal, so EM's
   MAP transition matrix favours staying), with two numerical repairs (:func:`make_hmm`,
   :func:`expected_transitions`): neither changes a clean fit, each removes one way EM went NaN.
3. **Fitting.** EM over the training clips as one padded, masked batch (every frame used,
   nothing bleeds across clips), from ``num_restarts`` k-means inits; the best training
   log-likelihood wins. One compiled EM program per (K, P, lags, batch shape) serves every
   kappa and restart of a sweep (:func:`programs`).
4. **Decoding.** The most likely state sequence (Viterbi) of every clip, whole.
5. **Writing.** The labels go into each clip as the int32 dataset ``out_key`` (default
   ``/syllables_arhmm``), with the model and hyperparameters as its attributes. Each clip is
   rewritten atomically (a copy is changed, then replaces the file). The clip schema's own
   datasets (``/syllables`` holds the built-in truth) are never written, and an existing
   ``out_key`` only with ``overwrite``.
6. **The model** (AR-HMM parameters, PCA, feature stats, hyperparameters) is saved as an
   ``.npz`` of plain arrays plus a JSON string (no pickle), so new clips get the same syllables.

Scores: the held-out log-likelihood per frame (clips not used for fitting: the val split of
``train_frac`` and ``seed``, as training uses), the number of states in use (>= 1 % of
frames), the median syllable duration in frames and seconds, and, when the clips hold the
true ``/syllables``, the adjusted Rand index and normalized mutual information against them.

``ncssm-data segment --config configs/segment.yaml [--override k=v ...] [--sweep]``.

It lives with the models (it is a probabilistic sequence model, on JAX through dynamax), above
the clip layer it reads and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np

from ncssm_data import locks
from ncssm_data.clips import SCHEMA_KEYS, ClipStore, atomic_path, atomic_write_text
from ncssm_data.dataset import split_clips
from ncssm_data.errors import ClipError

RESERVED = SCHEMA_KEYS  # the clip schema's datasets: never written here
SELECT = ("loglik", "duration")
IN_USE = 0.01  # a state is in use when it labels at least this fraction of frames


@dataclass
class SegmentConfig:
    """``ncssm-data segment``'s config; the defaults are ``configs/segment.yaml``'s.

    Data: ``clip_dir`` (None: the built-in rodent clips), ``feature``, ``n_pcs`` (None: no
    PCA), ``train_frac`` and ``seed`` (the fit/held-out split, k-means and EM).
    Model: ``num_states`` (K >= 2), ``kappa`` (>= 0), ``num_lags``, ``num_iters`` of EM, and
    ``num_restarts`` (EM from that many k-means seeds; the best training log-likelihood wins).
    ``model``: a saved model to label the clips with instead of fitting one.
    Output: ``out_dir`` (model, summary, plots), ``out_key`` (the labels' dataset),
    ``write_labels``, ``overwrite``, ``n_ethogram`` (clips in the ethogram).
    Sweep: every combination of ``sweep_num_states`` x ``sweep_kappa`` x ``sweep_n_pcs``
    (empty: ``n_pcs`` only), ranked by held-out log-likelihood (``select: loglik``) or by how
    close the median duration is to ``target_duration`` seconds (``select: duration``).
    """

    clip_dir: str | None = None
    feature: str = "qpos_local"
    n_pcs: int | None = 10
    train_frac: float = 0.8
    seed: int = 0
    num_states: int = 6
    kappa: float = 1e7
    num_lags: int = 1
    num_iters: int = 50
    num_restarts: int = 8
    model: str | None = None
    out_dir: str = "runs/segment"
    out_key: str = "syllables_arhmm"
    write_labels: bool = True
    overwrite: bool = False
    n_ethogram: int = 6
    sweep_num_states: list[int] = field(default_factory=lambda: [5, 6, 8, 10, 12])
    sweep_kappa: list[float] = field(default_factory=lambda: [1e5, 1e6, 1e7, 1e8])
    sweep_n_pcs: list[int] = field(default_factory=list)
    select: str = "loglik"
    target_duration: float = 0.4

    def __post_init__(self):
        check_hyper(self.num_states, self.kappa, self.num_lags, self.n_pcs)
        for k in self.sweep_num_states:
            check_hyper(k, self.kappa, self.num_lags, self.n_pcs)
        for kappa in self.sweep_kappa:
            check_hyper(self.num_states, kappa, self.num_lags, self.n_pcs)
        for n in self.sweep_n_pcs:
            check_hyper(self.num_states, self.kappa, self.num_lags, n)
        for key, low in (("seed", 0), ("n_ethogram", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"Config key {key!r} must be an int >= {low}, got {v!r}.")
        if self.num_iters < 1:
            raise ValueError(f"Config key 'num_iters' must be >= 1, got {self.num_iters!r}.")
        if isinstance(self.num_restarts, bool) or not isinstance(self.num_restarts, int) \
                or self.num_restarts < 1:
            raise ValueError(f"Config key 'num_restarts' must be an int >= 1, got "
                             f"{self.num_restarts!r}.")
        if not 0.0 < self.train_frac < 1.0:
            raise ValueError(f"Config key 'train_frac' must be in (0, 1), got {self.train_frac!r}.")
        if self.select not in SELECT:
            raise ValueError(f"Config key 'select' must be one of {list(SELECT)}, got "
                             f"{self.select!r}.")
        if self.target_duration <= 0:
            raise ValueError(f"Config key 'target_duration' must be > 0 seconds, got "
                             f"{self.target_duration!r}.")
        if not self.out_key or "/" in self.out_key or self.out_key in RESERVED:
            raise ValueError(f"Config key 'out_key' is {self.out_key!r}; it must be a plain "
                             f"dataset name other than the clip schema's {sorted(RESERVED)}.")


def check_hyper(num_states, kappa, num_lags, n_pcs) -> None:
    """One sentence for each out-of-range AR-HMM hyperparameter."""
    if isinstance(num_states, bool) or not isinstance(num_states, (int, np.integer)) \
            or num_states < 2:
        raise ValueError(f"num_states (K) must be an int >= 2, got {num_states!r}.")
    if not kappa >= 0:
        raise ValueError(f"kappa (stickiness) must be >= 0, got {kappa!r}.")
    if num_lags < 1:
        raise ValueError(f"num_lags must be >= 1, got {num_lags!r}.")
    if n_pcs is not None and n_pcs < 1:
        raise ValueError(f"n_pcs must be >= 1 or null (no PCA), got {n_pcs!r}.")


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------


@dataclass
class Features:
    """Feature ``name`` (width ``width``) -> optional PCA -> z-score: (T, width) -> (T, P).

    ``mean`` (width,) and ``components`` (P, width) are the PCA (``components`` None without
    one); ``mu`` and ``sd`` (P,) the z-score stats.
    """

    name: str
    width: int
    mean: np.ndarray
    components: np.ndarray | None
    mu: np.ndarray
    sd: np.ndarray

    @classmethod
    def fit(cls, name: str, xs: list[np.ndarray], n_pcs: int | None) -> Features:
        """Fit on training clips ``xs``, each (T, width)."""
        X = np.concatenate(xs).astype(np.float64)
        width = X.shape[1]
        if n_pcs is not None and n_pcs > width:
            raise ValueError(f"n_pcs {n_pcs} is larger than feature {name!r}, which has {width} "
                             f"dims.")
        mean = X.mean(0)
        components = None
        if n_pcs is not None:
            _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
            components = vt[:n_pcs]
            X = (X - mean) @ components.T
        mu, sd = X.mean(0), X.std(0)
        return cls(name, width, mean, components, mu, np.where(sd > 1e-8, sd, 1.0))

    def __call__(self, x: np.ndarray, where: str = "the clips") -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"The model was fitted on feature {self.name!r} of width "
                             f"{self.width}; {where} give width {x.shape[-1]}.")
        x = x.astype(np.float64)
        if self.components is not None:
            x = (x - self.mean) @ self.components.T
        return ((x - self.mu) / self.sd).astype(np.float32)

    @property
    def dim(self) -> int:
        return len(self.mu)


def read_features(store: ClipStore, name: str, ids) -> list[np.ndarray]:
    """Feature ``name`` (a named slice of ``/obs``, or a dataset) of clips ``ids``: a list of
    (T_i, width) arrays. A missing feature, or NaN in it, raises
    :class:`~ncssm_data.errors.ClipError` naming the clips."""
    if name in store.obs_layout:
        get = lambda i: store.obs(i, name)  # noqa: E731
    elif store.has(name):
        get = lambda i: store.read(i, name)  # noqa: E731
    else:
        raise ClipError(f"The clips in {store.root} have no feature {name!r}: no dataset /{name} "
                        f"and no such name in the obs layout {sorted(store.obs_layout)}.")
    xs = [np.asarray(get(int(i))) for i in ids]
    return [x[:, None] if x.ndim == 1 else x for x in xs]


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


@dataclass
class ARHMM:
    """A fitted sticky AR-HMM on :class:`Features`.

    ``params``: dynamax's ``ParamsLinearAutoregressiveHMM`` (initial probs (K,), transition
    matrix (K, K), emission weights (K, P, P * num_lags), biases (K, P), covariances
    (K, P, P)). ``hyper``: num_states, kappa, num_lags, n_pcs, num_iters, seed,
    num_restarts and the kept ``restart``. ``em_log_probs`` (num_iters,): the kept run's log
    joint per EM iteration; ``restarts``: each run's training log-likelihood per frame.
    """

    features: Features
    params: object
    hyper: dict
    em_log_probs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    restarts: list = field(default_factory=list)

    def decode(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """The most likely state sequence (T_i,) int32 of each feature sequence (T_i, P)."""
        return self.label(xs)[0]

    def label(self, xs: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Viterbi states [(T_i,) int32] and (n,) log p(x_i), marginal over states, of each
        feature sequence (T_i, P), in one padded pass."""
        import jax.numpy as jnp

        L = self.hyper["num_lags"]
        X, U, mask = (jnp.asarray(a) for a in padded(xs, L))
        z, ll = programs(self.hyper["num_states"], self.features.dim, L).label(
            self.params, X, U, mask)
        z = np.asarray(z, np.int32)
        return [z[i, :len(x)] for i, x in enumerate(xs)], np.asarray(ll, np.float64)

    # --- saving --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` (.npz of plain arrays, atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        p, f = self.params, self.features
        arrays = {
            "initial_probs": p.initial.probs, "transition_matrix": p.transitions.transition_matrix,
            "weights": p.emissions.weights, "biases": p.emissions.biases,
            "covs": p.emissions.covs, "pca_mean": f.mean,
            "pca_components": f.components if f.components is not None else np.zeros((0, f.width)),
            "mu": f.mu, "sd": f.sd, "em_log_probs": self.em_log_probs,
        }
        meta = {"format": "ncssm-arhmm", "version": 1, "feature": f.name, "width": f.width,
                "hyper": self.hyper, "restarts": self.restarts}
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, meta=np.array(json.dumps(meta)),
                     **{k: np.asarray(v) for k, v in arrays.items()})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ARHMM:
        """A model written by :meth:`save`; anything else is one ValueError naming the file."""
        import jax

        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
            meta = json.loads(str(a.pop("meta")))
            if meta.get("format") != "ncssm-arhmm":
                raise ValueError
            comps = a["pca_components"]
            features = Features(meta["feature"], int(meta["width"]), a["pca_mean"],
                                comps if comps.shape[0] else None, a["mu"], a["sd"])
            h = meta["hyper"]
            params = make_params(a["initial_probs"], a["transition_matrix"], a["weights"],
                                 a["biases"], a["covs"])
            K, P = int(h["num_states"]), features.dim
            shapes = [(K,), (K, K), (K, P, P * int(h["num_lags"])), (K, P), (K, P, P)]
            if [tuple(x.shape) for x in jax.tree.leaves(params)] != shapes:
                raise ValueError
            return cls(features, params, h, a["em_log_probs"], meta.get("restarts", []))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not an AR-HMM model saved by ncssm-data segment "
                             f"({type(err).__name__}).") from None


PRIOR_FRAMES = 0.01  # pseudo-frames of the emission prior (see make_hmm)
KMEANS_FRAMES = 10_000  # k-means init on at most this many random frames


def make_hmm(num_states: int, dim: int, num_lags: int, kappa):
    """dynamax's ``LinearAutoregressiveHMM`` with stickiness ``kappa`` (a float, or a traced
    scalar inside :func:`programs`) and a vanishingly weak prior on the emissions, so that
    EM's M-step stays finite.

    dynamax's own M-step solves each state's regression with no prior: a state that EM
    empties makes the solve singular, and its NaN then spreads to every state (plain dynamax
    fits of generated data went NaN this way). Here each state's regression gets
    :data:`PRIOR_FRAMES` pseudo-frames of evidence for zero weights and bias and for an
    identity covariance (in z-scored units). A used state holds hundreds of frames, so the
    prior does not move a clean fit (the same labels as dynamax's own M-step from the same
    init, to float precision: ``tests/test_segment.py``); an emptied state falls back to
    zero weights and an identity covariance.
    """
    import jax
    import jax.numpy as jnp
    from dynamax.hidden_markov_model import LinearAutoregressiveHMM
    from dynamax.hidden_markov_model.models.arhmm import (
        LinearAutoregressiveHMMEmissions,
    )
    from dynamax.utils.utils import pytree_sum
    from jax import vmap

    class Emissions(LinearAutoregressiveHMMEmissions):
        def m_step(self, params, props, batch_stats, m_step_state):
            nu = PRIOR_FRAMES
            stats = pytree_sum(batch_stats, axis=0)

            def solve(st):
                xx = jnp.block([[st["sum_xxT"], st["sum_x"][:, None]],
                                [st["sum_x"][None, :], st["sum_w"][None, None]]])
                xy = jnp.vstack([st["sum_xyT"], st["sum_y"]])
                xx = xx + nu * jnp.eye(xx.shape[0])
                Ab = jnp.linalg.solve(xx, xy).T
                resid = st["sum_yyT"] - Ab @ xy  # (the prior's mean is 0, so no extra term)
                Sigma = (resid + nu * jnp.eye(resid.shape[0])) / (st["sum_w"] + nu)
                return Ab[:, :-1], Ab[:, -1], 0.5 * (Sigma + Sigma.T)

            W, b, S = vmap(solve)(stats)
            return params._replace(weights=W, biases=b, covs=S), m_step_state

        def _compute_conditional_logliks(self, params, emissions, inputs=None):
            """(T, K) log N(x_t; W_k u_t + b_k, S_k) as matrix products: whitened by each
            state's inverse Cholesky factor C_k, z = C_k x_t - (C_k W_k) u_t - C_k b_k.
            (dynamax builds a distribution per frame and state: the same values, slower.)"""
            T, P = emissions.shape
            K = params.covs.shape[0]
            C = jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(params.covs),
                                                  jnp.broadcast_to(jnp.eye(P), (K, P, P)),
                                                  lower=True)  # (K, P, P)
            CW = jnp.einsum("kpq,kqi->kpi", C, params.weights).reshape(K * P, -1)
            z = emissions @ C.reshape(K * P, P).T - inputs @ CW.T \
                - jnp.einsum("kpq,kq->kp", C, params.biases).reshape(-1)
            half_logdet = -jnp.log(jnp.diagonal(C, axis1=1, axis2=2)).sum(1)  # (K,)
            return -0.5 * (z.reshape(T, K, P) ** 2).sum(-1) - half_logdet \
                - 0.5 * P * jnp.log(2 * jnp.pi)

        def collect_suff_stats(self, params, posterior, emissions, inputs=None):
            """dynamax's weighted sums (sum_w, sum_x, sum_y, sum_xxT, sum_xyT, sum_yyT per
            state) as one matrix product of z = [inputs, emissions] (its einsums are 3x
            slower on the CPU)."""
            w = posterior.smoothed_probs  # (T, K)
            T, K = w.shape
            z = jnp.concatenate([inputs, emissions], axis=1)  # (T, D)
            D, n = z.shape[1], inputs.shape[1]
            S = ((w[:, :, None] * z[:, None, :]).reshape(T, K * D).T @ z).reshape(K, D, D)
            first = w.T @ z  # (K, D)
            return dict(sum_w=w.sum(0), sum_x=first[:, :n], sum_y=first[:, n:],
                        sum_xxT=S[:, :n, :n], sum_xyT=S[:, :n, n:], sum_yyT=S[:, n:, n:])

    hmm = LinearAutoregressiveHMM(int(num_states), int(dim), num_lags=int(num_lags),
                                  transition_matrix_stickiness=kappa)
    hmm.emission_component = Emissions(int(num_states), int(dim), num_lags=int(num_lags))
    return hmm


def lagged(x: np.ndarray, num_lags: int) -> np.ndarray:
    """The AR inputs (T, P * num_lags) of one sequence x (T, P): [x_{t-1}, ..., x_{t-L}],
    zeros before frame 0 (dynamax's ``compute_inputs``)."""
    T, P = x.shape
    pad = np.concatenate([np.zeros((num_lags, P), x.dtype), x])
    return np.concatenate([pad[lag:lag + T] for lag in reversed(range(num_lags))], axis=1)


def padded(xs: list[np.ndarray], num_lags: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences (T_i, P) as one batch padded at the end to the longest: emissions X
    (B, T, P), inputs U (B, T, P * num_lags) and mask (B, T), True on real frames.

    Every sequence is used whole and on its own: no frame is dropped and nothing bleeds
    across clips. The padded frames are neutral (see :func:`programs`).
    """
    T = max(len(x) for x in xs)
    B, P = len(xs), xs[0].shape[1]
    X = np.zeros((B, T, P), np.float32)
    U = np.zeros((B, T, P * num_lags), np.float32)
    mask = np.zeros((B, T), bool)
    for i, x in enumerate(xs):
        X[i, :len(x)], U[i, :len(x)], mask[i, :len(x)] = x, lagged(x, num_lags), True
    return X, U, mask


def make_params(initial_probs, transition_matrix, weights, biases, covs):
    """dynamax's ``ParamsLinearAutoregressiveHMM`` (float32) from arrays: (K,), (K, K),
    (K, P, P * num_lags), (K, P), (K, P, P)."""
    import jax.numpy as jnp
    from dynamax.hidden_markov_model.models.arhmm import (
        ParamsLinearAutoregressiveHMM,
        ParamsLinearRegressionHMMEmissions,
        ParamsStandardHMMInitialState,
        ParamsStandardHMMTransitions,
    )

    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return ParamsLinearAutoregressiveHMM(
        ParamsStandardHMMInitialState(f32(initial_probs)),
        ParamsStandardHMMTransitions(f32(transition_matrix)),
        ParamsLinearRegressionHMMEmissions(f32(weights), f32(biases), f32(covs)))


@functools.cache
def programs(num_states: int, dim: int, num_lags: int) -> SimpleNamespace:
    """The programs of one (K, P, num_lags), built once per process.

    The jitted ones compile once per batch shape (B, T) and are then reused across kappas (a
    traced argument), restarts and sweep points; dynamax's ``fit_em`` compiles anew on every
    call (kappa is baked into its model). On padded batches (:func:`padded`):

    - ``em(params, X, U, mask, kappa, num_iters)`` -> (params, log joint per iteration
      (num_iters,), the final params' log-likelihoods (B,)): EM in one
      ``lax.scan``, dynamax's filters and M-steps with our emission M-step and expected
      transitions (:func:`make_hmm`, :func:`expected_transitions`).
    - ``label(params, X, U, mask)`` -> (Viterbi states (B, T), log-likelihoods (B,)).
    - ``init(seed, restart, frames, kappa)`` -> initial params (not jitted): k-means
      (scikit-learn) centroids of ``frames`` (N, P; at most :data:`KMEANS_FRAMES` random
      ones) as the biases, zero AR weights and
      identity covariances (dynamax's k-means init), uniform initial probabilities and the
      sticky prior's mode as the transition matrix.

    Padded frames have a flat likelihood, so the forward pass and the real frames' posteriors
    are exact; pairs into padding are left out of the expected transitions. Viterbi gives
    padded steps a transition matrix of ones, so the tail favours no last state. States of
    padded frames are arbitrary.
    """
    import jax
    import jax.numpy as jnp
    from dynamax.hidden_markov_model.inference import hmm_filter, hmm_posterior_mode

    K, P, L = int(num_states), int(dim), int(num_lags)
    # (traced, not run: dynamax's initialize draws from the prior, which would compile)
    _, props = jax.eval_shape(lambda key: make_hmm(K, P, L, 0.0).initialize(key),
                              jax.random.PRNGKey(0))

    def label(params, X, U, mask):
        hmm0 = make_hmm(K, P, L, 0.0)  # kappa only enters the prior, which only EM uses

        def one(x, u, m):
            init, A, ll = terms(hmm0, params, x, u, m)
            # ones into padded frames, built per step (a (T-1, K, K) stack would be K x the data)
            states = hmm_posterior_mode(init, None, ll,
                                        transition_fn=lambda t: jnp.where(m[t + 1], A, 1.0))
            return states, hmm_filter(init, A, ll).marginal_loglik
        return jax.vmap(one)(X, U, mask)

    def em(params, X, U, mask, kappa, num_iters):
        hmm = make_hmm(K, P, L, kappa)

        def step(carry, _):
            params, m_state = carry
            stats, lls = jax.vmap(lambda x, u, m: e_step(hmm, params, x, u, m))(X, U, mask)
            lp = hmm.log_prior(params) + lls.sum()
            return hmm.m_step(params, props, stats, m_state), lp

        carry = (params, hmm.initialize_m_step_state(params, props))
        (params, _), lps = jax.lax.scan(step, carry, None, length=num_iters)
        ll = jax.vmap(lambda x, u, m: hmm_filter(*terms(hmm, params, x, u, m)).marginal_loglik)(
            X, U, mask)
        return params, lps, ll

    def init(seed, restart, frames, kappa):
        from sklearn.cluster import KMeans

        rng = np.random.default_rng([seed, restart])
        if len(frames) > KMEANS_FRAMES:  # a random subset is enough to place K centroids
            frames = frames[rng.choice(len(frames), KMEANS_FRAMES, replace=False)]
        centroids = KMeans(K, n_init=1, random_state=int(rng.integers(2**31))).fit(
            frames).cluster_centers_
        A = np.full((K, K), 0.1) + float(kappa) * np.eye(K)  # Dirichlet(1.1 + kappa I) - 1
        return make_params(np.full(K, 1.0 / K), A / A.sum(1, keepdims=True),
                           np.zeros((K, P, P * L)), centroids, np.tile(np.eye(P), (K, 1, 1)))

    return SimpleNamespace(em=jax.jit(em, static_argnames="num_iters"), label=jax.jit(label),
                           init=init)


def terms(hmm, params, x, u, mask):
    """(initial probs (K,), transition matrix (K, K), log-likelihoods (T, K)) of one padded
    sequence x (T, P), inputs u, mask (T,): padded frames get a flat (zero) log-likelihood."""
    import jax.numpy as jnp

    init, A, ll = hmm._inference_args(params, x, u)
    return init, A, jnp.where(mask[:, None], ll, 0.0)


def e_step(hmm, params, x, u, mask):
    """dynamax's E-step (its ``e_step``: two-filter smoothing, then each component's
    sufficient statistics) on one padded sequence, with :func:`expected_transitions` for the
    transition counts and padded frames weighted 0. Returns (stats, log-likelihood)."""
    from dynamax.hidden_markov_model.inference import (
        HMMPosterior,
        hmm_backward_filter,
        hmm_filter,
    )

    init, A, ll = terms(hmm, params, x, u, mask)
    filt = hmm_filter(init, A, ll)
    p = filt.filtered_probs * hmm_backward_filter(A, ll)[1]
    p = p / p.sum(1, keepdims=True)
    post = HMMPosterior(marginal_loglik=filt.marginal_loglik, filtered_probs=filt.filtered_probs,
                        predicted_probs=filt.predicted_probs, smoothed_probs=p * mask[:, None],
                        initial_probs=p[0],
                        trans_probs=expected_transitions(A, filt.filtered_probs, p, mask))
    stats = (hmm.initial_component.collect_suff_stats(params.initial, post, u),
             hmm.transition_component.collect_suff_stats(params.transitions, post, u),
             hmm.emission_component.collect_suff_stats(params.emissions, post, x, u))
    return stats, post.marginal_loglik


def expected_transitions(A, filtered, smoothed, mask):
    """Expected transition counts (K, K) of one sequence: sum over pairs (t, t+1) with frame
    t+1 real (``mask`` (T,)) of p(z_t = i, z_{t+1} = j | x), from the filtered and smoothed
    probabilities (T, K) and the transition matrix A (K, K).

    p(z_t, z_{t+1} | x) = filtered_t[i] A[i, j] smoothed_{t+1}[j] / predicted_{t+1}[j], with
    predicted_{t+1} = filtered_t A. dynamax (1.0.3) computes the same but zeroes the ratio
    wherever ``jnp.isclose(predicted, 0)``, i.e. below 1e-8. With kappa >= 1e7 every
    switch's predicted probability is below that, a switch then gets no mass, and a sequence
    whose smoothed mass sits on such a state divides 0 by 0: the NaN that made EM "diverge"
    (plain dynamax and ours alike). Here only an exact zero is skipped.
    """
    import jax.numpy as jnp

    f, s = filtered[:-1], smoothed[1:]
    pred = f @ A
    ratio = jnp.where(pred > 0, s / jnp.where(pred > 0, pred, 1.0), 0.0)  # (T-1, K)
    norm = jnp.einsum("ti,ij,tj->t", f, A, ratio)  # 1 up to rounding
    w = jnp.where(mask[1:] & (norm > 0), 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
    return A * jnp.einsum("ti,tj->ij", f * w[:, None], ratio)


def fit(features: Features, xs: list[np.ndarray], num_states: int, kappa: float, num_lags: int,
        num_iters: int, seed: int, num_restarts: int = 1, progress: bool = False) -> ARHMM:
    """Fit by EM on the feature sequences ``xs`` (each (T_i, P)), as one padded batch.

    ``num_restarts`` runs of ``num_iters`` EM iterations each start from k-means on all
    frames (``programs(...).init(seed, r, ...)``); the run with the highest training
    log-likelihood is kept. Each run's log-likelihood per frame is in ``model.restarts``. A
    run whose log-likelihood or parameters are not finite is dropped; if every run is,
    FloatingPointError.
    """
    import jax
    from tqdm.auto import tqdm

    check_hyper(num_states, kappa, num_lags, None if features.components is None
                else len(features.components))
    if num_restarts < 1:
        raise ValueError(f"num_restarts must be >= 1, got {num_restarts!r}.")
    prog = programs(num_states, features.dim, num_lags)
    X, U, mask = (jax.numpy.asarray(a) for a in padded(xs, num_lags))
    frames = np.concatenate(xs)
    best, runs = None, []
    for r in tqdm(range(num_restarts), desc=f"EM K {num_states} kappa {kappa:g}", unit="restart",
                  disable=not progress):
        params, lps, ll = prog.em(prog.init(seed, r, frames, kappa), X, U, mask,
                                  jax.numpy.float32(kappa), num_iters=num_iters)
        ll = float(np.asarray(ll, np.float64).sum()) / len(frames)
        lps = np.asarray(lps)
        ok = np.isfinite(ll) and np.isfinite(lps).all() and all(
            np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(params))
        runs.append({"restart": r, "train_ll": ll if ok else None})
        if ok and (best is None or ll > best[0]):
            best = (ll, r, params, lps)
    if best is None:
        raise FloatingPointError(
            f"EM diverged (non-finite log-likelihood) in all {num_restarts} restart(s) for K "
            f"{num_states}, kappa {kappa}, {num_lags} lag(s) on {features.dim} dims.")
    ll, r, params, lps = best
    hyper = {"num_states": int(num_states), "kappa": float(kappa), "num_lags": int(num_lags),
             "n_pcs": None if features.components is None else len(features.components),
             "num_iters": int(num_iters), "seed": int(seed), "num_restarts": int(num_restarts),
             "restart": int(r)}
    return ARHMM(features, params, hyper, lps, runs)


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


def durations(labels: list[np.ndarray]) -> np.ndarray:
    """Lengths (frames) of every run of one state, over all sequences."""
    runs = []
    for z in labels:
        change = np.flatnonzero(np.diff(z)) + 1
        edges = np.concatenate([[0], change, [len(z)]])
        runs.append(np.diff(edges))
    return np.concatenate(runs) if runs else np.zeros(0, np.int64)


def scores(labels: list[np.ndarray], truth: list[np.ndarray] | None, dt: float | None) -> dict:
    """States in use, median duration (frames, seconds), and ARI/NMI against ``truth``."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    z = np.concatenate(labels)
    frac = np.bincount(z) / len(z)
    d = durations(labels)
    out = {"states_in_use": int((frac >= IN_USE).sum()),
           "median_duration_frames": float(np.median(d)),
           "median_duration_s": float(np.median(d) * dt) if dt else None}
    if truth is not None:
        t = np.concatenate(truth)
        out.update(ari=float(adjusted_rand_score(t, z)),
                   nmi=float(normalized_mutual_info_score(t, z)))
    return out


# ----------------------------------------------------------------------------------------------
# Writing labels
# ----------------------------------------------------------------------------------------------


def run_id(cfg: SegmentConfig) -> str:
    """A digest of everything in ``cfg`` that decides the labels (not ``overwrite``): the
    labels of an interrupted run carry it, so running the same command again finishes them."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "overwrite"}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_writable(paths: list[Path], key: str, overwrite: bool, run: str | None = None) -> None:
    """Refuse (before anything is written) a reserved key, or an existing one without
    ``overwrite`` unless it holds the labels of the same ``run`` (an interrupted write of the
    same command)."""
    if key in RESERVED:
        raise ValueError(f"Dataset /{key} belongs to the clip schema and is never overwritten; "
                         f"choose another out_key.")
    if overwrite:
        return
    for p in paths:
        with h5py.File(p, "r") as f:
            if key in f and (run is None or f[key].attrs.get("run") != run):
                raise ValueError(f"Clip {p} already has /{key}; pass --overwrite (overwrite: true) "
                                 f"to replace it.")


def _label_attr(v):
    return json.dumps(v) if isinstance(v, (dict, list)) or v is None else v


def _has_labels(path: Path, key: str, z: np.ndarray, attrs: dict) -> bool:
    """Whether clip ``path`` already holds exactly these labels and attrs at ``/key``."""
    with h5py.File(path, "r") as f:
        if key not in f:
            return False
        ds = f[key]
        return (np.array_equal(ds[()], np.asarray(z, np.int32))
                and set(ds.attrs) == set(attrs)
                and all(np.array_equal(ds.attrs[k], _label_attr(v)) for k, v in attrs.items()))


def write_labels(paths: list[Path], labels: list[np.ndarray], key: str, attrs: dict,
                 overwrite: bool = False) -> None:
    """Write ``labels[i]`` (T_i,) into clip ``paths[i]`` as int32 ``/key`` with ``attrs``.

    Every clip is checked first; each is then rewritten atomically (a copy in the same folder
    gets the dataset, is flushed and synced, then replaces the clip), so a failure leaves
    each clip either as it was or complete.
    """
    check_writable(paths, key, overwrite, attrs.get("run"))
    for p, z in zip(paths, labels):
        with h5py.File(p, "r") as f:
            T = f["obs"].shape[0]
        if len(z) != T:
            raise ValueError(f"{len(z)} labels for clip {p}, which has {T} frames.")
    for p, z in zip(paths, labels):
        if _has_labels(p, key, z, attrs):  # written by this same run before it was stopped
            continue
        with atomic_path(p) as tmp:
            shutil.copyfile(p, tmp)
            with h5py.File(tmp, "r+") as f:
                if key in f:
                    del f[key]
                ds = f.create_dataset(key, data=np.asarray(z, np.int32))
                for k, v in attrs.items():
                    ds.attrs[k] = _label_attr(v)


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


@dataclass
class Data:
    """The clips' features, split into fitting and held-out clips."""

    root: Path
    paths: list[Path]
    raw: list[np.ndarray]
    truth: list[np.ndarray] | None
    train_ids: np.ndarray
    val_ids: np.ndarray
    dt: float | None


def load_data(cfg: SegmentConfig) -> Data:
    from ncssm_env.synthetic import clips_or_builtin

    root = clips_or_builtin(cfg.clip_dir or None)
    with ClipStore(root) as store:
        n = len(store)
        raw = read_features(store, cfg.feature, range(n))
        truth = [np.asarray(store.read(i, "syllables")) for i in range(n)] \
            if store.has("syllables") else None
        train_ids, val_ids = split_clips(n, cfg.train_frac, cfg.seed)
        if train_ids.size == 0 or val_ids.size == 0:
            raise ValueError(f"The {n} clips in {root} leave no held-out clip at train_frac "
                             f"{cfg.train_frac}; segmentation needs at least 2 clips.")
        return Data(root, store.paths, raw, truth, train_ids, val_ids, store.control_dt)


def run_one(cfg: SegmentConfig, data: Data, num_states: int, kappa: float, n_pcs: int | None,
            progress: bool = False, features: dict | None = None
            ) -> tuple[ARHMM, dict, list[np.ndarray]]:
    """Fit one setting on the training clips; score it; label every clip. ``features``: a
    cache {n_pcs: (Features, every clip's features)} shared by a sweep's points."""
    t0 = time.perf_counter()
    features = {} if features is None else features
    if n_pcs not in features:
        feats = Features.fit(cfg.feature, [data.raw[i] for i in data.train_ids], n_pcs)
        features[n_pcs] = feats, [feats(x) for x in data.raw]
    feats, xs = features[n_pcs]
    model = fit(feats, [xs[i] for i in data.train_ids], num_states, kappa, cfg.num_lags,
                cfg.num_iters, cfg.seed, cfg.num_restarts, progress)
    fit_s = time.perf_counter() - t0
    labels, ll = model.label(xs)  # every clip in one pass; the held-out ones score the fit
    heldout_ll = float(ll[data.val_ids].sum() / sum(len(xs[i]) for i in data.val_ids))
    row = {"num_states": num_states, "kappa": kappa, "n_pcs": n_pcs, "heldout_ll": heldout_ll,
           **scores(labels, data.truth, data.dt), **restart_scores(model), "fit_s": round(fit_s, 1)}
    if data.truth is not None:
        val = scores([labels[i] for i in data.val_ids], [data.truth[i] for i in data.val_ids],
                     data.dt)
        row.update(ari_held_out=val["ari"], nmi_held_out=val["nmi"])
    return model, row, labels


def restart_scores(model: ARHMM) -> dict:
    """The restarts: which was kept, each one's training log-likelihood per frame (None:
    diverged) and their spread (best - worst)."""
    lls = [r["train_ll"] for r in model.restarts]
    ok = [v for v in lls if v is not None]
    return {"restart": model.hyper.get("restart", 0), "restart_train_ll": lls,
            "restart_ll_spread": float(max(ok) - min(ok)) if ok else None}


def segment(cfg: SegmentConfig, progress: bool = True) -> dict:
    """Fit (or load, with ``cfg.model``), score, plot, save the model and write the labels.
    Returns the summary, also written to ``out_dir/summary.json``."""
    data = load_data(cfg)
    out = Path(cfg.out_dir)
    # One writer per folder: the clips' (labels) and out_dir's (model, summary, plots).
    with (locks.writing(data.root) if cfg.write_labels else contextlib.nullcontext()), \
            locks.writing(out):
        return _segment(cfg, data, out, progress)


def _segment(cfg: SegmentConfig, data: Data, out: Path, progress: bool) -> dict:
    if cfg.write_labels:
        check_writable(data.paths, cfg.out_key, cfg.overwrite, run_id(cfg))  # before any work
    if cfg.model:
        model = ARHMM.load(cfg.model)
        xs = [model.features(x, f"the clips in {data.root}") for x in data.raw]
        labels, ll = model.label(xs)
        ll = float(ll.sum() / sum(len(x) for x in xs))
        row = {**model.hyper, "ll_per_frame": ll, **scores(labels, data.truth, data.dt)}
        model_path = Path(cfg.model)
    else:
        model, row, labels = run_one(cfg, data, cfg.num_states, cfg.kappa, cfg.n_pcs, progress)
        model_path = model.save(out / "arhmm.npz")
    summary = {"clip_dir": str(data.root), "clips": len(data.paths), "feature": cfg.feature,
               "fit_clips": data.train_ids.tolist(), "held_out_clips": data.val_ids.tolist(),
               "model": str(model_path), **row}
    summary["plots"] = plots(out, labels, data, model.hyper["num_states"], cfg.n_ethogram)
    if cfg.write_labels:
        attrs = {"model": str(model_path), "feature": model.features.name,
                 "created_by": "ncssm-data segment", "run": run_id(cfg), **model.hyper}
        write_labels(data.paths, labels, cfg.out_key, attrs, overwrite=cfg.overwrite)
        summary["labels"] = f"/{cfg.out_key} in {len(data.paths)} clips"
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def sweep(cfg: SegmentConfig, progress: bool = True) -> tuple[list[dict], int]:
    """Fit every setting of the grid; rows sorted by held-out log-likelihood (best first) and
    the index of the row that ``cfg.select`` picks. Also writes ``out_dir/sweep.json``."""
    from tqdm.auto import tqdm

    data = load_data(cfg)
    grid = [(k, kappa, n) for n in (cfg.sweep_n_pcs or [cfg.n_pcs])
            for k in cfg.sweep_num_states for kappa in cfg.sweep_kappa]
    rows, features = [], {}
    for k, kappa, n in tqdm(grid, desc="sweep", unit="fit", disable=not progress):
        try:
            rows.append(run_one(cfg, data, k, kappa, n, features=features)[1])
        except FloatingPointError as err:  # a diverged fit is a row, ranked last
            rows.append({"num_states": k, "kappa": kappa, "n_pcs": n, "heldout_ll": None,
                         "error": str(err)})
    rows.sort(key=lambda r: (r["heldout_ll"] is None, -(r["heldout_ll"] or 0.0)))
    best = pick(rows, cfg.select, cfg.target_duration)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.json",
                      json.dumps({"select": cfg.select, "best": best, "rows": rows}, indent=2))
    return rows, best


def pick(rows: list[dict], select: str, target_duration: float) -> int:
    """The best row: highest held-out log-likelihood, or median duration (s) nearest the target."""
    ok = [i for i, r in enumerate(rows) if r.get("heldout_ll") is not None]
    if not ok:
        raise FloatingPointError("Every fit of the sweep diverged; see sweep.json.")
    if select == "loglik":
        return max(ok, key=lambda i: rows[i]["heldout_ll"])
    return min(ok, key=lambda i: abs((rows[i]["median_duration_s"] or np.inf) - target_duration))


def sweep_table(rows: list[dict], best: int) -> str:
    truth = [c for c in ("ari", "nmi") if any(c in r for r in rows)]
    cols = ["num_states", "kappa", "n_pcs", "heldout_ll", "states_in_use",
            "median_duration_frames", "median_duration_s"] + truth + ["fit_s"]
    head = ["K", "kappa", "PCs", "held-out LL/frame", "in use", "median dur (frames)",
            "median dur (s)"] + [c.upper() for c in truth] + ["fit s"]

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    table = [head] + [[fmt(r.get(c)) if "error" not in r or c in ("num_states", "kappa", "n_pcs")
                       else "diverged" if c == "heldout_ll" else "-" for c in cols] for r in rows]
    widths = [max(len(t[j]) for t in table) for j in range(len(cols))]
    lines = ["  " + "  ".join(h.rjust(w) for h, w in zip(table[0], widths))]
    for i, t in enumerate(table[1:]):
        mark = "* " if i == best else "  "
        lines.append(mark + "  ".join(v.rjust(w) for v, w in zip(t, widths)))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def plots(out: Path, labels: list[np.ndarray], data: Data, K: int, n_ethogram: int) -> dict:
    """The ethogram, the duration histogram and (with truth) the confusion matrix, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncssm_policies.plots import save_figure

    paths = {}
    dt = data.dt or 1.0
    unit = "s" if data.dt else "frames"
    ids = list(data.val_ids) + list(data.train_ids)  # held-out clips first
    rows = []
    for i in ids[:n_ethogram]:
        if data.truth is not None:
            rows.append((f"clip {i} true", data.truth[i]))
        rows.append((f"clip {i} AR-HMM", labels[i]))
    T = max(len(z) for _, z in rows)
    img = np.full((len(rows), T), np.nan)
    for r, (_, z) in enumerate(rows):
        img[r, :len(z)] = z
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.2))
    ax.imshow(img, aspect="auto", interpolation="nearest", cmap="tab20",
              extent=(0, T * dt, len(rows) - 0.5, -0.5))
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
    ax.set_xlabel(f"time ({unit})")
    ax.set_title("Ethogram (colours are labels; true and AR-HMM colours are unrelated)")
    fig.tight_layout()
    paths["ethogram"] = str(out / "ethogram.png")
    save_figure(fig, paths["ethogram"])
    plt.close(fig)

    d = durations(labels) * dt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(d, bins=40)
    ax.axvline(np.median(d), color="k", ls="--", label=f"median {np.median(d):.3g} {unit}")
    ax.set_xlabel(f"syllable duration ({unit})")
    ax.set_ylabel("count")
    ax.legend()
    fig.tight_layout()
    paths["durations"] = str(out / "durations.png")
    save_figure(fig, paths["durations"])
    plt.close(fig)

    if data.truth is not None:
        from sklearn.metrics import confusion_matrix

        t, z = np.concatenate(data.truth), np.concatenate(labels)
        n_true = int(t.max()) + 1
        cm = confusion_matrix(t, z, labels=range(max(n_true, K)))[:n_true, :K].astype(float)
        cm /= np.maximum(cm.sum(1, keepdims=True), 1)
        order = np.argsort(np.argmax(cm, 0) + 1e-3 * -cm.max(0))  # states by their best match
        fig, ax = plt.subplots(figsize=(0.4 * K + 2, 0.4 * n_true + 1.5))
        im = ax.imshow(cm[:, order], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(K), [str(k) for k in order], fontsize=7)
        ax.set_yticks(range(n_true), [str(k) for k in range(n_true)])
        ax.set_xlabel("AR-HMM state")
        ax.set_ylabel("true syllable")
        ax.set_title("P(state | true syllable)")
        fig.colorbar(im, ax=ax, fraction=0.05)
        fig.tight_layout()
        paths["confusion"] = str(out / "confusion.png")
        save_figure(fig, paths["confusion"])
        plt.close(fig)
    return paths
