"""MambaBlock and selective_scan: forms agree, carries chain, init facts, causality, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ncssm_policies.layers.mamba import SCAN_METHODS, MambaBlock, MambaCarry, selective_scan

METHODS = sorted(SCAN_METHODS)
D_MODEL = 16


# Test data come from numpy: every eager jax.random call with a new shape compiles (~1 s here).


def _normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _softplus(v):
    return np.logaddexp(0.0, v).astype(np.float32)


def _inputs(seed, batch, length, d_model=D_MODEL):
    return _normal(seed, batch, length, d_model)


def _init(block, x):
    # jit: eager init compiles op by op. On 2 CPU cores compiling, not running, is what costs here,
    # so the tests share params and put several computations under one jit.
    return jax.jit(lambda x: block.init(jax.random.PRNGKey(0), x))(np.asarray(x)[:, :4])


@pytest.fixture(scope="module")
def params16():
    """Params of MambaBlock(D_MODEL) with its defaults (any scan method, chunk or dropout)."""
    return _init(MambaBlock(D_MODEL), np.zeros((1, 4, D_MODEL), np.float32))


def _perturb(params, seed):
    """Move D and the conv bias off their inits so every term of the block matters."""
    p = jax.tree_util.tree_map(np.asarray, params)
    p["params"]["D"] = p["params"]["D"] + 0.3 * _normal(seed, *p["params"]["D"].shape)
    p["params"]["conv_bias"] = p["params"]["conv_bias"] + 0.1 * _normal(
        seed + 1, *p["params"]["conv_bias"].shape
    )
    return p


def _step_scan(block, params, x, carry=None):
    """The one-step form over the time axis of x (B, T, d_model) as a lax.scan (call in a jit)."""
    if carry is None:
        carry = block.initialize_carry(x.shape[0])

    def body(c, x_t):
        return block.apply(params, c, x_t, method="step")

    carry, ys = lax.scan(body, carry, jnp.swapaxes(x, 0, 1))
    return carry, jnp.swapaxes(ys, 0, 1)


def _naive_scan(x, dt, A, B, C, D, h0):
    """Reference in float64 numpy over the full (B, L, D, N) tensor."""
    x, dt, A, B, C, D, h = (np.asarray(a, np.float64) for a in (x, dt, A, B, C, D, h0))
    dA = np.exp(dt[..., None] * A)  # (B, L, D, N)
    dBx = (dt * x)[..., None] * B[:, :, None, :]
    ys = []
    for t in range(x.shape[1]):
        h = dA[:, t] * h + dBx[:, t]
        ys.append(np.einsum("bdn,bn->bd", h, C[:, t]))
    return np.stack(ys, 1) + D * x, h


# ---- the scan ------------------------------------------------------------------------------


def _scan_args(seed, b, L, d, n):
    """x, dt, A, B, C, D, h0 for selective_scan; dt > 0, A < 0, h0 nonzero."""
    return (
        _normal(seed, b, L, d),
        _softplus(_normal(seed + 1, b, L, d) - 1.0),
        -np.exp(_normal(seed + 2, d, n)),
        _normal(seed + 3, b, L, n),
        _normal(seed + 4, b, L, n),
        _normal(seed + 5, d),
        _normal(seed + 6, b, d, n),
    )


def test_scan_methods_match_naive_reference():
    b, L, d, n = 3, 37, 8, 5
    x, dt, A, B, C, D, h0 = _scan_args(1, b, L, d, n)
    y_ref, h_ref = _naive_scan(x, dt, A, B, C, D, h0)
    combos = [(m, 8) for m in METHODS] + [(METHODS[0], 64)]  # 37 is no multiple of 8; 64 > 37

    @jax.jit  # one compilation for every combination keeps the test fast
    def run(x, dt, A, B, C, D, h0):
        return [selective_scan(x, dt, A, B, C, D, h0, method=m, chunk=c) for m, c in combos]

    outs = run(x, dt, A, B, C, D, h0)
    for (method, chunk), (y, h) in zip(combos, outs, strict=True):
        assert y.shape == (b, L, d) and h.shape == (b, d, n)
        np.testing.assert_allclose(
            y, y_ref, rtol=1e-5, atol=1e-5, err_msg=f"{method} chunk={chunk}"
        )
        np.testing.assert_allclose(
            h, h_ref, rtol=1e-5, atol=1e-5, err_msg=f"{method} chunk={chunk}"
        )
        np.testing.assert_allclose(
            y, outs[0][0], rtol=1e-5, atol=1e-5, err_msg=f"{method} chunk={chunk}"
        )


def test_scan_gradients_match_reference():
    b, L, d, n = 2, 11, 6, 4
    args = _scan_args(13, b, L, d, n)
    w = _normal(14, b, L, d)

    def reference(x, dt, A, B, C, D, h):  # a plain loop, differentiated by JAX
        ys = []
        for t in range(L):
            h = (
                jnp.exp(dt[:, t, :, None] * A) * h
                + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
            )
            ys.append(jnp.einsum("bdn,bn->bd", h, C[:, t]))
        return jnp.stack(ys, 1) + D * x, h

    def loss(scan):
        def f(*args):
            y, h = scan(*args)
            return jnp.sum(w * y) + jnp.sum(h**2)

        return jax.grad(f, argnums=tuple(range(7)))

    @jax.jit
    def run(*args):
        out = [loss(reference)(*args)]
        for m in METHODS:
            out.append(loss(lambda *a, m=m: selective_scan(*a, method=m, chunk=4))(*args))
        return out

    want, *gots = run(*args)
    for m, got in zip(METHODS, gots, strict=True):
        for i, (g, r) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5, err_msg=f"{m} argument {i}")


def test_scan_rejects_unknown_method():
    z = jnp.zeros((1, 2, 3))
    with pytest.raises(
        ValueError, match=r"Unknown scan method 'fast'; expected one of \['chunked', 'sequential'\]"
    ):
        selective_scan(
            z,
            z,
            jnp.zeros((3, 2)),
            jnp.zeros((1, 2, 2)),
            jnp.zeros((1, 2, 2)),
            jnp.zeros(3),
            jnp.zeros((1, 3, 2)),
            method="fast",
        )


# ---- the block: forms agree ----------------------------------------------------------------

# Parallel passes chained through their carry: 200 + 290, and pieces shorter than d_conv - 1 or
# not multiples of d_conv or chunk. The scan's own h0 -> h_last is checked per method above, so
# the long chain runs with the default method only.
CHAINS = {"sequential": ((200,), (2, 73, 202)), "chunked": ((200,),)}
SPLIT = 200  # the step form continues a parallel pass from here


@pytest.fixture(scope="module")
def forms(params16):
    """The forms of one block over the same 490 steps, all under one jit (compiling is the cost).

    "step": step form throughout; "<method>": one parallel pass; "<method> <splits>": chained
    parallel passes; "parallel then step": a parallel pass of SPLIT steps, then the step form.
    """
    assert set(CHAINS) == set(METHODS)
    x = _inputs(2, 2, 490)
    blocks = {m: MambaBlock(D_MODEL, scan=m, chunk=64) for m in METHODS}
    params = _perturb(params16, 3)

    @jax.jit
    def run(params, x):
        block = blocks[METHODS[0]]
        out = {"step": _step_scan(block, params, x)}
        head_carry, head = block.apply(params, x[:, :SPLIT])
        tail_carry, tail = _step_scan(block, params, x[:, SPLIT:], head_carry)
        out["parallel then step"] = tail_carry, jnp.concatenate([head, tail], 1)
        for m, block in blocks.items():
            out[m] = block.apply(params, x)
            for splits in CHAINS[m]:
                carry, ys, start = None, [], 0
                for stop in (*splits, x.shape[1]):
                    carry, y = block.apply(params, x[:, start:stop], carry)
                    ys.append(y)
                    start = stop
                out[f"{m} {splits}"] = carry, jnp.concatenate(ys, 1)
        return out

    return run(params, x)


def _assert_same(got, want):
    (c1, y1), (c2, y2) = got, want
    assert y1.shape == (2, 490, D_MODEL) and bool(np.all(np.isfinite(y1)))
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c1.conv_state, c2.conv_state, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c1.ssm_state, c2.ssm_state, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_step_form_equals_parallel_form_490_steps(forms, method):
    _assert_same(forms["step"], forms[method])


@pytest.mark.parametrize("method, splits", [(m, sp) for m in METHODS for sp in CHAINS[m]], ids=str)
def test_chained_parallel_passes_equal_one_pass(forms, method, splits):
    _assert_same(forms[f"{method} {splits}"], forms[method])


def test_parallel_then_steps_continue_the_same_sequence(forms):
    _assert_same(forms["parallel then step"], forms[METHODS[0]])


def test_scan_methods_agree_in_the_block(forms):
    _assert_same(forms[METHODS[1]], forms[METHODS[0]])


# ---- shapes, gradients, init ---------------------------------------------------------------


def test_shapes_and_carry():
    block = MambaBlock(D_MODEL, d_state=8, expand=3, dt_rank=3, d_conv=3, norm="rms")
    x = jax.ShapeDtypeStruct((2, 50, D_MODEL), jnp.float32)
    params = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
    carry, y = jax.eval_shape(block.apply, params, x)
    assert y.shape == x.shape
    assert isinstance(carry, MambaCarry)
    assert carry.conv_state.shape == (2, 2, 48) and carry.ssm_state.shape == (2, 48, 8)
    carry, y_t = jax.eval_shape(
        lambda p, c, x_t: block.apply(p, c, x_t, method="step"),
        params,
        block.initialize_carry(2),
        np.zeros((2, D_MODEL), np.float32),
    )
    assert y_t.shape == (2, D_MODEL)
    assert carry.conv_state.shape == (2, 2, 48) and carry.ssm_state.shape == (2, 48, 8)
    carry0 = block.apply({}, 5, method="initialize_carry")  # needs no params
    assert carry0.conv_state.shape == (5, 2, 48) and carry0.ssm_state.shape == (5, 48, 8)
    assert not any(bool(np.any(a)) for a in carry0)
    assert block.initialize_carry(5).ssm_state.shape == (5, 48, 8)
    p = params["params"]
    assert set(p["norm"]) == {"scale"}  # RMSNorm
    assert p["in_proj"]["kernel"].shape == (16, 96)
    assert p["x_proj"]["kernel"].shape == (48, 3 + 2 * 8)
    assert p["dt_proj"]["kernel"].shape == (3, 48) and p["dt_proj"]["bias"].shape == (48,)
    assert p["out_proj"]["kernel"].shape == (48, 16)
    assert p["conv_kernel"].shape == (3, 48) and p["conv_bias"].shape == (48,)
    assert (
        "norm"
        not in jax.eval_shape(MambaBlock(D_MODEL, norm="none").init, jax.random.PRNGKey(0), x)[
            "params"
        ]
    )


def test_finite_gradients(params16):
    block = MambaBlock(D_MODEL, chunk=16)
    x = _inputs(8, 2, 50)

    def loss(params, x):
        carry, y = block.apply(params, x)
        return jnp.sum(y**2) + jnp.sum(carry.ssm_state**2), y

    grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    (grads, gx), y = grad(params16, x)
    assert bool(np.all(np.isfinite(y)))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(np.all(np.isfinite(g))), path
        assert bool(np.any(np.asarray(g) != 0)), path
    assert bool(np.all(np.isfinite(gx)))


def test_default_sizes():
    block = MambaBlock(40)
    params = jax.eval_shape(block.init, jax.random.PRNGKey(0), np.zeros((1, 3, 40), np.float32))[
        "params"
    ]
    assert block.d_inner == 80 and block.rank == 3  # ceil(40 / 16)
    assert params["A_log"].shape == (80, 16)
    assert params["conv_kernel"].shape == (4, 80)
    assert params["x_proj"]["kernel"].shape == (80, 3 + 32)
    assert "scale" in params["norm"] and "bias" in params["norm"]  # LayerNorm


def test_init_facts(params16):
    params = params16["params"]
    n = MambaBlock(D_MODEL).d_state
    A = -np.exp(params["A_log"])
    np.testing.assert_allclose(
        A, -np.broadcast_to(np.arange(1, n + 1, dtype=np.float32), (2 * D_MODEL, n)), rtol=1e-6
    )
    np.testing.assert_array_equal(params["D"], np.ones(2 * D_MODEL))
    dt = _softplus(np.asarray(params["dt_proj"]["bias"], np.float64))
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert dt.max() / dt.min() > 5  # spread over the range, not one value


def test_causal(params16):
    x = _inputs(11, 2, 70)
    blocks = [MambaBlock(D_MODEL, scan=m, chunk=16) for m in METHODS]
    params = params16
    t = 37
    x2 = x.copy()
    x2[:, t] += 1.0

    @jax.jit
    def run(params):
        return [(b.apply(params, x)[1], b.apply(params, x2)[1]) for b in blocks]

    for method, (y, y2) in zip(METHODS, jax.device_get(run(params)), strict=True):
        np.testing.assert_array_equal(y2[:, :t], y[:, :t], err_msg=method)
        assert bool(np.all(np.any(y2[:, t] != y[:, t], axis=-1))), method
        assert bool(np.any(y2[:, t + 3] != y[:, t + 3])), method  # through the conv and the state


def test_dropout_only_in_training(params16):
    block = MambaBlock(D_MODEL, dropout=0.5)
    x = _inputs(12, 2, 10)
    params = params16

    @jax.jit
    def run(params, x):
        return (
            block.apply(params, x)[1],
            block.apply(params, x, train=False)[1],
            block.apply(params, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)})[1],
            block.apply(params, block.initialize_carry(2), x[:, 0], method="step")[1],
        )

    y_eval, y_eval2, y_train, y_step = run(params, x)
    np.testing.assert_array_equal(y_eval, y_eval2)
    assert not np.allclose(y_train, y_eval)
    np.testing.assert_allclose(y_step, y_eval[:, 0], rtol=1e-5, atol=1e-6)


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=0), r"MambaBlock.d_model must be a positive integer, got 0\."),
        (dict(d_state=2.5), r"MambaBlock.d_state must be a positive integer, got 2.5\."),
        (dict(d_conv=0), r"MambaBlock.d_conv must be a positive integer"),
        (dict(expand=-1), r"MambaBlock.expand must be a positive integer"),
        (dict(dt_rank=0), r"MambaBlock.dt_rank must be a positive integer"),
        (dict(chunk=0), r"MambaBlock.chunk must be a positive integer"),
        (dict(dt_min=0.0), r"0 < dt_min <= dt_max, got dt_min=0.0"),
        (dict(dt_min=0.2, dt_max=0.1), r"0 < dt_min <= dt_max"),
        (
            dict(norm="batch"),
            r"Unknown MambaBlock.norm 'batch'; expected one of \['layer', 'rms', 'none'\]\.",
        ),
        (
            dict(scan="fast"),
            r"Unknown MambaBlock.scan 'fast'; expected one of \['chunked', 'sequential'\]\.",
        ),
        (dict(dropout=1.0), r"MambaBlock.dropout must be in \[0, 1\), got 1.0\."),
    ],
)
def test_bad_hyper_parameters(kwargs, message):
    kwargs = {"d_model": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        MambaBlock(**kwargs)


def test_bad_shapes():
    block = MambaBlock(8)
    params = jax.eval_shape(block.init, jax.random.PRNGKey(0), np.zeros((1, 2, 8), np.float32))
    carry1, carry2 = block.initialize_carry(1), block.initialize_carry(2)
    with pytest.raises(
        ValueError, match=r"expected x of shape \(B, T, d_model\) with d_model=8, got \(1, 2, 9\)"
    ):
        jax.eval_shape(block.apply, params, np.zeros((1, 2, 9), np.float32))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, d_model\)"):
        jax.eval_shape(
            lambda p, c, x: block.apply(p, c, x, method="step"),
            params,
            carry1,
            np.zeros((1, 2, 8), np.float32),
        )
    with pytest.raises(
        ValueError, match=r"carry.ssm_state must have shape \(1, 16, 16\), got \(2, 16, 16\)"
    ):
        jax.eval_shape(
            block.apply,
            params,
            np.zeros((1, 2, 8), np.float32),
            carry2._replace(conv_state=carry1.conv_state),
        )
