"""MambaBlock's peak temporary memory against a naive full-sequence associative scan.

Both variants share one set of params; the naive one differs only in its scan, which builds the
(B, L, d_inner, d_state) tensors of the whole sequence and runs ``lax.associative_scan`` over
them. The numbers are XLA's own (``compile().memory_analysis().temp_size_in_bytes``) for
``value_and_grad`` of a sum loss (forward+backward) and for the forward alone; nothing big runs,
only a small size is executed to check the variants agree. The goal is a ratio <= 1/4.

    python benchmarks/mamba_memory.py --batch 16 --length 490 --d-model 256 --d-state 16
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp
from jax import lax

from ncssm_policies.layers.mamba import SCAN_METHODS, MambaBlock

MiB = 2.0**20


def naive_selective_scan(x, dt, A, B, C, D, h0):
    """The same signature as ``selective_scan``, over the full (B, L, D, N) tensors at once."""
    a = jnp.exp(dt[..., None] * A)  # (B, L, D, N)
    b = (dt * x)[..., None] * B[:, :, None, :]
    b = b.at[:, 0].add(a[:, 0] * h0)

    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    _, h = lax.associative_scan(combine, (a, b), axis=1)
    y = jnp.einsum("bldn,bln->bld", h, C)
    return y + D * x, h[:, -1]


class NaiveMambaBlock(MambaBlock):
    """MambaBlock with the naive scan; same params, same everything else."""

    def _selective_scan(self, x, dt, A, B, C, D, h0):
        return naive_selective_scan(x, dt, A, B, C, D, h0)


def _fns(block):
    def loss(params, x):
        return jnp.sum(block.apply(params, x)[1])

    def forward(params, x):
        return block.apply(params, x)[1]

    return jax.value_and_grad(loss), forward


def temp_mib(fn, *args) -> float:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes / MiB


def check_agree(args) -> float:
    """Run both variants at a small size; the largest relative difference of loss and grads."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 77, 32))
    naive = NaiveMambaBlock(32, d_state=args.d_state)
    # One init and one naive loss and grads (compiled once) for every scan method: the
    # variants share their params, and the scan method does not enter the init.
    params = jax.jit(naive.init)(jax.random.PRNGKey(0), x[:, :4])
    want = jax.tree_util.tree_leaves(jax.jit(_fns(naive)[0])(params, x))
    worst = 0.0
    for method in sorted(SCAN_METHODS):
        ours = MambaBlock(32, d_state=args.d_state, scan=method, chunk=16)
        got = jax.tree_util.tree_leaves(jax.jit(_fns(ours)[0])(params, x))
        for a, b in zip(got, want, strict=True):
            worst = max(worst, float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12)))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=490)
    p.add_argument("--d-model", type=int, default=256, help="d_inner is expand * d_model")
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--no-check", action="store_true", help="skip the small numerical check")
    args = p.parse_args()

    B, L, d_inner, N = args.batch, args.length, args.expand * args.d_model, args.d_state
    x = jax.ShapeDtypeStruct((B, L, args.d_model), jnp.float32)
    kw = dict(d_model=args.d_model, d_state=N, expand=args.expand, chunk=args.chunk)
    params = jax.eval_shape(MambaBlock(**kw).init, jax.random.PRNGKey(0), x)

    rows = {}
    for name, block in [("naive", NaiveMambaBlock(**kw))] + [
        (f"ours ({m})", MambaBlock(**kw, scan=m)) for m in sorted(SCAN_METHODS)
    ]:
        train, forward = _fns(block)
        rows[name] = (temp_mib(forward, params, x), temp_mib(train, params, x))

    full = B * L * d_inner * N * 4 / MiB
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, jax {jax.__version__}, {jax.devices()[0].platform}")
    sizes = f"B {B}, L {L}, d_inner {d_inner} (d_model {args.d_model} x {args.expand}), N {N}"
    print(f"# {sizes}, chunk {args.chunk}")
    print(f"# one (B, L, d_inner, N) float32 tensor is {full:.1f} MiB")
    print(f"{'variant':<18} {'fwd MiB':>10} {'ratio':>7} {'fwd+bwd MiB':>12} {'ratio':>7}")
    nf, nt = rows["naive"]
    for name, (f, t) in rows.items():
        print(f"{name:<18} {f:>10.1f} {f / nf:>7.3f} {t:>12.1f} {t / nt:>7.3f}")
    if not args.no_check:
        worst = check_agree(args)
        print(f"# small-size check (B 2, L 77, d_model 32): max relative difference {worst:.2e}")


if __name__ == "__main__":
    main()
