"""The end-of-run figures of ``ncssm-train`` (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np



def save_figure(fig, path, **kwargs) -> Path:
    """``fig.savefig`` (dpi 100 unless given) through an atomic write: a reader or a killed
    run sees the old image or the new one, never a part."""
    from ncssm_data.clips import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, **{"dpi": 100, **kwargs})
    return path

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(metrics: Path, out: Path) -> Path:
    """Train loss (every logged step) and val loss (every epoch) against step, log scale."""
    plt = _pyplot()
    train, val = [], []
    for line in Path(metrics).read_text().splitlines():
        rec = json.loads(line)
        if "train_loss" in rec:
            train.append((rec["step"], rec["train_loss"]))
        if "val_loss" in rec:
            val.append((rec["step"], rec["val_loss"]))
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for points, label, style in ((train, "train", "-"), (val, "val", "o-")):
        if points:
            steps, losses = zip(*sorted(dict(points).items()))
            ax.plot(steps, losses, style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (normalized units)")
    ax.set_title("learning curve")
    ax.legend()
    save_figure(fig, out)
    plt.close(fig)
    return out


def pred_vs_true(model, params, batch, normalizer, mmode: str, out: Path, n_dims: int = 4) -> Path:
    """The first ``n_dims`` target dims of the first val segment: truth and the teacher-forced
    one-step-ahead prediction, in data units when the run was normalized."""
    import jax

    plt = _pyplot()
    x_in, x_tgt = batch
    y = np.asarray(jax.device_get(model.apply({"params": params}, x_in)))[0]
    t = np.asarray(jax.device_get(x_tgt))[0]
    if normalizer is not None:
        y, t = normalizer.denormalize_tgt(y), normalizer.denormalize_tgt(t)
    k = min(n_dims, t.shape[-1])
    fig, axes = plt.subplots(k, 1, figsize=(7, 1.8 * k), sharex=True, constrained_layout=True)
    for d, ax in enumerate(np.atleast_1d(axes)):
        ax.plot(t[:, d], label="true", lw=1.5)
        ax.plot(y[:, d], label="predicted", lw=1.0)
        ax.set_ylabel(f"dim {d}")
    np.atleast_1d(axes)[0].legend(loc="upper right")
    np.atleast_1d(axes)[0].set_title(f"{mmode}: one-step-ahead prediction on a val segment")
    np.atleast_1d(axes)[-1].set_xlabel("frame")
    save_figure(fig, out)
    plt.close(fig)
    return out


def dagger_curve(metrics: Path, out: Path) -> Path:
    """DAgger: the closed-loop return score and survival (val clips) of the policy that
    collected each round and of the final params, against the training frames each had been
    trained on; each round's kept rollout frames as bars."""
    plt = _pyplot()
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines()]
    rounds = sorted({r["dagger_round"]: r for r in rows if "dagger_round" in r}.values(),
                    key=lambda r: r["dagger_round"])
    points = [(r["train_frames"] - r["dagger_frames"], r, f"round {r['dagger_round']}")
              for r in rounds]
    points += [(r["train_frames"], r, "end") for r in rows if r.get("dagger_final")][-1:]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    x = [p[0] for p in points]
    ax.plot(x, [p[1]["closed_loop_score"] for p in points], "o-",
            label="return score (zero 0, expert 1)")
    ax.plot(x, [p[1]["survival"] for p in points], "s--", label="survival")
    for xi, r, text in points:
        ax.annotate(text, (xi, r["closed_loop_score"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("training frames of the policy")
    ax.set_title("closed loop on the val clips")
    ax.legend()
    bx.bar([r["dagger_round"] for r in rounds], [r["dagger_frames"] for r in rounds])
    bx.set_xticks([r["dagger_round"] for r in rounds])
    bx.set_xlabel("round")
    bx.set_ylabel("frames")
    bx.set_title("frames labelled by the expert and kept, per round")
    save_figure(fig, out)
    plt.close(fig)
    return out
