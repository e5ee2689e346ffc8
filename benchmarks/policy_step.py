"""Per-step control latency: the carried one-step form against a context-window predictor.

The original ncssm predictor re-ran the parallel form over the last 50 observations at every
control step and kept the last output. ``step`` carries the recurrent state instead. Both run
in this one process on the same parameters and inputs, two ways:

- **per call**: one jitted call per control step from Python, as the CPU vector env drives a
  policy (median over ``--steps`` calls, each blocked until ready; includes JAX's dispatch);
- **in scan**: ``--scan-steps`` control steps inside one jitted ``lax.scan``, as the MJX
  rollout runs policy and env (no host round-trip; median over ``--repeats`` runs, divided by
  the number of steps). The window form shifts its 50-frame buffer and re-runs the parallel
  form each step.

The goal is >= 20x at batch 1 and at batch 64, for S5 and for Mamba.

A third column bounds what any one-step form could reach here: **matmul floor** is the time of
nothing but one product with each of the model's weight matrices per step (the same scan, B
rows), so ``window / floor`` is the largest ratio a step that only read its weights could
show against this window. At batch 1 on a CPU a step is a chain of matrix-vector products,
bound by reading the weights, while the window reuses each weight over 50 frames.

    python benchmarks/policy_step.py --layers 4 --d-model 256 --state-dim 128
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ncssm_policies.models import SequencePolicy


def median_us(fn, args, n: int) -> float:
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def matmul_floor_us(params, batch: int, steps: int, repeats: int) -> float:
    """Per-step time of one (batch, m) @ (m, n) product with every weight matrix of ``params``
    (every leaf of >= 2 dims seen as (m, n) = (shape[0], prod(shape[1:]))), inside one jitted
    ``lax.scan`` of ``steps`` steps, the input of each step depending on the last."""
    mats = [w.reshape(w.shape[0], -1) for w in jax.tree.leaves(params) if w.ndim >= 2]

    @jax.jit
    def run(mats):
        def body(c, _):
            total = sum(jnp.sum(jnp.full((batch, m.shape[0]), c) @ m) for m in mats)
            return c + 1e-9 * total, None
        return jax.lax.scan(body, jnp.float32(1.0), None, length=steps)[0]

    return median_us(run, (mats,), repeats) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--state-dim", type=int, default=128, help="S5's P")
    p.add_argument("--d-state", type=int, default=16, help="Mamba's N")
    p.add_argument("--in-dim", type=int, default=67)
    p.add_argument("--out-dim", type=int, default=38)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--scan-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    layers = {"s5": {"state_dim": args.state_dim}, "mamba": {"d_state": args.d_state}}
    print(f"machine: {platform.machine()} ({jax.devices()[0].platform}), jax {jax.__version__}; "
          f"{args.layers} layers, d_model {args.d_model}, window {args.window}, "
          f"median of {args.steps} steps")
    print(f"{'layer':6s} {'B':>4s} {'how':>9s} {'window us/step':>15s} {'step us/step':>12s} "
          f"{'ratio':>7s} {'floor us/step':>13s} {'window/floor':>12s}")
    for name, kw in layers.items():
        model = SequencePolicy(out_dim=args.out_dim, layer=name, d_model=args.d_model,
                               n_layers=args.layers, layer_kwargs=kw)
        for B in args.batches:
            key = jax.random.PRNGKey(0)
            window = jax.random.normal(key, (B, args.window, args.in_dim))
            params = jax.jit(model.init)(key, window)  # one compile, not one per operation

            @jax.jit
            def predict_window(params, window):
                return model.apply(params, window)[:, -1]

            @jax.jit
            def step(params, carry, x_t):
                return model.apply(params, carry, x_t, method="step")

            carry = model.initialize_carry(B)
            # Same answer first: stepping through the window ends on the window's last output.
            # (In full float32: a GPU's default matmuls are TF32, good to about 1e-3.)
            with jax.default_matmul_precision("float32"):
                c = carry
                for t in range(args.window):
                    c, y = step(params, c, window[:, t])
                np.testing.assert_allclose(y, predict_window(params, window), rtol=1e-3, atol=1e-4)

            t_win = median_us(predict_window, (params, window), args.steps)
            t_step = median_us(step, (params, carry, window[:, -1]), args.steps)
            print(f"{name:6s} {B:4d} {'per call':>9s} {t_win:15.1f} {t_step:12.1f} "
                  f"{t_win / t_step:6.1f}x")

            xs = jax.random.normal(key, (args.scan_steps, B, args.in_dim))

            @jax.jit
            def scan_window(params, window, xs):
                def body(w, x_t):
                    w = jnp.concatenate([w[:, 1:], x_t[:, None]], axis=1)
                    return w, model.apply(params, w)[:, -1]
                return jax.lax.scan(body, window, xs)[1]

            @jax.jit
            def scan_step(params, carry, xs):
                def body(c, x_t):
                    return model.apply(params, c, x_t, method="step")
                return jax.lax.scan(body, carry, xs)[1]

            n = args.scan_steps
            s_win = median_us(scan_window, (params, window, xs), args.repeats) / n
            s_step = median_us(scan_step, (params, carry, xs), args.repeats) / n
            s_floor = matmul_floor_us(params, B, n, args.repeats)
            print(f"{name:6s} {B:4d} {'in scan':>9s} {s_win:15.1f} {s_step:12.1f} "
                  f"{s_win / s_step:6.1f}x {s_floor:13.1f} {s_win / s_floor:11.1f}x")


if __name__ == "__main__":
    main()
