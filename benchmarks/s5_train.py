"""S5 train-step throughput: our real-pair S5Block against a plain complex S5 reference.

Both sides are the same model (Dense encoder, ``--layers`` pre-norm S5 blocks with LayerNorm and
the half-GLU, Dense decoder) with the same parameters, so they compute the same loss (checked at
step 0 and printed). They differ only in the SSM's arithmetic:

* ours: ``ncssm_policies.layers.s5.S5Block``: complex numbers as float32 pairs, one real matmul
  in and one out, a linear recurrence with its own VJP; timed once per ``--scans`` method
  (``associative`` = ``jax.lax.associative_scan``, ``sequential`` = ``jax.lax.scan``; the layer's
  default ``auto`` picks ``sequential`` on the CPU);
* reference: the paper's description written directly in complex64: ``Lambda``, ``B~``, ``C~``
  complex, complex einsums for ``B_bar u`` and ``C~ h``, ``jax.lax.associative_scan`` on
  complex elements with ``Lambda_bar`` broadcast over (B, T), autodiff through everything.

A train step is a jitted ``value_and_grad`` of the MSE plus an optax Adam update. After
``--warmup`` steps each, the sides take turns for ``--repeats`` rounds (so a busy machine slows
both alike), and the table gives each side's median.

    PYTHONPATH=. python benchmarks/s5_train.py --batch 16 --time 490 --d-model 128 \\
        --state-dim 128 --layers 4 --repeats 20
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ncssm_policies.layers.s5 import S5Block


class RefS5SSM(nn.Module):
    """Plain complex S5 (ZOH, conj_sym), parameter names and shapes as ``S5SSM``'s."""

    d_model: int
    state_dim: int

    @nn.compact
    def __call__(self, u):  # u (B, T, H) -> (B, T, H)
        H, P = self.d_model, self.state_dim // 2
        z = nn.initializers.zeros
        lam = jax.lax.complex(self.param("Lambda_re", z, (P,)), self.param("Lambda_im", z, (P,)))
        b = self.param("B", z, (P, H, 2))
        c = self.param("C", z, (H, P, 2))
        d = self.param("D", z, (H,))
        delta = jnp.exp(self.param("log_step", z, (P,)))
        b_tilde = jax.lax.complex(b[..., 0], b[..., 1])  # (P, H)
        c_tilde = jax.lax.complex(c[..., 0], c[..., 1])  # (H, P)
        lam_bar = jnp.exp(lam * delta)
        b_bar = ((lam_bar - 1.0) / lam)[:, None] * b_tilde
        bu = jnp.einsum("ph,bth->btp", b_bar, u.astype(jnp.complex64))
        elems = (jnp.broadcast_to(lam_bar, bu.shape), bu)
        _, h = jax.lax.associative_scan(lambda x, y: (y[0] * x[0], y[0] * x[1] + y[1]), elems,
                                        axis=1)
        return 2.0 * jnp.einsum("hp,btp->bth", c_tilde, h).real + d * u


class RefS5Block(nn.Module):
    """The reference block: ``x + half_glu1(GELU(RefS5SSM(LayerNorm(x))))``, ours' names."""

    d_model: int
    state_dim: int

    @nn.compact
    def __call__(self, x):
        s = RefS5SSM(self.d_model, self.state_dim, name="ssm")(nn.LayerNorm(name="layer_norm")(x))
        g = nn.gelu(s)
        return x + g * jax.nn.sigmoid(nn.Dense(self.d_model, name="glu_gate")(g))


class Net(nn.Module):
    """Dense(H) -> ``layers`` blocks -> Dense(out); ``reference`` picks the block."""

    d_model: int
    state_dim: int
    layers: int
    out_dim: int
    reference: bool = False
    scan: str = "associative"

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.d_model, name="encoder")(x)
        for i in range(self.layers):
            if self.reference:
                x = RefS5Block(self.d_model, self.state_dim, name=f"block_{i}")(x)
            else:
                _, x = S5Block(self.d_model, self.state_dim, scan=self.scan,
                               name=f"block_{i}")(x)
        return nn.Dense(self.out_dim, name="decoder")(x)


def make_step(net: Net, opt: optax.GradientTransformation):
    """The jitted train step ``(params, opt_state, x, y) -> (params, opt_state, loss)``; the
    loss is the one at the params it was given (before the update)."""
    def loss_fn(params, x, y):
        return jnp.mean((net.apply({"params": params}, x) - y) ** 2)

    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--time", type=int, default=490)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--state-dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--in-dim", type=int, default=64)
    p.add_argument("--out-dim", type=int, default=38)
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per side")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per side after compiling")
    p.add_argument("--scans", default="associative,sequential",
                   help="comma-separated scan methods of ours to time")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    kx, ky, kp = jax.random.split(jax.random.key(args.seed), 3)
    x = jax.random.normal(kx, (args.batch, args.time, args.in_dim))
    y = jax.random.normal(ky, (args.batch, args.time, args.out_dim))
    dims = dict(d_model=args.d_model, state_dim=args.state_dim, layers=args.layers,
                out_dim=args.out_dim)
    params = jax.jit(Net(**dims).init)(kp, x[:, :2])["params"]  # one compile, not one per op
    opt = optax.adam(1e-3)

    sides: dict[str, Any] = {}
    configs = [(f"ours ({s} scan)", False, s) for s in args.scans.split(",")]
    configs.append(("reference (complex)", True, "associative"))
    names = [name for name, _, _ in configs]
    for name, reference, scan in configs:
        net = Net(**dims, reference=reference, scan=scan)
        step = make_step(net, opt)
        own = jax.tree.map(jnp.copy, params)  # each side donates its own buffers
        t0 = time.perf_counter()
        step_c = step.lower(own, opt.init(own), x, y).compile()
        compile_s = time.perf_counter() - t0
        first = jax.tree.map(jnp.copy, params)  # the step-0 loss, by the compiled step itself
        loss0 = float(step_c(first, opt.init(first), x, y)[2])
        sides[name] = dict(loss0=loss0, step=step_c, params=own, opt_state=opt.init(own),
                           compile_s=compile_s, times=[])

    ref_loss = sides[names[-1]]["loss0"]
    print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
          f"{jax.default_backend()} device(s), jax {jax.__version__}")
    print(f"B {args.batch}, T {args.time}, H {args.d_model}, P {args.state_dim}, "
          f"{args.layers} layers, {args.repeats} timed rounds after {args.warmup} warm-up steps")
    for name in names:
        d = abs(sides[name]["loss0"] - ref_loss)
        print(f"  step-0 loss {name:22s} {sides[name]['loss0']:.6f}  |diff to reference| {d:.2e}")
        if d > 1e-4 * max(1.0, abs(ref_loss)):
            raise SystemExit(f"{name} and the reference disagree at step 0 ({d:.2e} > 1e-4).")

    def run(side, timed: bool):
        t0 = time.perf_counter()
        side["params"], side["opt_state"], v = side["step"](side["params"], side["opt_state"], x, y)
        v.block_until_ready()
        if timed:
            side["times"].append(time.perf_counter() - t0)

    for side in sides.values():
        for _ in range(args.warmup):
            run(side, timed=False)
    for _ in range(args.repeats):
        for side in sides.values():
            run(side, timed=True)

    ref_ms = np.median(sides[names[-1]]["times"]) * 1e3
    print(f"{'side':24s} {'compile s':>10s} {'median ms/step':>15s} {'steps/s':>9s} "
          f"{'speed-up':>9s}")
    for name in names:
        ms = np.median(sides[name]["times"]) * 1e3
        print(f"{name:24s} {sides[name]['compile_s']:10.1f} {ms:15.1f} {1e3 / ms:9.2f} "
              f"{ref_ms / ms:8.2f}x")


if __name__ == "__main__":
    main()
