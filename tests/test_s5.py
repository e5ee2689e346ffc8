"""S5: init structure, one-step form == parallel form, chunking, the scan's VJP, options, errors.

Most tests share the state width (2 Pk = 16) and T = 490, so the parallel form, called eagerly,
reuses one compiled scan per sequence length across configurations.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncssm_policies.layers.s5 import (
    S5SSM,
    S5Block,
    hippo_legs,
    hippo_n_eig,
    hippo_normal,
    linear_scan,
    resolve_scan,
    s5_init_arrays,
)

B, T, H = 2, 490, 8
SPLIT = 245  # 490 = 245 + 245: one compiled scan serves both chunks


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (B, T, H))


def _init(module, x):
    return module.init(jax.random.key(0), x[:, :2])


def run_steps(module, variables, x, **kw):
    """The one-step form over all of x (B, T, H), jitted as one lax.scan."""

    @jax.jit
    def go(variables, x):
        def f(carry, x_t):
            return module.apply(variables, carry, x_t, method="step", **kw)

        carry, ys = jax.lax.scan(f, module.initialize_carry(x.shape[0]), jnp.swapaxes(x, 0, 1))
        return carry, jnp.swapaxes(ys, 0, 1)

    return go(variables, x)


# 2 Pk = 16 in every config, so each sequence length compiles its scan once.
CONFIGS = {
    "default-associative": dict(state_dim=16, scan="associative"),
    "default-sequential": dict(state_dim=16, scan="sequential"),
    "bilinear+full_glu+lecun": dict(state_dim=16, discretization="bilinear", glu="full_glu",
                                    C_init="lecun_normal", scan="associative"),
    "no-conj_sym+half_glu2+complex": dict(state_dim=8, conj_sym=False, glu="half_glu2",
                                          C_init="complex_normal", scan="associative"),
    "blocks2+gelu+clip+no-norm": dict(state_dim=16, blocks=2, glu="gelu", clip_eigs=True,
                                      norm="none", step_rescale=2.0, scan="associative"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_form_equals_parallel_form(name, x):
    m = S5Block(H, **CONFIGS[name])
    v = _init(m, x)
    carry_p, y_p = m.apply(v, x)
    carry_s, y_s = run_steps(m, v, x)
    assert y_p.shape == (B, T, H) and carry_p.shape == (B, 16)
    np.testing.assert_allclose(y_s, y_p, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(carry_s, carry_p, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scan", ["associative", "sequential"])
def test_chunked_parallel_pass_equals_one_pass(scan, x):
    m = S5Block(H, state_dim=16, scan=scan)
    v = _init(m, x)
    carry, y = m.apply(v, x)
    c1, y1 = m.apply(v, x[:, :SPLIT])
    c2, y2 = m.apply(v, x[:, SPLIT:], c1)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], axis=1), y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c2, carry, rtol=1e-4, atol=1e-5)


def test_parallel_form_from_a_carry_equals_steps_from_it(x):
    m = S5Block(H, state_dim=16, scan="associative")
    v = _init(m, x)
    c0 = jax.random.normal(jax.random.key(3), (B, 16))
    _, y_p = m.apply(v, x[:, :SPLIT], c0)
    _, y_s = run_steps(m, v, x[:, :SPLIT])  # from zeros: must differ
    assert not np.allclose(y_p, y_s, atol=1e-3)

    def go(carry, x):
        def f(c, x_t):
            return m.apply(v, c, x_t, method="step")
        return jax.lax.scan(f, carry, jnp.swapaxes(x, 0, 1))

    _, ys = jax.jit(go)(c0, x[:, :SPLIT])
    np.testing.assert_allclose(jnp.swapaxes(ys, 0, 1), y_p, rtol=1e-4, atol=1e-5)


def test_shapes_finite_outputs_and_gradients(x):
    m = S5Block(H, state_dim=16)  # scan "auto"; the associative VJP is checked on its own below
    v = _init(m, x)
    carry, y = m.apply(v, x)
    assert carry.shape == (B, 16) and carry.dtype == jnp.float32
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))

    def loss(v):
        return jnp.mean(m.apply(v, x)[1] ** 2)

    grads = jax.jit(jax.grad(loss))(v)
    leaves = jax.tree_util.tree_leaves_with_path(grads["params"])
    names = {jax.tree_util.keystr(p) for p, _ in leaves}
    for want in ("Lambda_re", "Lambda_im", "B", "C", "D", "log_step"):
        assert any(want in n for n in names), want
    for path, g in leaves:
        assert bool(jnp.all(jnp.isfinite(g))), jax.tree_util.keystr(path)
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)


# ---------------------------------------------------------------------------------- the scan


def _naive_scan(a, b, h0, reverse):
    """Complex reference recurrence over axis 1, autodiffed by JAX."""
    p = a.shape[0] // 2
    ac = a[:p] + 1j * a[p:]
    bc = b[..., :p] + 1j * b[..., p:]
    h = h0[..., :p] + 1j * h0[..., p:]
    out = [None] * b.shape[1]
    order = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    for t in order:
        h = ac * h + bc[:, t]
        out[t] = h
    hs = jnp.stack(out, axis=1)
    return jnp.concatenate([hs.real, hs.imag], axis=-1)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", ["associative", "sequential"])
def test_linear_scan_values_and_vjp_match_autodiff(method, reverse):
    k = jax.random.split(jax.random.key(7), 4)
    P, n = 3, 9
    a = jnp.concatenate([0.9 * jnp.cos(jnp.arange(P) + 0.3), 0.9 * jnp.sin(jnp.arange(P) + 0.3)])
    b = jax.random.normal(k[0], (2, n, 2 * P))
    h0 = jax.random.normal(k[1], (2, 2 * P))
    w = jax.random.normal(k[2], (2, n, 2 * P))

    def ours(a, b, h0):
        return jnp.sum(jnp.sin(linear_scan(a, b, h0, method=method, reverse=reverse)) * w)

    def naive(a, b, h0):
        return jnp.sum(jnp.sin(_naive_scan(a, b, h0, reverse)) * w)

    np.testing.assert_allclose(linear_scan(a, b, h0, method=method, reverse=reverse),
                               jax.jit(_naive_scan, static_argnums=3)(a, b, h0, reverse),
                               rtol=1e-5, atol=1e-5)
    for g_ours, g_ref in zip(jax.jit(jax.grad(ours, (0, 1, 2)))(a, b, h0),
                             jax.jit(jax.grad(naive, (0, 1, 2)))(a, b, h0), strict=True):
        np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-5)


def test_auto_scan_is_sequential_on_cpu():
    expected = "sequential" if jax.default_backend() == "cpu" else "associative"
    assert resolve_scan("auto") == expected


# ---------------------------------------------------------------------------------- the init


@pytest.mark.parametrize("n", [4, 8, 16])
def test_hippo_n_is_the_normal_part_of_hippo_legs(n):
    a, s = hippo_legs(n), hippo_normal(n)
    assert a[1, 0] == pytest.approx(-np.sqrt(3.0)) and a[2, 2] == -3.0 and a[0, 1] == 0.0
    p = np.sqrt(np.arange(n) + 0.5)
    np.testing.assert_allclose(s - np.outer(p, p), a, atol=1e-12)
    # -I/2 plus skew-symmetric: normal, eigenvalues with real part exactly -1/2.
    np.testing.assert_allclose(s + s.T, -np.eye(n), atol=1e-12)
    w, v = hippo_n_eig(n)
    np.testing.assert_allclose(v @ np.diag(-0.5 + 1j * w) @ v.conj().T, s, atol=1e-9)
    np.testing.assert_allclose(np.sort(w), -np.sort(w)[::-1], atol=1e-9)  # +-w pairs


def test_init_eigenvalues_have_the_hippo_structure():
    # conj_sym False: all 16 eigenvalues; real parts exactly -0.5, imaginary parts in +-pairs.
    lam_re, im, _, _ = s5_init_arrays(16, 1, conj_sym=False)
    assert lam_re.shape == (16,) and np.all(lam_re == -0.5)
    np.testing.assert_allclose(np.sort(im), -np.sort(im)[::-1], rtol=1e-9)
    # conj_sym: one of each pair (the negative one), half as many states.
    lam_re2, im2, _, _ = s5_init_arrays(16, 1, conj_sym=True)
    assert lam_re2.shape == (8,) and np.all(lam_re2 == -0.5) and np.all(im2 < 0)
    np.testing.assert_allclose(np.sort(np.concatenate([im2, -im2])), np.sort(im), rtol=1e-9)
    # blocks: each block has its own HiPPO-N(8) decomposition.
    _, im3, _, _ = s5_init_arrays(16, 2, conj_sym=True)
    np.testing.assert_allclose(im3, np.tile(hippo_n_eig(8)[0][:4], 2), rtol=1e-9)


def test_init_params_carry_the_hippo_eigenvalues_and_steps(x):
    m = S5SSM(H, state_dim=16, dt_min=1e-2, dt_max=2e-2)
    p = m.init(jax.random.key(0), x[:, :2])["params"]
    assert m.kept_states == 8
    assert np.all(np.asarray(p["Lambda_re"]) == -0.5)  # exactly, before discretization
    np.testing.assert_allclose(p["Lambda_im"], hippo_n_eig(16)[0][:8], rtol=1e-6)
    ls = np.asarray(p["log_step"])
    assert ls.shape == (8,) and np.all(ls >= np.log(1e-2) - 1e-6)
    assert np.all(ls <= np.log(2e-2) + 1e-6)


def test_block_diagonal_v():
    _, _, V, V_inv = s5_init_arrays(16, 2, conj_sym=True)
    assert V.shape == (16, 8) and V_inv.shape == (8, 16)
    assert np.all(V[:8, 4:] == 0) and np.all(V[8:, :4] == 0)
    np.testing.assert_allclose(V_inv @ V, np.eye(8), atol=1e-12)


def test_init_is_jittable_and_c_inits_differ(x):
    cs = {}
    for c_init in ("trunc_standard_normal", "lecun_normal", "complex_normal"):
        m = S5SSM(H, state_dim=16, C_init=c_init)
        init = jax.jit(m.init) if c_init == "trunc_standard_normal" else m.init
        p = init(jax.random.key(0), x[:, :2])["params"]
        assert p["C"].shape == (H, 8, 2) and p["B"].shape == (8, H, 2)
        assert bool(jnp.all(jnp.isfinite(p["C"])))
        cs[c_init] = np.asarray(p["C"])
    assert not np.allclose(cs["lecun_normal"], cs["complex_normal"])


def test_initialize_carry_needs_no_params():
    m = S5Block(H, state_dim=16)
    for c in (m.apply({}, 3, method="initialize_carry"), m.initialize_carry(3),
              S5SSM(H, state_dim=8, conj_sym=False).initialize_carry(3)):
        assert c.shape == (3, 16) and c.dtype == jnp.float32 and not np.any(np.asarray(c))
    assert m.init(jax.random.key(0), 3, method="initialize_carry") == {}


# ---------------------------------------------------------------------------------- options


def test_causal_and_bidirectional(x):
    m = S5Block(H, state_dim=16, scan="associative")
    v = _init(m, x)
    x2 = x.at[:, -1, 0].add(1.0)  # not on every feature: LayerNorm would remove that
    _, y1 = m.apply(v, x)
    _, y2 = m.apply(v, x2)
    np.testing.assert_array_equal(y1[:, :-1], y2[:, :-1])  # causal

    mb = S5Block(H, state_dim=16, bidirectional=True)
    vb = _init(mb, x)
    assert "C_bwd" in vb["params"]["ssm"]
    _, z1 = mb.apply(vb, x)
    _, z2 = mb.apply(vb, x2)
    assert z1.shape == x.shape and bool(jnp.all(jnp.isfinite(z1)))
    assert float(jnp.abs(z1[:, 0] - z2[:, 0]).max()) > 1e-6  # a late input reaches t = 0
    # it carries nothing: () in and out, also under jit; zeros are accepted eagerly.
    assert mb.initialize_carry(B) == ()
    carry, z3 = jax.jit(lambda c: mb.apply(vb, x, c))(mb.initialize_carry(B))
    assert carry == ()
    np.testing.assert_allclose(z3, z1, rtol=1e-4, atol=1e-5)
    mb.apply(vb, x, jnp.zeros((B, 16)))
    # steps, non-zero carries and carries it cannot check are refused.
    with pytest.raises(ValueError, match="bidirectional.*no one-step form"):
        mb.apply(vb, jnp.zeros((B, 16)), x[:, 0], method="step")
    with pytest.raises(ValueError, match="bidirectional.*no non-zero"):
        mb.apply(vb, x, jnp.ones((B, 16)))
    with pytest.raises(ValueError, match="bidirectional.*traced carry"):
        jax.jit(lambda c: mb.apply(vb, x, c))(jnp.zeros((B, 16)))


def test_dropout_mask_shared_across_time(x):
    m = S5Block(H, state_dim=16, dropout=0.5, scan="associative")
    v = _init(m, x)
    _, y_eval = m.apply(v, x)
    _, y_eval2 = m.apply(v, x, train=False)
    np.testing.assert_array_equal(y_eval, y_eval2)
    rngs = {"dropout": jax.random.key(5)}
    _, y_train = m.apply(v, x, train=True, rngs=rngs)
    assert not np.allclose(y_train, y_eval)
    z_eval, z_train = np.asarray(y_eval - x), np.asarray(y_train - x)
    kept = np.abs(z_train - z_eval / 0.5) < 1e-4
    dropped = np.abs(z_train) < 1e-7
    assert np.all(kept | dropped)
    mask = kept & ~dropped
    assert np.all(mask == mask[:, :1, :])  # the same features dropped at every time step
    assert 0 < mask[:, 0].mean() < 1
    # the one-step form draws the same mask from the same rng
    _, y_steps = run_steps(m, v, x, train=True, rngs=rngs)
    np.testing.assert_allclose(y_steps, y_train, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw, match", [
    (dict(discretization="euler"), "discretization 'euler'.*zoh, bilinear"),
    (dict(C_init="orthogonal"), "C_init 'orthogonal'.*trunc_standard_normal, lecun_normal"),
    (dict(glu="swiglu"), "glu 'swiglu'.*full_glu, half_glu1, half_glu2, gelu"),
    (dict(norm="batch"), "norm 'batch'.*layer, none"),
    (dict(scan="parallel"), "scan 'parallel'.*auto, associative, sequential"),
    (dict(state_dim=10, blocks=3), r"state_dim \(10\) must be divisible by blocks \(3\)"),
    (dict(state_dim=6, blocks=2), "conj_sym.*must be even"),
    (dict(state_dim=7), "conj_sym.*must be even"),
    (dict(dt_min=0.1, dt_max=0.01), "dt_min <= dt_max"),
    (dict(step_rescale=0.0), "step_rescale must be positive"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(state_dim=0), "positive integers"),
])
def test_bad_hyper_parameters_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        S5Block(H, **kw)


def test_odd_state_dim_is_fine_without_conj_sym():
    m = S5SSM(H, state_dim=7, conj_sym=False)
    assert m.kept_states == 7 and m.initialize_carry(2).shape == (2, 14)


def test_causal_convolution_before_the_ssm(x):
    """``conv_width``: the step form equals the parallel form, chunks chain through the
    (conv_state, ssm carry) carry, the convolution is causal, and at its identity init the
    block is the plain S5 block with the same parameters."""
    m = S5Block(H, state_dim=16, scan="associative", conv_width=4)
    v = _init(m, x)
    plain = S5Block(H, state_dim=16, scan="associative")
    vp = {"params": {k: w for k, w in v["params"].items() if not k.startswith("conv_")}}
    np.testing.assert_allclose(m.apply(v, x)[1], plain.apply(vp, x)[1], rtol=1e-5, atol=1e-6)
    kernel = jax.random.normal(jax.random.key(5), (4, H))
    v = {"params": {**v["params"], "conv_kernel": kernel}}
    carry_p, y_p = m.apply(v, x)
    assert carry_p[0].shape == (B, 3, H) and carry_p[1].shape == (B, 16)
    carry_s, y_s = run_steps(m, v, x)
    np.testing.assert_allclose(y_s, y_p, rtol=1e-4, atol=1e-5)
    c1, y1 = m.apply(v, x[:, :SPLIT])
    _, y2 = m.apply(v, x[:, SPLIT:], c1)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], axis=1), y_p, rtol=1e-4, atol=1e-5)
    y_late = m.apply(v, x.at[:, SPLIT:].add(1.0))[1]
    np.testing.assert_allclose(y_late[:, :SPLIT], y_p[:, :SPLIT], rtol=1e-6)  # causal
