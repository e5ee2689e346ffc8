"""Behavioural syllables from clips: a sticky autoregressive HMM (dynamax), fitted by EM.

The core of keypoint-MoSeq (Weinreb et al. 2024), on the clips' own pose features:

1. **Features.** A named source of the clips (``qpos_local`` by default: a slice of ``/obs``,
   or any dataset such as ``latent_mean``), optionally PCA-reduced to ``n_pcs`` dims, then
   z-scored. PCA and z-score stats come from the training clips only.
2. **Model.** :class:`dynamax.hidden_markov_model.LinearAutoregressiveHMM` with ``num_states``
   K, ``num_lags`` and stickiness ``kappa`` (added to the Dirichlet prior's diagonal, so EM's
   MAP transition matrix favours staying). Initialized by k-means.
3. **Fitting.** EM over the training clips as one batch of equal-length sequences: each clip
   is cut into pieces of the shortest training clip's length (the remainder is not used for
   fitting). Clips are never concatenated, so nothing bleeds across clip boundaries.
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

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ncssm_data.clips import SCHEMA_KEYS, ClipStore, atomic_path
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
    Model: ``num_states`` (K >= 2), ``kappa`` (>= 0), ``num_lags``, ``num_iters`` of EM.
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
    num_states: int = 8
    kappa: float = 1e7
    num_lags: int = 1
    num_iters: int = 50
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
        if self.num_iters < 1:
            raise ValueError(f"Config key 'num_iters' must be >= 1, got {self.num_iters!r}.")
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
    (K, P, P)). ``hyper``: num_states, kappa, num_lags, n_pcs, num_iters, seed.
    """

    features: Features
    params: object
    hyper: dict
    em_log_probs: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def hmm(self):
        return make_hmm(self.hyper["num_states"], self.features.dim, self.hyper["num_lags"],
                        self.hyper["kappa"])

    def inputs(self, x):
        """Lagged emissions (T, P * num_lags) of one sequence x (T, P); zeros before frame 0."""
        return self.hmm.compute_inputs(x)

    def decode(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """The most likely state sequence (T_i,) int32 of each feature sequence (T_i, P)."""
        return [np.asarray(s, np.int32) for s in _by_length(self._viterbi, xs)]

    def log_likelihood(self, xs: list[np.ndarray]) -> np.ndarray:
        """(n,) log p(x_i) of each feature sequence, marginal over states."""
        return np.array([float(v) for v in _by_length(self._marginal, xs)])

    def _viterbi(self, X):
        """(B, T) states of a (B, T, P) stack, in one jitted vmap."""
        import jax

        hmm, params = self.hmm, self.params
        return jax.jit(jax.vmap(
            lambda x: hmm.most_likely_states(params, x, hmm.compute_inputs(x))))(X)

    def _marginal(self, X):
        """(B,) log-likelihoods of a (B, T, P) stack, in one jitted vmap."""
        import jax

        hmm, params = self.hmm, self.params
        return jax.jit(jax.vmap(
            lambda x: hmm.marginal_log_prob(params, x, hmm.compute_inputs(x))))(X)

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
                "hyper": self.hyper}
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
            hmm = make_hmm(h["num_states"], features.dim, h["num_lags"], h["kappa"])
            j = {k: jax.numpy.asarray(v) for k, v in a.items()}
            params, _ = hmm.initialize(
                jax.random.PRNGKey(0), initial_probs=j["initial_probs"],
                transition_matrix=j["transition_matrix"], emission_weights=j["weights"],
                emission_biases=j["biases"], emission_covariances=j["covs"])
            return cls(features, params, h, a["em_log_probs"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not an AR-HMM model saved by ncssm-data segment "
                             f"({type(err).__name__}).") from None


PRIOR_FRAMES = 0.01  # pseudo-frames of the emission prior (see make_hmm)


def make_hmm(num_states: int, dim: int, num_lags: int, kappa: float):
    """dynamax's ``LinearAutoregressiveHMM`` with stickiness ``kappa`` and a vanishingly weak
    prior on the emissions, so that EM's M-step stays finite.

    dynamax's own M-step solves each state's regression with no prior: a state that EM
    empties (common with large ``kappa`` or K) makes the solve singular, and its NaN then
    spreads to every state. Here each state's regression gets :data:`PRIOR_FRAMES`
    pseudo-frames of evidence for zero weights and bias and for an identity covariance (in
    z-scored units). A used state holds thousands of frames, so the prior barely moves it
    (at 10 pseudo-frames it inflated the small AR residual variances enough to merge states);
    an emptied state falls back to zero weights and an identity covariance.
    """
    import jax.numpy as jnp
    from jax import vmap
    from dynamax.hidden_markov_model import LinearAutoregressiveHMM
    from dynamax.hidden_markov_model.models.arhmm import LinearAutoregressiveHMMEmissions
    from dynamax.utils.utils import pytree_sum

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

    hmm = LinearAutoregressiveHMM(int(num_states), int(dim), num_lags=int(num_lags),
                                  transition_matrix_stickiness=float(kappa))
    hmm.emission_component = Emissions(int(num_states), int(dim), num_lags=int(num_lags))
    return hmm


def _by_length(fn, xs: list[np.ndarray]) -> list:
    """``fn`` over (B, T, P) stacks of the equal-length sequences in ``xs``, in input order."""
    out: list = [None] * len(xs)
    lengths = np.array([len(x) for x in xs])
    for T in np.unique(lengths):
        idx = np.flatnonzero(lengths == T)
        res = np.asarray(fn(np.stack([xs[i] for i in idx])))
        for k, i in enumerate(idx):
            out[i] = res[k]
    return out


def pieces(xs: list[np.ndarray]) -> np.ndarray:
    """Cut each (T_i, P) sequence into pieces of the shortest one's length: (B, T_min, P)."""
    L = min(len(x) for x in xs)
    return np.stack([x[k * L:(k + 1) * L] for x in xs for k in range(len(x) // L)])


def fit(features: Features, xs: list[np.ndarray], num_states: int, kappa: float, num_lags: int,
        num_iters: int, seed: int, progress: bool = False) -> ARHMM:
    """Fit by EM on the feature sequences ``xs`` (each (T_i, P)), batched as :func:`pieces`."""
    import jax

    check_hyper(num_states, kappa, num_lags, None if features.components is None
                else len(features.components))
    X = jax.numpy.asarray(pieces(xs))
    hmm = make_hmm(num_states, features.dim, num_lags, kappa)
    k_init, _ = jax.random.split(jax.random.PRNGKey(seed))
    params, props = hmm.initialize(k_init, method="kmeans", emissions=X.reshape(-1, features.dim))
    inputs = jax.vmap(hmm.compute_inputs)(X)
    params, lps = hmm.fit_em(params, props, X, inputs, num_iters=num_iters, verbose=progress,
                             print_every=max(1, num_iters // 20))
    lps = np.asarray(lps)
    if not np.isfinite(lps).all() or not all(
            np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(params)):
        bad = int(np.argmin(np.isfinite(lps))) if not np.isfinite(lps).all() else num_iters
        raise FloatingPointError(
            f"EM diverged (non-finite log-probability by iteration {bad + 1}) for K "
            f"{num_states}, kappa {kappa}, {num_lags} lag(s) on {features.dim} dims.")
    hyper = {"num_states": int(num_states), "kappa": float(kappa), "num_lags": int(num_lags),
             "n_pcs": None if features.components is None else int(len(features.components)),
             "num_iters": int(num_iters), "seed": int(seed)}
    return ARHMM(features, params, hyper, lps)


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


def check_writable(paths: list[Path], key: str, overwrite: bool) -> None:
    """Refuse (before anything is written) a reserved key, or an existing one without
    ``overwrite``."""
    if key in RESERVED:
        raise ValueError(f"Dataset /{key} belongs to the clip schema and is never overwritten; "
                         f"choose another out_key.")
    if overwrite:
        return
    for p in paths:
        with h5py.File(p, "r") as f:
            if key in f:
                raise ValueError(f"Clip {p} already has /{key}; pass --overwrite (overwrite: true) "
                                 f"to replace it.")


def write_labels(paths: list[Path], labels: list[np.ndarray], key: str, attrs: dict,
                 overwrite: bool = False) -> None:
    """Write ``labels[i]`` (T_i,) into clip ``paths[i]`` as int32 ``/key`` with ``attrs``.

    Every clip is checked first; each is then rewritten atomically (a copy in the same folder
    gets the dataset, is flushed and synced, then replaces the clip), so a failure leaves
    each clip either as it was or complete.
    """
    check_writable(paths, key, overwrite)
    for p, z in zip(paths, labels):
        with h5py.File(p, "r") as f:
            T = f["obs"].shape[0]
        if len(z) != T:
            raise ValueError(f"{len(z)} labels for clip {p}, which has {T} frames.")
    for p, z in zip(paths, labels):
        with atomic_path(p) as tmp:
            shutil.copyfile(p, tmp)
            with h5py.File(tmp, "r+") as f:
                if key in f:
                    del f[key]
                ds = f.create_dataset(key, data=np.asarray(z, np.int32))
                for k, v in attrs.items():
                    ds.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) or v is None else v


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
            progress: bool = False) -> tuple[ARHMM, dict, list[np.ndarray]]:
    """Fit one setting on the training clips; score it; label every clip."""
    t0 = time.perf_counter()
    feats = Features.fit(cfg.feature, [data.raw[i] for i in data.train_ids], n_pcs)
    xs = [feats(x) for x in data.raw]
    model = fit(feats, [xs[i] for i in data.train_ids], num_states, kappa, cfg.num_lags,
                cfg.num_iters, cfg.seed, progress)
    fit_s = time.perf_counter() - t0
    labels = model.decode(xs)
    row = {"num_states": num_states, "kappa": kappa, "n_pcs": n_pcs, **_held_out(model, xs, data),
           **scores(labels, data.truth, data.dt), "fit_s": round(fit_s, 1)}
    if data.truth is not None:
        val = scores([labels[i] for i in data.val_ids], [data.truth[i] for i in data.val_ids],
                     data.dt)
        row.update(ari_held_out=val["ari"], nmi_held_out=val["nmi"])
    return model, row, labels


def _held_out(model: ARHMM, xs, data: Data) -> dict:
    val = [xs[i] for i in data.val_ids]
    ll = model.log_likelihood(val)
    return {"heldout_ll": float(ll.sum() / sum(len(x) for x in val))}


def segment(cfg: SegmentConfig, progress: bool = True) -> dict:
    """Fit (or load, with ``cfg.model``), score, plot, save the model and write the labels.
    Returns the summary, also written to ``out_dir/summary.json``."""
    data = load_data(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.write_labels:
        check_writable(data.paths, cfg.out_key, cfg.overwrite)  # before any work
    if cfg.model:
        model = ARHMM.load(cfg.model)
        xs = [model.features(x, f"the clips in {data.root}") for x in data.raw]
        labels = model.decode(xs)
        ll = float(model.log_likelihood(xs).sum() / sum(len(x) for x in xs))
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
                 "created_by": "ncssm-data segment", **model.hyper}
        write_labels(data.paths, labels, cfg.out_key, attrs, overwrite=cfg.overwrite)
        summary["labels"] = f"/{cfg.out_key} in {len(data.paths)} clips"
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def sweep(cfg: SegmentConfig, progress: bool = True) -> tuple[list[dict], int]:
    """Fit every setting of the grid; rows sorted by held-out log-likelihood (best first) and
    the index of the row that ``cfg.select`` picks. Also writes ``out_dir/sweep.json``."""
    from tqdm.auto import tqdm

    data = load_data(cfg)
    grid = [(k, kappa, n) for n in (cfg.sweep_n_pcs or [cfg.n_pcs])
            for k in cfg.sweep_num_states for kappa in cfg.sweep_kappa]
    rows = []
    for k, kappa, n in tqdm(grid, desc="sweep", unit="fit", disable=not progress):
        try:
            rows.append(run_one(cfg, data, k, kappa, n)[1])
        except FloatingPointError as err:  # a diverged fit is a row, ranked last
            rows.append({"num_states": k, "kappa": kappa, "n_pcs": n, "heldout_ll": None,
                         "error": str(err)})
    rows.sort(key=lambda r: (r["heldout_ll"] is None, -(r["heldout_ll"] or 0.0)))
    best = pick(rows, cfg.select, cfg.target_duration)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"select": cfg.select, "best": best, "rows": rows},
                                               indent=2))
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
    fig.savefig(paths["ethogram"], dpi=100)
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
    fig.savefig(paths["durations"], dpi=100)
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
        fig.savefig(paths["confusion"], dpi=100)
        plt.close(fig)
    return paths
