"""S5: a diagonal state-space sequence layer (Smith, Warrington & Linderman, ICLR 2023).

Shapes: ``B`` batch, ``T`` time, ``H`` features (``d_model``), ``P`` complex states
(``state_dim``) and ``Pk`` states actually kept: ``P // 2`` with ``conj_sym`` (each kept state
stands for itself and its complex conjugate), ``P`` without.

The continuous system is ``h'(t) = Lambda h(t) + B~ u(t)``, ``y(t) = Re(C~ h(t)) + D u(t)`` with
``Lambda`` diagonal: the eigenvalues of the normal part of the HiPPO-LegS matrix, one
eigen-decomposition per block of a block-diagonal init. It is discretized once per call with a
learned per-state step, then iterated in one of two ways that share everything else:

* the parallel form runs :func:`linear_scan` over a whole ``(B, T, H)`` sequence from a carried
  state ``h0`` and returns every output and the last state, so chunks can be chained;
* the one-step form :meth:`S5SSM.step` advances the carried state by one ``(B, H)`` input.

Complex vectors are float32 pairs, not a complex dtype: a vector of ``Pk`` complex numbers is
one float32 array of ``2 Pk`` numbers, the real parts then the imaginary parts (``[re | im]``).
(Only the inside of ``jax.lax.associative_scan`` uses complex64; see ``_scan_impl``.) The input
projection ``B_bar u`` is then one real matmul ``(H -> 2 Pk)`` instead of a complex one on a
complex-cast input, the output projection ``Re(C~ h)`` one real matmul ``(2 Pk -> H)``, and the
recurrence is plain float arithmetic. The recurrence has its own VJP (the adjoint of a linear
recurrence is the same recurrence run the other way with ``conj(Lambda_bar)``), so reverse mode
never differentiates through the scan's internals. ``benchmarks/s5_train.py`` measures this
against a plain complex implementation.

A carry is one float32 array ``(B, 2 Pk)`` in that ``[re | im]`` layout; zeros mean "no past".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = Any
Carry = Array  # (B, 2 Pk) float32: [re | im]

DISCRETIZATIONS = ("zoh", "bilinear")
C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")
GLUS = ("full_glu", "half_glu1", "half_glu2", "gelu")
NORMS = ("layer", "none")
SCANS = ("auto", "associative", "sequential")
CLIP_EIGS_MAX = -1e-4


# ----------------------------------------------------------------------------------------------
# Linear recurrence h_t = a * h_{t-1} + b_t on real pairs, with one signature for every method.
# ----------------------------------------------------------------------------------------------


def _cmul(xr, xi, yr, yi):
    """Complex product of two real pairs."""
    return xr * yr - xi * yi, xr * yi + xi * yr


def _split(z):
    """``[re | im]`` along the last axis -> ``(re, im)``."""
    n = z.shape[-1] // 2
    return z[..., :n], z[..., n:]


def _recur(a, h, b):
    """One step ``a * h + b`` on packed ``[re | im]`` arrays: a (2P,), h and b (..., 2P).
    The sequential scan's body and ``step`` both use it."""
    (ar, ai), (hr, hi), (br, bi) = _split(a), _split(h), _split(b)
    nr, ni = _cmul(ar, ai, hr, hi)
    return jnp.concatenate([nr + br, ni + bi], axis=-1)


# Jitted on its own so an eager caller compiles the scan once per shape and reuses it; inside an
# outer jit it is simply inlined. Packed and batch-major: a (2P,), b (B, T, 2P), h0 (B, 2P).
@functools.partial(jax.jit, static_argnames=("method", "reverse"))
def _scan_impl(a, b, h0, method: str, reverse: bool):
    if method == "sequential":

        def body(h, b_t):
            h = _recur(a, h, b_t)
            return h, h

        _, h = jax.lax.scan(body, h0, jnp.swapaxes(b, 0, 1), reverse=reverse)  # walks axis 0
        return jnp.swapaxes(h, 0, 1)
    # Associative: fold h0 into the first element the recurrence sees; the scan result for
    # element k is then (sum_j a^(k-j) b_j) + a^(k+1) h0, exactly the chained recurrence.
    first = -1 if reverse else 0
    b = b.at[:, first].set(_recur(a, h0, b[:, first]))
    # The one place a complex dtype is used: inside associative_scan it runs as fast as real
    # pairs (measured) and XLA compiles it about twice as fast (half the arrays to slice).
    a_c = jax.lax.complex(*_split(a))
    b_c = jax.lax.complex(*_split(b))
    # Lambda_bar is time-invariant: its elements need a time axis, not a batch axis.
    elems = (jnp.broadcast_to(a_c, (1, b.shape[1], a_c.shape[0])), b_c)

    def combine(x, y):  # (a1, b1) then (a2, b2): (a2 a1, a2 b1 + b2)
        return y[0] * x[0], y[0] * x[1] + y[1]

    _, h = jax.lax.associative_scan(combine, elems, reverse=reverse, axis=1)
    return jnp.concatenate([h.real, h.imag], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _scan(a, b, h0, method, reverse):
    return _scan_impl(a, b, h0, method, reverse)


def _scan_fwd(a, b, h0, method, reverse):
    h = _scan_impl(a, b, h0, method, reverse)
    return h, (a, h0, h)


def _scan_bwd(method, reverse, res, g):
    a, h0, h = res
    a_re, a_im = _split(a)
    conj_a = jnp.concatenate([a_re, -a_im])
    # The adjoint is the same recurrence run the other way with conj(a) on the cotangents.
    lam = _scan_impl(conj_a, g, jnp.zeros_like(h0), method, not reverse)
    # dL/da = sum_t lam_t conj(h_{t-1}) with h_{-1} = h0 (mirrored when reverse).
    if reverse:
        prev, first = jnp.concatenate([h[:, 1:], h0[:, None]], axis=1), -1
    else:
        prev, first = jnp.concatenate([h0[:, None], h[:, :-1]], axis=1), 0
    (l_re, l_im), (p_re, p_im) = _split(lam), _split(prev)
    ga = jnp.concatenate([jnp.sum(l_re * p_re + l_im * p_im, axis=(0, 1)),
                          jnp.sum(l_im * p_re - l_re * p_im, axis=(0, 1))])
    gh0 = _recur(conj_a, lam[:, first], jnp.zeros_like(h0))
    return ga, lam, gh0


_scan.defvjp(_scan_fwd, _scan_bwd)


def resolve_scan(method: str) -> str:
    """``"auto"`` -> ``"sequential"`` on the CPU, ``"associative"`` on an accelerator.

    On a 2-core CPU (B 16, T 490, H 128, P 128, 4 layers) a train step with ``jax.lax.scan``
    ran 1.2-1.3x faster than with ``jax.lax.associative_scan`` and compiled 1.7-3.5x faster;
    the log-depth scan is for hardware with many parallel lanes (not measured here).
    """
    _check_choice("scan", method, SCANS)
    if method == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "associative"
    return method


def linear_scan(a: Array, b: Array, h0: Array | None = None, *, method: str = "auto",
                reverse: bool = False) -> Array:
    """Run ``h_t = a * h_{t-1} + b_t`` along time on packed complex vectors ``[re | im]``.

    Every method has this signature; they agree to float rounding and share one VJP.

    Args:
        a: (2P,): the time-invariant diagonal transition.
        b: (B, T, 2P): the inputs.
        h0: (B, 2P): the state before the first step; ``None`` means zeros.
        method: ``"associative"`` (``jax.lax.associative_scan``, log-depth),
            ``"sequential"`` (``jax.lax.scan``) or ``"auto"`` (see :func:`resolve_scan`).
        reverse: run from ``t = T - 1`` down to ``0`` (``h0`` is then the state after the end).

    Returns:
        (B, T, 2P): every state; ``h[:, -1]`` (``h[:, 0]`` when ``reverse``) is the last one.
    """
    method = resolve_scan(method)
    if h0 is None:
        h0 = jnp.zeros(b.shape[:1] + b.shape[2:], b.dtype)
    return _scan(a, b, h0, method, reverse)


# ----------------------------------------------------------------------------------------------
# Initialization: HiPPO-LegS, its normal part, block-diagonal eigen-decomposition.
# ----------------------------------------------------------------------------------------------


def hippo_legs(n: int) -> np.ndarray:
    """The HiPPO-LegS matrix ``A`` (n, n): ``-sqrt(2i+1) sqrt(2j+1)`` below the diagonal,
    ``-(i+1)`` on it, zero above."""
    q = np.sqrt(1.0 + 2.0 * np.arange(n))
    return -(np.tril(q[:, None] * q[None, :], k=-1) + np.diag(np.arange(1.0, n + 1.0)))


def hippo_normal(n: int) -> np.ndarray:
    """The normal part of HiPPO-LegS, ``A + p p^T`` with ``p_i = sqrt(i + 1/2)``: it equals
    ``-I/2`` plus a skew-symmetric matrix, so its eigenvalues all have real part ``-1/2``."""
    p = np.sqrt(np.arange(n) + 0.5)
    return hippo_legs(n) + p[:, None] * p[None, :]


@functools.cache
def hippo_n_eig(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of HiPPO-N (n, n): imaginary parts (n,) in ascending order and the
    unitary eigenvectors V (n, n) complex128. The real parts are exactly -1/2.

    The skew-symmetric part ``S = HiPPO-N + I/2`` has ``-iS`` Hermitian; ``eigh`` of it gives
    real ``w`` and unitary ``V`` with ``S V = V diag(i w)``. For even n the ``w`` come in
    ``(-w, +w)`` pairs whose eigenvectors are complex conjugates.
    """
    s = hippo_normal(n) + 0.5 * np.eye(n)
    w, v = np.linalg.eigh(-1j * s)
    return w, v


def _kept_states(state_dim: int, conj_sym: bool) -> int:
    return state_dim // 2 if conj_sym else state_dim


def s5_init_arrays(state_dim: int, blocks: int, conj_sym: bool):
    """The fixed part of the S5 init: ``Lambda_re`` (Pk,), ``Lambda_im`` (Pk,), ``V`` (P, Pk)
    and ``V_inv`` (Pk, P) complex128, block-diagonal with one HiPPO-N decomposition per block.

    With ``conj_sym`` each block keeps the first half of its ascending eigenvalues (the
    negative imaginary parts); the other half are their conjugates.
    """
    size = state_dim // blocks
    w, v = hippo_n_eig(size)
    if conj_sym:
        w, v = w[: size // 2], v[:, : size // 2]
    kept = w.shape[0]
    V = np.zeros((state_dim, kept * blocks), np.complex128)
    for j in range(blocks):
        V[j * size:(j + 1) * size, j * kept:(j + 1) * kept] = v
    lam_im = np.tile(w, blocks)
    lam_re = np.full_like(lam_im, -0.5)
    return lam_re, lam_im, V, V.conj().T  # V has orthonormal columns: V^H is its left inverse


def _zero_carry(batch_size: int, state_dim: int, conj_sym: bool, bidirectional: bool) -> Carry:
    if bidirectional:
        return ()
    return jnp.zeros((batch_size, 2 * _kept_states(state_dim, conj_sym)), jnp.float32)


def _lecun_std(fan_in: int) -> float:
    return 1.0 / math.sqrt(fan_in)


# ----------------------------------------------------------------------------------------------
# Discretization: computed once per call, shared by both forms.
# ----------------------------------------------------------------------------------------------


class Discrete(NamedTuple):
    """The discretized system as real arrays, ready to iterate.

    a: (2 Pk,) ``Lambda_bar`` as ``[re | im]``. k: (2 Pk,) the input scale as ``[re | im]``, so
    ``B_bar u = k * (B~ u)``. b: (Pk, H, 2) ``B~`` as real pairs. cs: one (H, Pk, 2) ``C~`` per
    direction. scale: 2 with ``conj_sym`` (the conjugate half adds the same real part), else 1.
    d: (H,) the feed-through.

    Nothing here is a transposed or re-laid copy of a weight: on the CPU, building
    ``B_bar`` as an (H, 2 Pk) matrix cost about 0.4 ms per call (an XLA fusion of the scale,
    transpose and concatenation), which made every one-step call slower than 50 steps of the
    parallel form. Projecting first and scaling after costs one (2 Pk,) multiply.
    """

    a: Array
    k: Array
    b: Array
    cs: tuple
    scale: float
    d: Array


def discretize(lam_re, lam_im, b_pair, c_pairs, d, log_step, *, step_rescale: float,
               method: str, conj_sym: bool, clip_eigs: bool) -> Discrete:
    """Discretize ``(Lambda, B~, C~, D)`` with step ``step_rescale * exp(log_step)``.

    Shapes: lam_re, lam_im, log_step (Pk,); b_pair (Pk, H, 2); each of c_pairs (H, Pk, 2); d (H,).
    ZOH: ``Lambda_bar = exp(Lambda dt)``, ``B_bar = (Lambda_bar - 1) / Lambda * B~``.
    Bilinear: ``Lambda_bar = (1 + dt/2 Lambda) / (1 - dt/2 Lambda)``,
    ``B_bar = dt / (1 - dt/2 Lambda) * B~``.
    """
    if clip_eigs:
        lam_re = jnp.minimum(lam_re, CLIP_EIGS_MAX)
    dt = step_rescale * jnp.exp(log_step)
    if method == "zoh":
        mag = jnp.exp(lam_re * dt)
        a_re, a_im = mag * jnp.cos(lam_im * dt), mag * jnp.sin(lam_im * dt)
        # (a - 1) / Lambda = (a - 1) conj(Lambda) / |Lambda|^2
        den = lam_re * lam_re + lam_im * lam_im
        k_re, k_im = _cmul(a_re - 1.0, a_im, lam_re / den, -lam_im / den)
    else:
        q_re, q_im = 1.0 - 0.5 * dt * lam_re, -0.5 * dt * lam_im
        den = q_re * q_re + q_im * q_im
        inv_re, inv_im = q_re / den, -q_im / den  # 1 / (1 - dt/2 Lambda)
        a_re, a_im = _cmul(inv_re, inv_im, 1.0 + 0.5 * dt * lam_re, 0.5 * dt * lam_im)
        k_re, k_im = inv_re * dt, inv_im * dt
    scale = 2.0 if conj_sym else 1.0  # the conjugate half adds the same real part again
    return Discrete(jnp.concatenate([a_re, a_im]), jnp.concatenate([k_re, k_im]), b_pair,
                    tuple(c_pairs), scale, d)


_NT = (((1,), (1,)), ((), ()))  # dot_general dims for ``u @ W.T`` without a transposed copy


def project_in(sys: Discrete, u: Array) -> Array:
    """``B_bar u`` as ``[re | im]`` (N, 2 Pk) for inputs u (N, H)."""
    u_re = jax.lax.dot_general(u, sys.b[..., 0], _NT)
    u_im = jax.lax.dot_general(u, sys.b[..., 1], _NT)
    k_re, k_im = _split(sys.k)
    return jnp.concatenate(_cmul(k_re, k_im, u_re, u_im), axis=-1)


def input_matrix(sys: Discrete) -> Array:
    """``B_bar`` laid out as (H, 2 Pk), so ``u @ W`` is ``B_bar u`` as ``[re | im]``. Built once
    per parallel pass, where a plain row-major matmul over B * T rows pays for it."""
    k_re, k_im = _split(sys.k)
    bb_re, bb_im = _cmul(k_re[:, None], k_im[:, None], sys.b[..., 0], sys.b[..., 1])
    return jnp.concatenate([bb_re.T, bb_im.T], axis=1)


def output_matrix(sys: Discrete) -> Array:
    """``scale * C~`` laid out as (2 Pk * directions, H), so ``h @ W = scale * Re(C~ h)``."""
    return jnp.concatenate(
        [w for c in sys.cs for w in (sys.scale * c[..., 0].T, -sys.scale * c[..., 1].T)], axis=0)


def project_out(sys: Discrete, h: Array) -> Array:
    """``scale * Re(C~ h)`` (N, H) for states h (N, 2 Pk * directions), one C~ per direction:
    ``Re(C h) = C_re h_re - C_im h_im``."""
    pk = sys.b.shape[0]
    y = 0.0
    for j, c in enumerate(sys.cs):
        h_re, h_im = h[:, 2 * pk * j: 2 * pk * j + pk], h[:, 2 * pk * j + pk: 2 * pk * (j + 1)]
        y = y + jax.lax.dot_general(h_re, c[..., 0], _NT) - jax.lax.dot_general(h_im, c[..., 1], _NT)
    return sys.scale * y


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _check_choice(name: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        raise ValueError(f"Unknown {name} {value!r}; expected one of: {', '.join(known)}.")


def _validate_ssm(m) -> None:
    if m.d_model < 1 or m.state_dim < 1 or m.blocks < 1:
        raise ValueError(f"d_model, state_dim and blocks must be positive integers, got "
                         f"{m.d_model}, {m.state_dim} and {m.blocks}.")
    if m.state_dim % m.blocks:
        raise ValueError(f"state_dim ({m.state_dim}) must be divisible by blocks ({m.blocks}).")
    if m.conj_sym and (m.state_dim // m.blocks) % 2:
        raise ValueError(f"With conj_sym, each block's size state_dim / blocks "
                         f"({m.state_dim} / {m.blocks}) must be even so its eigenvalues pair up.")
    _check_choice("discretization", m.discretization, DISCRETIZATIONS)
    _check_choice("C_init", m.C_init, C_INITS)
    _check_choice("scan", m.scan, SCANS)
    if not (0.0 < m.dt_min <= m.dt_max):
        raise ValueError(f"Need 0 < dt_min <= dt_max, got dt_min={m.dt_min}, dt_max={m.dt_max}.")
    if not m.step_rescale > 0.0:
        raise ValueError(f"step_rescale must be positive, got {m.step_rescale}.")


def _refuse_carry_if_bidirectional(bidirectional: bool, carry) -> None:
    """A bidirectional layer carries nothing: it takes ``None``, ``()`` (its own
    ``initialize_carry``) or concrete zeros, and refuses anything else."""
    if not bidirectional or carry is None or not jax.tree_util.tree_leaves(carry):
        return
    try:
        nonzero = any(np.any(np.asarray(x) != 0) for x in jax.tree_util.tree_leaves(carry))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        raise ValueError("A bidirectional S5 layer has no state to carry and cannot check a "
                         "traced carry for zeros; pass carry=None or its initialize_carry(), "
                         "which is ().") from None
    if nonzero:
        raise ValueError("A bidirectional S5 layer sees the future, so it takes no non-zero "
                         "initial carry; pass carry=None.")


def _check_step_allowed(bidirectional: bool) -> None:
    if bidirectional:
        raise ValueError("A bidirectional S5 layer sees the future, so it has no one-step form; "
                         "use bidirectional=False for step().")


# ----------------------------------------------------------------------------------------------
# The SSM
# ----------------------------------------------------------------------------------------------


class _SSMFields(nn.Module):
    """The SSM's hyper-parameters, declared once for :class:`S5SSM` and :class:`S5Block`."""

    d_model: int
    state_dim: int = 64
    blocks: int = 1
    conj_sym: bool = True
    discretization: str = "zoh"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    step_rescale: float = 1.0
    clip_eigs: bool = False
    C_init: str = "trunc_standard_normal"
    bidirectional: bool = False
    scan: str = "auto"

    def ssm_fields(self) -> dict:
        """These fields' values, to build an :class:`S5SSM` with them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(_SSMFields)
                if f.name not in ("parent", "name")}


class S5SSM(_SSMFields):
    """The S5 state-space map ``(B, T, H) -> (B, T, H)``, no norm, gate or residual.

    Parameters (float32, ``Pk`` = kept states): ``Lambda_re``, ``Lambda_im`` (Pk,);
    ``B`` (Pk, H, 2) = ``V^-1 B`` as (re, im); ``C`` (H, Pk, 2) = ``C V`` as (re, im) (and
    ``C_bwd`` when bidirectional); ``D`` (H,); ``log_step`` (Pk,).

    ``C_init``: ``"trunc_standard_normal"`` draws a complex ``C`` (H, P) whose real and imaginary
    parts are truncated normals (+-2 std) with std ``1/sqrt(P)``, then uses ``C V``;
    ``"lecun_normal"`` draws a real ``C`` (H, P) with std ``1/sqrt(P)``, then uses ``C V``;
    ``"complex_normal"`` draws ``C~`` (H, Pk) directly with std ``sqrt(1/2)`` per part.
    ``B`` is a real lecun-normal (P, H) mapped by ``V^-1``; ``D`` is standard normal.

    ``bidirectional`` (offline only) adds a backward recurrence with the same ``Lambda_bar`` and
    ``B_bar`` run from the end, read out by its own ``C_bwd``; its output is added to the
    forward one (equivalently: the states are concatenated and read by ``[C, C_bwd]``). Such a
    layer has no one-step form and nothing to carry: its carry is ``()`` (``None`` and concrete
    zeros are accepted too; anything else is a ValueError).

    ``scan`` picks how the parallel form iterates: ``"associative"``
    (``jax.lax.associative_scan``), ``"sequential"`` (``jax.lax.scan``) or ``"auto"`` (the
    default: sequential on the CPU, associative on an accelerator; see :func:`resolve_scan`).
    All give the same numbers to float rounding.
    """

    def __post_init__(self):
        _validate_ssm(self)
        super().__post_init__()

    @property
    def kept_states(self) -> int:
        """Pk: the number of complex states carried."""
        return _kept_states(self.state_dim, self.conj_sym)

    def setup(self):
        H, P = self.d_model, self.state_dim
        lam_re, lam_im, V, _ = s5_init_arrays(P, self.blocks, self.conj_sym)
        Pk = lam_re.shape[0]
        self.Lambda_re = self.param("Lambda_re", lambda _: jnp.asarray(lam_re, jnp.float32))
        self.Lambda_im = self.param("Lambda_im", lambda _: jnp.asarray(lam_im, jnp.float32))

        prec = jax.lax.Precision.HIGHEST
        v_re, v_im = jnp.asarray(V.real, jnp.float32), jnp.asarray(V.imag, jnp.float32)

        def init_b(key):  # V^-1 b = V^H b for a real lecun-normal b (P, H)
            b = jax.random.normal(key, (P, H), jnp.float32) * _lecun_std(H)
            return jnp.stack([jnp.dot(v_re.T, b, precision=prec),
                              -jnp.dot(v_im.T, b, precision=prec)], axis=-1)

        def init_c(key):
            if self.C_init == "complex_normal":
                return jax.random.normal(key, (H, Pk, 2), jnp.float32) * math.sqrt(0.5)
            if self.C_init == "trunc_standard_normal":
                c = jax.random.truncated_normal(key, -2.0, 2.0, (H, P, 2), jnp.float32)
                # A standard normal truncated at +-2 has std 0.8796; rescale to 1/sqrt(P).
                c = c * (_lecun_std(P) / 0.87962566103423978)
                c_re, c_im = c[..., 0], c[..., 1]
            else:
                c_re = jax.random.normal(key, (H, P), jnp.float32) * _lecun_std(P)
                c_im = jnp.zeros_like(c_re)
            cv_re = jnp.dot(c_re, v_re, precision=prec) - jnp.dot(c_im, v_im, precision=prec)
            cv_im = jnp.dot(c_re, v_im, precision=prec) + jnp.dot(c_im, v_re, precision=prec)
            return jnp.stack([cv_re, cv_im], axis=-1)

        self.B = self.param("B", init_b)
        self.C = self.param("C", init_c)
        if self.bidirectional:
            self.C_bwd = self.param("C_bwd", init_c)
        self.D = self.param("D", nn.initializers.normal(1.0), (H,))
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        self.log_step = self.param(
            "log_step", lambda k: jax.random.uniform(k, (Pk,), jnp.float32, lo, hi))

    def discretized(self) -> Discrete:
        """The discrete system both forms iterate (see :func:`discretize`)."""
        cs = (self.C, self.C_bwd) if self.bidirectional else (self.C,)
        return discretize(self.Lambda_re, self.Lambda_im, self.B, cs, self.D, self.log_step,
                          step_rescale=self.step_rescale, method=self.discretization,
                          conj_sym=self.conj_sym, clip_eigs=self.clip_eigs)

    def initialize_carry(self, batch_size: int) -> Carry:
        """Zeros, float32 (batch_size, 2 Pk); ``()`` when bidirectional. Needs no params."""
        return _zero_carry(batch_size, self.state_dim, self.conj_sym, self.bidirectional)

    def __call__(self, x, carry: Carry | None = None) -> tuple[Carry, Array]:
        """Parallel form: x (B, T, H) -> (last carry (B, 2 Pk), y (B, T, H)); carry None = zeros."""
        _refuse_carry_if_bidirectional(self.bidirectional, carry)
        sys = self.discretized()
        batch, length, feat = x.shape
        # Plain 2-D matmuls over B * T rows keep XLA's layouts row-major (an einsum to
        # time-major was 2x slower); ``step`` projects without building these matrices
        # (see :class:`Discrete`).
        bu = (x.reshape(batch * length, feat) @ input_matrix(sys)).reshape(batch, length, -1)
        if self.bidirectional:
            states = jnp.concatenate(
                [linear_scan(sys.a, bu, None, method=self.scan),
                 linear_scan(sys.a, bu, None, method=self.scan, reverse=True)], axis=-1)
            last = ()
        else:
            states = linear_scan(sys.a, bu, carry, method=self.scan)
            last = states[:, -1]
        y = (states.reshape(batch * length, -1) @ output_matrix(sys)).reshape(batch, length, feat)
        return last, y + x * sys.d

    def step(self, carry: Carry, x_t) -> tuple[Carry, Array]:
        """One-step form: carry (B, 2 Pk), x_t (B, H) -> (carry, y_t (B, H))."""
        _check_step_allowed(self.bidirectional)
        sys = self.discretized()
        h = _recur(sys.a, carry, project_in(sys, x_t))
        return h, project_out(sys, h) + x_t * sys.d


# ----------------------------------------------------------------------------------------------
# The block
# ----------------------------------------------------------------------------------------------


class S5Block(_SSMFields):
    """Pre-norm S5 block: ``x + Dropout(GLU(GELU(SSM(Norm(x)))))``.

    Shapes: ``__call__`` x (B, T, H) -> (carry, y (B, T, H)); ``step`` x_t (B, H) ->
    (carry, y_t (B, H)); a carry is float32 (B, 2 Pk), the state's real parts then its
    imaginary parts, with ``Pk = state_dim // 2`` when ``conj_sym`` else ``state_dim`` (``()``
    for a bidirectional block, which has no one-step form).

    ``norm``: ``"layer"`` (LayerNorm over H) or ``"none"``. There is no BatchNorm: its batch
    statistics would make one step differ from the same step inside a sequence.

    ``glu``, with ``s`` the SSM output and ``g = GELU(s)``:

    * ``"full_glu"``: ``Dense_v(g) * sigmoid(Dense_g(g))``;
    * ``"half_glu1"``: ``g * sigmoid(Dense_g(g))``;
    * ``"half_glu2"``: ``s * sigmoid(Dense_g(g))`` (GELU only on the gate's input);
    * ``"gelu"``: ``g``, no gate.

    ``dropout``: one Bernoulli mask per (batch row, feature), shared by every time step (rng
    name ``"dropout"``), applied only when ``train=True``. ``step`` draws the same mask as
    ``__call__`` given the same rng, so the two forms agree in training too.

    ``conv_width`` > 1 puts a causal depthwise convolution over the last ``conv_width`` frames
    (as Mamba has) between the norm and the SSM, initialized to the identity (the newest
    frame's tap 1, the others 0): it lets the block read velocities directly. Its carry is then
    ``(conv_state (B, conv_width - 1, H), ssm carry)``, the last inputs, oldest first.

    ``scan`` picks the parallel form's iteration (see :class:`S5SSM`). The other fields are
    :class:`S5SSM`'s.
    """

    glu: str = "half_glu1"
    norm: str = "layer"
    dropout: float = 0.0
    conv_width: int = 0

    def __post_init__(self):
        _validate_ssm(self)
        _check_choice("glu", self.glu, GLUS)
        _check_choice("norm", self.norm, NORMS)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        super().__post_init__()

    def setup(self):
        self.ssm = S5SSM(**self.ssm_fields())
        if self.norm == "layer":
            self.layer_norm = nn.LayerNorm()
        if self.glu == "full_glu":
            self.glu_value = nn.Dense(self.d_model)
        if self.glu != "gelu":
            self.glu_gate = nn.Dense(self.d_model)
        if self.conv_width > 1:
            w = self.conv_width
            self.conv_kernel = self.param(
                "conv_kernel", lambda key, shape: jnp.zeros(shape).at[-1].set(1.0),
                (w, self.d_model))
            self.conv_bias = self.param("conv_bias", nn.initializers.zeros, (self.d_model,))

    def initialize_carry(self, batch_size: int) -> Carry:
        """Zeros, float32 (batch_size, 2 Pk); ``()`` when bidirectional; with a convolution,
        ``(zeros (batch_size, conv_width - 1, H), that)``. Needs no params."""
        ssm = _zero_carry(batch_size, self.state_dim, self.conj_sym, self.bidirectional)
        if self.conv_width > 1:
            return (jnp.zeros((batch_size, self.conv_width - 1, self.d_model), jnp.float32), ssm)
        return ssm

    def _pre(self, x):
        return self.layer_norm(x) if self.norm == "layer" else x

    def _conv(self, carry, u):
        """The causal convolution of u (B, T, H) after the carry's last inputs: (conv_state,
        ssm carry, u convolved); the identity without one."""
        if self.conv_width <= 1:
            return None, carry, u
        from ncssm_policies.layers.mamba import causal_conv

        if carry is None:
            carry = self.initialize_carry(u.shape[0])
        conv_state, ssm = carry
        xp = jnp.concatenate([conv_state.astype(u.dtype), u], axis=1)
        return xp[:, -(self.conv_width - 1):], ssm, causal_conv(xp, self.conv_kernel,
                                                                 self.conv_bias)

    def _post(self, s, train: bool, time_axis: bool):
        g = nn.gelu(s)
        if self.glu == "full_glu":
            z = self.glu_value(g) * jax.nn.sigmoid(self.glu_gate(g))
        elif self.glu == "half_glu1":
            z = g * jax.nn.sigmoid(self.glu_gate(g))
        elif self.glu == "half_glu2":
            z = s * jax.nn.sigmoid(self.glu_gate(g))
        else:
            z = g
        if train and self.dropout > 0.0:
            keep = 1.0 - self.dropout
            mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (z.shape[0], z.shape[-1]))
            if time_axis:
                mask = mask[:, None, :]
            z = jnp.where(mask, z / keep, 0.0)
        return z

    def __call__(self, x, carry: Carry | None = None, train: bool = False):
        """Parallel form: x (B, T, H) -> (last carry, y (B, T, H)); carry None means zeros."""
        conv_state, carry, u = self._conv(carry, self._pre(x))
        carry, s = self.ssm(u, carry)
        carry = carry if conv_state is None else (conv_state, carry)
        return carry, x + self._post(s, train, time_axis=True)

    def step(self, carry: Carry, x_t, train: bool = False):
        """One-step form: carry, x_t (B, H) -> (carry, y_t (B, H))."""
        _check_step_allowed(self.bidirectional)
        conv_state, carry, u = self._conv(carry, self._pre(x_t)[:, None])
        carry, s = self.ssm.step(carry, u[:, 0])
        carry = carry if conv_state is None else (conv_state, carry)
        return carry, x_t + self._post(s, train, time_axis=False)
