"""Check a policy against the plugin contract: the plugin author's ``check_env``.

    python -m ncssm_policies check NAME [--hparams YAML]

or, in a plugin's own tests::

    from ncssm_policies.testing import check_policy

    def test_contract():
        check_policy("gru")

:func:`check_policy` builds the policy with ``make`` and checks, in this order, that

1. ``make(out_dim, d_model=, n_layers=, dropout=)`` returns a ``flax.linen.Module`` instance
   with ``__call__``, ``forward``, ``initialize_carry`` and ``step``;
2. ``initialize_carry(B)`` needs no parameters and gives arrays with leading axis ``B``;
3. the parallel form maps ``(B, T, D_in)`` to finite ``(B, T, out_dim)``, and ``forward`` chains
   over two chunks through its carry to the same output;
4. ``step`` returns ``(carry, y_t)``, the carry shaped like ``initialize_carry``'s, and stepping
   through 50 frames equals the parallel form, also after a carry reset mid-sequence;
5. the gradients of a loss through ``__call__(x, train=True)`` are finite and not all zero;
6. ``dropout`` and ``train=`` are honoured: with ``dropout=0.5``, ``train=True`` changes the
   output with the dropout rng and ``train=False`` does not;
7. in every family the policy claims (:data:`ncssm_policies.hookspecs.FAMILIES`), the wrapped
   policy's parallel form has the family's shapes and its step form equals it.

The first failure raises :class:`PolicyCheckError`: one sentence naming the policy, its plugin
(distribution and entry point) and the method. ``ncssm-train`` runs the cheap part
(``quick=True``: 1, 2, the shapes of 3, and 4 over 8 steps without the reset) with the run's own
hyper-parameters before it loads data.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any

import numpy as np

from ncssm_policies.hookspecs import FAMILIES, PolicySpec
from ncssm_policies.registry import _describe, _kind  # the registry's one-sentence helpers

B, D_IN, OUT_DIM = 2, 5, 3  # the inputs the check feeds
STEPS = 50  # step-vs-parallel length; the carry is reset half way
QUICK_STEPS = 8
DROPOUT = 0.5
CHECK_HPARAMS = {"d_model": 16, "n_layers": 2, "dropout": 0.0}  # small, as in every config
# One mode per family, with its input widths and out_dim: (mode, widths, out_dim)
FAMILY_MODES = {"sequence": ("state_action", (D_IN,), OUT_DIM),
                "syllable": ("syllable_state_intention", (4, D_IN), OUT_DIM),
                "controller": ("state_intention_controller", (D_IN, 7), OUT_DIM)}
RTOL, ATOL = 1e-3, 1e-4  # step vs parallel, float32


class PolicyCheckError(AssertionError):
    """A policy breaks the plugin contract; its message is one sentence naming the policy, its
    plugin and the method."""


def check_policy(name_or_spec: str | PolicySpec, hparams: dict | None = None, *,
                 quick: bool = False, family: str | None = None,
                 seed: int = 0) -> list[str]:
    """Check a registered policy (by name) or a :class:`PolicySpec` against the contract.

    ``hparams``: the keyword arguments ``make`` gets (default :data:`CHECK_HPARAMS`);
    ``quick``: only the cheap checks (``ncssm-train``'s pre-flight); ``family``: check only that
    family (default: every family the spec claims). Returns the checks passed, one line each;
    raises :class:`PolicyCheckError` (one sentence) at the first failure.
    """
    spec, origin = _resolve(name_or_spec)
    return _Checker(spec, origin, dict(CHECK_HPARAMS if hparams is None else hparams), quick,
                    family, seed).run()


def _resolve(name_or_spec) -> tuple[PolicySpec, str]:
    """The spec and where it came from (``dist (entry point)``)."""
    if isinstance(name_or_spec, PolicySpec):
        return name_or_spec, _origin_of_module(getattr(name_or_spec.make, "__module__", None))
    from ncssm_policies.registry import registry

    reg = registry()
    spec = reg.get(name_or_spec)  # one sentence naming the known ones when unknown
    return spec, reg.policies[spec.name].origin


def _origin_of_module(module: str | None) -> str:
    """``dist (module)`` for the distribution that installs ``module``'s top package."""
    top = (module or "?").split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top, [])
    return f"{dists[0] if dists else 'an uninstalled module'} ({module})"


class _Checker:
    def __init__(self, spec: PolicySpec, origin: str, hparams: dict, quick: bool,
                 family: str | None, seed: int):
        import jax

        self.spec, self.origin, self.hparams, self.quick = spec, origin, hparams, quick
        self.families = (family,) if family else tuple(spec.families)
        self.key = jax.random.PRNGKey(seed)
        self.passed: list[str] = []

    # --- reporting ---------------------------------------------------------------------------

    def fail(self, method: str, problem: str, cause: BaseException | None = None) -> None:
        """Raise the one sentence; ``cause`` (the plugin's exception) rides along as
        ``__cause__`` for ``--traceback``."""
        text = " ".join(f"Policy {self.spec.name!r} of plugin {self.origin}: {method} "
                        f"{problem}".split())
        raise PolicyCheckError(text if text.endswith(".") else text + ".") from cause

    def call(self, method: str, fn: Callable, *args, **kwargs) -> Any:
        """``fn(*args)``; any exception becomes one sentence naming ``method``."""
        try:
            return fn(*args, **kwargs)
        except PolicyCheckError:
            raise
        except Exception as err:  # noqa: BLE001 - the plugin's own code: any failure is reported
            self.fail(method, f"raised {_describe(err)}", err)

    def ok(self, line: str) -> None:
        self.passed.append(line)

    # --- the checks --------------------------------------------------------------------------

    def run(self) -> list[str]:
        bad = [f for f in self.spec.families if f not in FAMILIES]
        if bad or not self.spec.families:
            self.fail("PolicySpec.families", f"is {tuple(self.spec.families)!r}, expected a "
                      f"non-empty tuple of {', '.join(FAMILIES)}")
        model = self.make(OUT_DIM, self.hparams)
        self.ok(f"make(out_dim={OUT_DIM}, {_kwargs(self.hparams)}) returns "
                f"{type(model).__name__}, a flax.linen.Module with the contract's methods")
        x = self.normal(1, (B, QUICK_STEPS if self.quick else STEPS, D_IN))
        carry0 = self.carry(model)
        params = self.parallel(model, x)
        if not self.quick:
            self.chunks(model, params, x)
        self.steps(model, params, x, carry0)
        if not self.quick:
            self.gradients(model, params, x)
            self.dropout(x, params)
        for family in self.families:
            if family != "sequence":  # the sequence family is the policy itself, checked above
                self.family(family)
        return self.passed

    def make(self, out_dim: int, hparams: dict):
        import flax.linen as nn

        what = f"make(out_dim={out_dim}, {_kwargs(hparams)})"
        model = self.call(what, self.spec.make, out_dim, **hparams)
        if isinstance(model, type):
            self.fail(what, f"returned the class {model.__name__}, expected an instance of it "
                      f"(return {model.__name__}(out_dim=out_dim, **hparams))")
        if not isinstance(model, nn.Module):
            self.fail(what, f"returned {_kind(model)}, expected a flax.linen.Module instance")
        missing = [m for m in ("forward", "initialize_carry", "step")
                   if not callable(getattr(model, m, None))]
        if missing:
            self.fail(f"{type(model).__name__}", f"has no {', '.join(m + '()' for m in missing)}; "
                      f"the contract needs __call__, forward, initialize_carry and step (see "
                      f"ncssm_policies.hookspecs)")
        return model

    def normal(self, i: int, shape) -> Any:
        import jax

        return jax.random.normal(jax.random.fold_in(self.key, i), shape)

    def carry(self, model):
        import jax

        carry = self.call("initialize_carry(B) (on the unbound module, without parameters)",
                          model.initialize_carry, B)
        leaves = jax.tree_util.tree_leaves(carry)
        for leaf in leaves:
            shape = getattr(leaf, "shape", None)
            if shape is None or len(shape) == 0 or shape[0] != B:
                self.fail(f"initialize_carry({B})", f"gave a leaf {_kind(leaf)}, expected arrays "
                          f"with leading axis {B} (the batch)")
        self.ok(f"initialize_carry({B}) gives {len(leaves)} array(s) with leading axis {B}")
        return carry

    def parallel(self, model, x):
        import jax

        y, params = self.call(f"__call__(x) (init, x {tuple(x.shape)})",
                              jax.jit(model.init_with_output), jax.random.fold_in(self.key, 2), x)
        self.expect("__call__(x)", y, (B, x.shape[1], OUT_DIM))
        self.ok(f"__call__(x (B, T, D_in) = {tuple(x.shape)}) gives finite {tuple(y.shape)}")
        self.y = y
        return params

    def expect(self, method: str, y, shape, finite: bool = True) -> None:
        got = getattr(y, "shape", None)
        if got is None:
            self.fail(method, f"returned {_kind(y)}, expected an array of shape {shape}")
        if tuple(got) != tuple(shape):
            self.fail(method, f"returned shape {tuple(got)}, expected {tuple(shape)}")
        if finite and not np.isfinite(np.asarray(y)).all():
            self.fail(method, "returned NaN or Inf on finite inputs")

    def pair(self, method: str, out) -> tuple[Any, Any]:
        if not isinstance(out, tuple) or len(out) != 2:
            self.fail(method, f"returned {_kind(out)}, expected a (carry, y) pair")
        return out

    def chunks(self, model, params, x):
        import jax

        k = x.shape[1] // 2  # two equal chunks: one compile serves both, and the reset below
        self.forward = jax.jit(lambda p, c, x: model.apply(p, c, x, method="forward"))
        what = f"forward(carry, x) over x[:, :{k}] then x[:, {k}:]"
        c1, y1 = self.pair("forward(carry, x)", self.call(
            what, self.forward, params, model.initialize_carry(B), x[:, :k]))
        _, y2 = self.pair("forward(carry, x)", self.call(what, self.forward, params, c1, x[:, k:]))
        y = self.call(what, np.concatenate, [np.asarray(y1), np.asarray(y2)], axis=1)
        self.close(what, y, self.y, "__call__(x)")
        self.ok(f"forward chains through its carry ({what} equals __call__(x))")

    def close(self, what: str, got, want, want_what: str) -> None:
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            self.fail(what, f"gave shape {got.shape}, but {want_what} gives {want.shape}")
        if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
            err = np.abs(got - want)
            t = int(np.argmax(err.max(axis=tuple(i for i in range(err.ndim) if i != 1))))
            self.fail(what, f"differs from {want_what} by up to {err.max():.3g} (first at step "
                      f"{t}; tolerance rtol {RTOL}, atol {ATOL}): the one-step form must equal "
                      f"the parallel form")

    def steps(self, model, params, x, carry0):
        import jax
        import jax.numpy as jnp

        what = "step(carry, x_t)"
        # Shapes first, traced without compiling: a (carry, y_t) pair, the carry like carry0's.
        out = self.call(what, jax.eval_shape,
                        lambda p, c, x_t: model.apply(p, c, x_t, method="step"),
                        params, carry0, x[:, 0])
        c, y_t = self.pair(what, out)
        if getattr(y_t, "shape", None) != (B, OUT_DIM):
            self.fail(what, f"returned y_t {_kind(y_t)}, expected shape {(B, OUT_DIM)}")
        spec = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), carry0)
        if (jax.tree_util.tree_structure(c) != jax.tree_util.tree_structure(carry0)
                or jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), c) != spec):
            self.fail(what, "returned a carry of another structure, shape or dtype than "
                      "initialize_carry's, so it cannot run in a scan")
        n = x.shape[1]
        reset_at = None if self.quick else n // 2

        def run(p, x):  # the whole rollout in one scan; the carry reset at reset_at
            def body(c, xt_t):
                x_t, t = xt_t
                if reset_at is not None:
                    fresh = model.initialize_carry(B)
                    c = jax.tree_util.tree_map(lambda a, b: jnp.where(t == reset_at, b, a),
                                               c, fresh)
                return model.apply(p, c, x_t, method="step")

            _, ys = jax.lax.scan(body, carry0, (jnp.swapaxes(x, 0, 1), jnp.arange(x.shape[1])))
            return jnp.swapaxes(ys, 0, 1)

        ys = np.asarray(self.call(f"{what} in a lax.scan over {n} steps", jax.jit(run),
                                  params, x))
        if reset_at is None:
            self.close(f"{what} over {n} steps", ys, self.y, "__call__(x)")
        else:
            self.close(f"{what} over {reset_at} steps", ys[:, :reset_at],
                       self.y[:, :reset_at], "__call__(x)")
            _, fresh = self.forward(params, model.initialize_carry(B), x[:, reset_at:])
            self.close(f"{what} after a carry reset at step {reset_at}", ys[:, reset_at:],
                       fresh, f"__call__(x[:, {reset_at}:])")
        self.ok(f"{what} over {n} steps equals __call__(x)"
                + ("" if reset_at is None else f", and again after a carry reset at {reset_at}"))

    def gradients(self, model, params, x):
        import jax
        import jax.numpy as jnp

        def loss(p):
            y = model.apply(p, x, train=True, rngs={"dropout": jax.random.fold_in(self.key, 3)})
            return jnp.mean(y ** 2)

        grads = self.call("__call__(x, train=True) under jax.grad", jax.jit(jax.grad(loss)),
                          params)
        leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]
        if not all(np.isfinite(g).all() for g in leaves):
            self.fail("__call__(x, train=True) under jax.grad", "gave NaN or Inf gradients")
        if not any(np.any(g != 0) for g in leaves):
            self.fail("__call__(x, train=True) under jax.grad", "gave all-zero gradients: no "
                      "parameter reaches the output")
        self.ok(f"gradients through __call__(x, train=True) are finite ({len(leaves)} arrays)")

    def dropout(self, x, params):
        import jax

        hparams = {**self.hparams, "dropout": DROPOUT}
        model = self.make(OUT_DIM, hparams)
        what = f"__call__(x, train=...) with dropout={DROPOUT}"

        def three(p):  # train=False with two rngs, train=True with the first
            def apply(train, k):
                return model.apply(p, x, train=train,
                                   rngs={"dropout": jax.random.fold_in(self.key, k)})

            return apply(False, 4), apply(False, 5), apply(True, 4)

        try:  # dropout adds no parameters to most policies: then one compile does
            out = jax.jit(three)(params)
        except Exception:  # noqa: BLE001 - it has its own: initialize them
            out = self.call(what, jax.jit(lambda k: three(model.init(k, x))),
                            jax.random.fold_in(self.key, 2))
        off4, off5, on4 = map(np.asarray, out)
        if not np.array_equal(off4, off5):
            self.fail(f"__call__(x, train=False) with dropout={DROPOUT}", "changed with the "
                      "dropout rng: train=False must be deterministic")
        if np.allclose(on4, off4):
            self.fail(f"__call__(x, train=True) with dropout={DROPOUT}", "gave the same output as "
                      "train=False: make() must pass dropout on and __call__ apply it when "
                      "train=True (rng 'dropout')")
        self.ok(f"dropout={DROPOUT} applies with train=True only")

    def family(self, family: str):
        import jax

        from ncssm_policies.models import build_policy

        mode, widths, out_dim = FAMILY_MODES[family]
        what = f"the {family} family ({mode})"
        model = self.call(what, build_policy, self.spec, mode, out_dim, int_dim=6,
                          decoder_hidden=(8,), embed_dim=4, **self.hparams)
        T = QUICK_STEPS
        parts = [self.normal(10 + i, (B, T, w)) for i, w in enumerate(widths)]
        if family == "syllable":
            parts[0] = jax.nn.one_hot(jax.random.randint(self.key, (B, T), 0, widths[0]),
                                      widths[0])
        x = tuple(parts)
        params = self.call(f"__call__(x) in {what}", jax.jit(model.init), self.key, x)
        def both(p, x):  # the parallel form and the one-step form in one compile
            def body(c, x_t):
                return model.apply(p, c, x_t, method="step")

            _, ys = jax.lax.scan(body, model.initialize_carry(B),
                                 jax.tree_util.tree_map(lambda a: a.swapaxes(0, 1), x))
            return model.apply(p, x), ys.swapaxes(0, 1)

        y, ys = self.call(f"__call__(x) or step(carry, x_t) in {what}", jax.jit(both), params, x)
        self.expect(f"__call__(x) in {what}", y, (B, T, out_dim))
        self.close(f"step(carry, x_t) in {what}", ys, y, "__call__(x)")
        self.ok(f"{what}: inputs {list(widths)} -> {(B, T, out_dim)}, step equals parallel")


def _kwargs(hparams: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in hparams.items())
