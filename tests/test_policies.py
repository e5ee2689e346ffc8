"""Every registered policy, in every policy family: step form == parallel form, chunking, grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncssm_data.modes import MODES as ALL_MODES
from ncssm_policies.models import build_policy
from ncssm_policies.registry import registry

B = 2
STEPS = {"state_action": 490}  # the full training segment; the controller wrappers get 64
SMALL = {"s5": dict(d_model=16, n_layers=2, state_dim=8),
         "mamba": dict(d_model=16, n_layers=2, d_state=4),
         "gru": dict(d_model=16, n_layers=2)}
MODES = {  # mode -> (input widths, out_dim)
    "state_action": ((5,), 3),
    "state_intention_controller": ((5, 7), 3),
    "syllable_state_intention": ((4, 5), 3),
}


def _inputs(key, widths, steps):
    keys = jax.random.split(key, len(widths))
    xs = [jax.random.normal(k, (B, steps, w)) for k, w in zip(keys, widths)]
    if len(widths) == 2 and widths[0] == 4:  # one-hot syllables
        xs[0] = jax.nn.one_hot(jax.random.randint(keys[0], (B, steps), 0, 4), 4)
    return xs[0] if len(xs) == 1 else tuple(xs)


def _at(x, t):
    return tuple(a[:, t] for a in x) if isinstance(x, tuple) else x[:, t]


def _slice(x, a, b):
    return tuple(p[:, a:b] for p in x) if isinstance(x, tuple) else x[:, a:b]


def test_builtins_and_plugin_are_registered():
    reg = registry()
    assert {"s5", "mamba", "gru"} <= set(reg.names())
    assert reg.policies["s5"].dist == "ncssm" and reg.policies["gru"].dist == "ncssm-gru"


@pytest.fixture(scope="module", params=[(p, m) for p in SMALL for m in MODES],
                ids=lambda pm: f"{pm[0]}-{pm[1]}")
def policy(request):
    name, mode = request.param
    widths, out_dim = MODES[mode]
    model = build_policy(registry().get(name), mode, out_dim, int_dim=6, decoder_hidden=(16,),
                         embed_dim=4, **SMALL[name])
    x = _inputs(jax.random.PRNGKey(0), widths, STEPS.get(mode, 64))
    params = jax.jit(model.init)(jax.random.PRNGKey(1), _slice(x, 0, 8))
    return model, params, x, out_dim


def test_step_form_equals_parallel_form(policy):
    model, params, x, out_dim = policy
    T = jax.tree_util.tree_leaves(x)[0].shape[1]
    y = jax.jit(lambda p, x: model.apply(p, x))(params, x)
    assert y.shape == (B, T, out_dim) and bool(jnp.isfinite(y).all())

    @jax.jit
    def stepped(params, x):
        def body(carry, t):
            return model.apply(params, carry, _at(x, t), method="step")

        return jax.lax.scan(body, model.initialize_carry(B), jnp.arange(T))[1]

    ys = jnp.swapaxes(stepped(params, x), 0, 1)
    np.testing.assert_allclose(ys, y, rtol=1e-4, atol=1e-4)


def test_chunked_forward_equals_one_pass(policy):
    model, params, x, _ = policy
    T = jax.tree_util.tree_leaves(x)[0].shape[1]
    fwd = jax.jit(lambda p, c, x: model.apply(p, c, x, method="forward"))
    carry0 = model.initialize_carry(B)
    _, full = fwd(params, carry0, x)
    c, first = fwd(params, carry0, _slice(x, 0, T // 2 - 7))
    _, second = fwd(params, c, _slice(x, T // 2 - 7, T))
    np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), full, rtol=1e-4, atol=1e-5)


def test_gradients_are_finite(policy):
    model, params, x, _ = policy
    short = _slice(x, 0, 32)
    grads = jax.jit(jax.grad(lambda p: jnp.mean(model.apply(p, short) ** 2)))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert leaves and all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


@pytest.mark.parametrize("mode", [m for m, d in ALL_MODES.items() if d.family == "sequence"])
def test_sequence_modes_use_the_policy_as_is(mode):
    spec = registry().get("s5")
    model = build_policy(spec, mode, 3, **SMALL["s5"])
    assert type(model).__name__ == "SequencePolicy" and model.out_dim == 3


def test_unknown_mode_and_layer():
    with pytest.raises(ValueError, match="Unknown mode 'dance'"):
        build_policy(registry().get("s5"), "dance", 3)
    from ncssm_policies.models import SequencePolicy

    with pytest.raises(ValueError, match="Unknown sequence layer 'lstm'"):
        SequencePolicy(out_dim=2, layer="lstm").init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 3)))


def test_in_frames_reads_the_last_frames_causally():
    """``in_frames`` (S5 and Mamba through ``model_kwargs``): at init the policy is the plain
    one with the same params; with a trained-looking frames kernel the step form equals the
    parallel form, chunks chain through the frame buffer, and the output stays causal."""
    from ncssm_policies.models import SequencePolicy

    kw = dict(out_dim=3, layer="s5", d_model=16, n_layers=2, layer_kwargs={"state_dim": 8})
    model, plain = SequencePolicy(in_frames=3, **kw), SequencePolicy(**kw)
    x = jax.random.normal(jax.random.PRNGKey(0), (B, 32, 5))
    params = model.init(jax.random.PRNGKey(1), x[:, :4])
    base = {"params": {k: v for k, v in params["params"].items() if k != "frames"}}
    np.testing.assert_allclose(model.apply(params, x), plain.apply(base, x), rtol=1e-6)
    frames = params["params"]["frames"]
    params = {"params": {**params["params"], "frames": {
        **frames, "kernel": jax.random.normal(jax.random.PRNGKey(2), frames["kernel"].shape)}}}
    y = model.apply(params, x)
    carry, ys = model.initialize_carry(B), []
    assert carry[0].shape == (B, 2, 16)
    step = jax.jit(lambda p, c, x_t: model.apply(p, c, x_t, method="step"))  # one compile
    for t in range(32):
        carry, y_t = step(params, carry, x[:, t])
        ys.append(y_t)
    np.testing.assert_allclose(jnp.stack(ys, 1), y, rtol=1e-4, atol=1e-5)
    # Two chunks of 16: the second runs the operations the first compiled (same shapes).
    c, y1 = model.apply(params, model.initialize_carry(B), x[:, :16], method="forward")
    _, y2 = model.apply(params, c, x[:, 16:], method="forward")
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), y, rtol=1e-4, atol=1e-5)
    late = model.apply(params, x.at[:, 13:].add(1.0))
    np.testing.assert_allclose(late[:, :13], y[:, :13], rtol=1e-6)
    assert not np.allclose(late[:, 13:], y[:, 13:])
