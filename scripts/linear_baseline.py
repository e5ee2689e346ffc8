"""A linear baseline for a mode: ridge regression from the last K input frames to the target.

Same clips, same train/val split (``split_store`` with the seed and train_frac of the config),
same one-step-ahead targets as ``ncssm-train``; it prints the val R^2 (mean over target dims,
and variance-weighted), so a trained model's R^2 can be read against it.

    python scripts/linear_baseline.py --mode state_intention --lags 1 3 10
    python scripts/linear_baseline.py --mode state_action --policy runs/s5_sa-*  # and a model

``--policy RUN ...`` scores trained runs (their best checkpoints) on exactly the frames each
ridge fit is scored on: every val clip is run through the model whole, from frame 0, and
the targets of frames K..T-1 are scored. (``ncssm-train``'s own val R^2 scores random
``seg_len`` segments, each from a cold start, so a recurrent model is scored on the first
frames of every segment without their history, which the ridge fit always has.)
"""

from __future__ import annotations

import argparse

import numpy as np

from ncssm_data import ClipStore, get_mode
from ncssm_data.dataset import split_store
from ncssm_data.modes import read_source


def frames(store: ClipStore, i: int, mode, lags: int, n_syllables: int):
    """(X (N, lags * D_in), Y (N, D_tgt)): inputs of frames t-lags+1..t, the target at t+1."""
    parts = []
    for source in mode.x_in:
        x = read_source(store, i, source, 0, None).astype(np.float64)
        if source == "syllables":
            x = np.eye(n_syllables)[x.astype(int)]
        parts.append(x)
    x = np.concatenate(parts, axis=1)
    y = read_source(store, i, mode.x_tgt, 0, None).astype(np.float64)
    T = len(x)
    X = np.concatenate([x[lags - 1 - k: T - 1 - k] for k in range(lags)], axis=1)
    return X, y[lags:]


def policy_predictions(run: str, store: ClipStore, mode, ids) -> tuple[str, list]:
    """A trained run's one-step predictions of the target frames 1..T-1 of each clip ``ids``
    (data units), the whole clip in one pass from a fresh carry."""
    from ncssm_policies.checkpoint import load_policy

    pol = load_policy(run)
    if pol.config.mmode != mode.name:
        raise SystemExit(f"--policy {run} was trained on mode {pol.config.mmode!r}, not "
                         f"{mode.name!r}.")
    out = []
    for i in ids:
        parts = []
        for k, source in enumerate(mode.x_in):
            x = read_source(store, int(i), source, 0, None,
                            syllable_key=pol.config.syllable_key).astype(np.float32)
            if source == "syllables":
                n = pol.dims["x_in"][k]
                x = np.eye(n, dtype=np.float32)[np.clip(x.astype(int), 0, n - 1)]
            parts.append(x[None, :-1])
        x = tuple(parts) if len(parts) > 1 else parts[0]
        if pol.normalizer is not None:
            x = pol.normalizer.normalize(x)
        y = np.asarray(pol.model.apply({"params": pol.params}, x))[0]
        out.append(pol.normalizer.denormalize_tgt(y) if pol.normalizer is not None else y)
    return str(pol.path), out


def r2(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    sse, sst = ((pred - y) ** 2).sum(0), ((y - y.mean(0)) ** 2).sum(0)
    ok = sst > 1e-12
    return float(np.mean(1 - sse[ok] / sst[ok])), float(1 - sse[ok].sum() / sst[ok].sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root-dir", help="clip folder; default: the built-in rodent clips")
    p.add_argument("--mode", default="state_action")
    p.add_argument("--lags", type=int, nargs="+", default=[1, 3, 10])
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--train-frac", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", nargs="*", default=[], metavar="RUN",
                   help="trained runs to score on the same frames as each ridge fit")
    args = p.parse_args()

    if args.root_dir is None:
        from ncssm_env.synthetic import builtin_clips

        args.root_dir = builtin_clips("rodent")
    store, mode = ClipStore(args.root_dir), get_mode(args.mode)
    n_syl = 1 + max(int(store.read(i, "syllables").max()) for i in range(len(store))) \
        if "syllables" in mode.x_in else 0
    train, val = split_store(store, args.train_frac, args.seed)
    print(f"{args.mode}: {mode.x_in} -> {mode.x_tgt}, {len(train)} train / {len(val)} val clips "
          f"of {args.root_dir}")
    for lags in args.lags:
        X, Y = (np.concatenate(a) for a in zip(*(frames(store, i, mode, lags, n_syl) for i in train)))
        mu, sd = X.mean(0), X.std(0) + 1e-6
        A = np.c_[(X - mu) / sd, np.ones(len(X))]
        W = np.linalg.solve(A.T @ A + args.ridge * np.eye(A.shape[1]), A.T @ Y)
        Xv, Yv = (np.concatenate(a) for a in zip(*(frames(store, i, mode, lags, n_syl) for i in val)))
        mean, weighted = r2(np.c_[(Xv - mu) / sd, np.ones(len(Xv))] @ W, Yv)
        print(f"  ridge on the last {lags:2d} frames: val R2 {mean:.4f} (mean over dims), "
              f"{weighted:.4f} (variance-weighted)")
    for run in args.policy:
        path, preds = policy_predictions(run, store, mode, val)
        targets = [read_source(store, int(i), mode.x_tgt, 0, None)[1:] for i in val]
        scores = []
        for lags in args.lags:  # the frames of that ridge fit: targets K..T-1
            pred = np.concatenate([p[lags - 1:] for p in preds])
            scores.append(r2(pred, np.concatenate([t[lags - 1:] for t in targets])))
        shown = " / ".join(f"{m:.4f}" for m, _ in scores)
        print(f"  {path}: val R2 {shown} (mean over dims) on the frames of ridge K = "
              f"{' / '.join(str(k) for k in args.lags)}")


if __name__ == "__main__":
    main()
