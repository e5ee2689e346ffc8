"""Mamba (Gu & Dao 2023): a selective state-space block with a parallel form and a one-step form.

The recurrence, per channel ``d`` and state index ``n``::

    h_t = exp(dt_t A) * h_{t-1} + dt_t B_t x_t          h: (B, D, N)
    y_t = C_t . h_t + D_skip x_t                        y: (B, D)

``selective_scan`` runs it over a whole sequence with one signature for every way of iterating
(the ``method`` argument), taking ``h0`` and returning ``h_last``. Both methods cut the sequence
into chunks of ``chunk`` steps and carry ``h`` (B, D, N) across chunks with ``lax.scan``; the
chunk body is rematerialized in the backward pass, so neither the forward nor the backward pass
ever holds the (B, L, D, N) tensor of the whole sequence, only one chunk of it (B, chunk, D, N)
plus the chunk-boundary states (B, L / chunk, D, N). Inside a chunk:

- ``"sequential"``: a ``lax.scan`` over the steps with a (B, D, N) carry, y_t = C_t . h_t inside;
- ``"chunked"``: an associative scan over the (B, chunk, D, N) chunk.

``MambaBlock.step`` uses the same step function (``ssm_step``) and the same causal convolution as
the parallel form, so the two differ only in how they iterate. ``benchmarks/mamba_memory.py``
compares the peak temporary memory against a scan over the whole (B, L, D, N) tensor.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# Measured on this project's CPU machine (2 cores shared with other jobs, load ~3; jax 0.9.2,
# float32), selective_scan alone, jitted, at B 16, L 490, D 512, N 16, chunk 64; median of 5 to 7
# runs after compilation, the range over three such measurements:
#
#     method        forward          forward+backward (value_and_grad of a sum)
#     sequential    159 - 215 ms     1.08 - 1.95 s
#     chunked       674 - 1391 ms    2.17 - 4.36 s
#
# The associative scan does several times the arithmetic of the step loop, and two CPU cores gain
# nothing from its short depth, so "sequential" is the default ("chunked" is the one to try on an
# accelerator). Unrolling the step loop (2, 4, 8) and precomputing exp(dt A) per chunk were slower.
# Chunk 16 - 490 changed the sequential timings by less than the noise.
DEFAULT_SCAN = "sequential"


class MambaCarry(NamedTuple):
    """The recurrent state of a ``MambaBlock``.

    conv_state: (B, d_conv - 1, d_inner), the last ``d_conv - 1`` conv inputs, oldest first.
    ssm_state:  (B, d_inner, d_state), the SSM state ``h``.
    """

    conv_state: Array
    ssm_state: Array


# --------------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------------


def ssm_step(
    h: Array, x_t: Array, dt_t: Array, A: Array, B_t: Array, C_t: Array
) -> tuple[Array, Array]:
    """One step of the selective SSM, without the D skip.

    h (B, D, N), x_t (B, D), dt_t (B, D) (already positive), A (D, N), B_t (B, N), C_t (B, N)
    -> (h_t (B, D, N), y_t (B, D)).
    """
    dA = jnp.exp(dt_t[..., None] * A)
    dBx = (dt_t * x_t)[..., None] * B_t[..., None, :]
    h = dA * h + dBx
    y = jnp.einsum("bdn,bn->bd", h, C_t)
    return h, y


def _chunk_sequential(h, x, dt, B, C, A):
    """One time-major chunk, step by step: x, dt (c, B, D); B, C (c, B, N); h (B, D, N)."""

    def body(h, inp):
        x_t, dt_t, B_t, C_t = inp
        return ssm_step(h, x_t, dt_t, A, B_t, C_t)

    return lax.scan(body, h, (x, dt, B, C))


def _combine(left, right):
    """Compose two affine maps h -> a h + b (left first)."""
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def _chunk_associative(h, x, dt, B, C, A):
    """One time-major chunk by an associative scan over its (c, B, D, N) elements."""
    a = jnp.exp(dt[..., None] * A)  # (c, B, D, N)
    b = (dt * x)[..., None] * B[..., None, :]
    b = jnp.concatenate([b[:1] + a[:1] * h[None], b[1:]], axis=0)  # fold h0 into the first step
    _, hs = lax.associative_scan(_combine, (a, b), axis=0)
    y = jnp.einsum("cbdn,cbn->cbd", hs, C)
    return hs[-1], y


SCAN_METHODS: dict[str, Callable] = {
    "sequential": _chunk_sequential,
    "chunked": _chunk_associative,
}


def selective_scan(
    x: Array,
    dt: Array,
    A: Array,
    B: Array,
    C: Array,
    D: Array,
    h0: Array,
    method: str = DEFAULT_SCAN,
    chunk: int = 64,
) -> tuple[Array, Array]:
    """Run the selective SSM over a sequence, starting from ``h0``.

    Args:
      x: (B, L, D) inputs.
      dt: (B, L, D) positive step sizes (softplus already applied).
      A: (D, N) the (negative) state matrix diagonal.
      B, C: (B, L, N) input-dependent input and output projections.
      D: (D,) skip weights.
      h0: (B, D, N) state before the first step.
      method: one of ``SCAN_METHODS`` ("sequential", "chunked"); how a chunk is iterated.
      chunk: steps per chunk; the most of the (B, L, D, N) state tensor held at once.

    Returns:
      y (B, L, D) and h_last (B, D, N), the state after the last step.
    """
    if method not in SCAN_METHODS:
        raise ValueError(f"Unknown scan method {method!r}; expected one of {sorted(SCAN_METHODS)}.")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of steps, got {chunk}.")
    batch, length, d = x.shape
    if length == 0:
        return jnp.zeros_like(x), h0
    c = min(chunk, length)
    n_chunks = -(-length // c)
    pad = n_chunks * c - length

    def to_chunks(a):  # (B, L, ...) -> (n_chunks, c, B, ...), time-major
        # Padded steps have dt = 0, so exp(0 * A) = 1 and dt x B = 0: they leave h unchanged.
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        a = jnp.swapaxes(a, 0, 1)
        return a.reshape((n_chunks, c) + a.shape[1:])

    # Rematerialized: the backward pass keeps only each chunk's inputs and starting state, and
    # recomputes the chunk's (c, B, D, N) states when it gets there.
    kernel = jax.checkpoint(SCAN_METHODS[method], prevent_cse=False)

    def body(h, inp):
        return kernel(h, *inp, A)

    h_last, ys = lax.scan(body, h0, tuple(to_chunks(a) for a in (x, dt, B, C)))
    y = jnp.swapaxes(ys.reshape((n_chunks * c, batch, d))[:length], 0, 1)
    return y + D * x, h_last


# --------------------------------------------------------------------------------------------
# The block
# --------------------------------------------------------------------------------------------


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dt_bias_init(dt_min: float, dt_max: float):
    """Inverse softplus of dt drawn log-uniformly in [dt_min, dt_max]."""

    def init(key, shape, dtype=jnp.float32):
        u = jax.random.uniform(key, shape, jnp.float32)
        dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)  # softplus^-1(dt) = log(expm1(dt))

    return init


def _a_log_init(key, shape, dtype=jnp.float32):
    """S4D-real: A = -[1, ..., N] for every channel, stored as log([1, ..., N])."""
    d_inner, n = shape
    return jnp.broadcast_to(jnp.log(jnp.arange(1, n + 1, dtype=dtype)), (d_inner, n))


def causal_conv(xp: Array, kernel: Array, bias: Array) -> Array:
    """Depthwise causal convolution over time.

    xp (B, T + K - 1, D): the K - 1 previous inputs followed by the T new ones; kernel (K, D);
    bias (D,) -> (B, T, D), where out[t] = bias + sum_k kernel[k] * xp[t + k].
    """
    k = kernel.shape[0]
    t = xp.shape[1] - (k - 1)
    out = bias + xp[:, 0:t] * kernel[0]
    for i in range(1, k):
        out = out + xp[:, i : i + t] * kernel[i]
    return out


_NORMS = ("layer", "rms", "none")


class MambaBlock(nn.Module):
    """Residual Mamba block: x + out_proj(SSM(SiLU(conv(u))) * SiLU(z)), (u, z) = in_proj(norm(x)).

    Shapes: x (B, T, d_model) -> y (B, T, d_model); d_inner = expand * d_model; the carry is a
    ``MambaCarry`` of conv_state (B, d_conv - 1, d_inner) and ssm_state (B, d_inner, d_state).

    Attributes:
      d_model: width of the input and output.
      d_state: N, the SSM state size per channel.
      d_conv: width of the causal depthwise convolution.
      expand: d_inner / d_model.
      dt_rank: rank of the Δ projection; None means ceil(d_model / 16).
      dt_min, dt_max: range of the log-uniform draw of Δ at initialization.
      norm: pre-norm, "layer" (LayerNorm), "rms" (RMSNorm) or "none".
      scan: how ``__call__`` iterates, a ``selective_scan`` method ("sequential" or "chunked").
      chunk: steps per scan chunk (the most of the (B, T, d_inner, d_state) states held at once).
      dropout: rate on the block output before the residual; rng "dropout", only when train=True.
    """

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    norm: str = "layer"
    scan: str = DEFAULT_SCAN
    chunk: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"MambaBlock.{name} must be a positive integer, got {v!r}.")

        for name in ("d_model", "d_state", "d_conv", "expand", "chunk"):
            positive_int(name)
        if self.dt_rank is not None:
            positive_int("dt_rank")
        if not 0.0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"MambaBlock needs 0 < dt_min <= dt_max, "
                f"got dt_min={self.dt_min!r}, dt_max={self.dt_max!r}."
            )
        if self.norm not in _NORMS:
            raise ValueError(
                f"Unknown MambaBlock.norm {self.norm!r}; expected one of {list(_NORMS)}."
            )
        if self.scan not in SCAN_METHODS:
            raise ValueError(
                f"Unknown MambaBlock.scan {self.scan!r}; expected one of {sorted(SCAN_METHODS)}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MambaBlock.dropout must be in [0, 1), got {self.dropout!r}.")
        super().__post_init__()

    # ---- sizes ---------------------------------------------------------------------------

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        """The Δ projection rank actually used."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)

    # ---- parameters ----------------------------------------------------------------------

    def setup(self):
        di, n, r = self.d_inner, self.d_state, self.rank
        if self.norm == "layer":
            self.norm_layer = nn.LayerNorm(name="norm")
        elif self.norm == "rms":
            self.norm_layer = nn.RMSNorm(name="norm")
        self.in_proj = nn.Dense(2 * di, use_bias=False)
        bound = 1.0 / math.sqrt(self.d_conv)  # fan-in of a depthwise filter is d_conv
        self.conv_kernel = self.param("conv_kernel", _uniform(bound), (self.d_conv, di))
        self.conv_bias = self.param("conv_bias", _uniform(bound), (di,))
        self.x_proj = nn.Dense(r + 2 * n, use_bias=False)
        self.dt_proj = nn.Dense(
            di, kernel_init=_uniform(r**-0.5), bias_init=_dt_bias_init(self.dt_min, self.dt_max)
        )
        self.A_log = self.param("A_log", _a_log_init, (di, n))
        self.D = self.param("D", nn.initializers.ones, (di,))
        self.out_proj = nn.Dense(self.d_model, use_bias=False)
        self.drop = nn.Dropout(self.dropout)

    # ---- the carry -----------------------------------------------------------------------

    @nn.nowrap
    def initialize_carry(self, batch_size: int) -> MambaCarry:
        """Zeros: conv_state (B, d_conv - 1, d_inner), ssm_state (B, d_inner, d_state).

        Needs no params: ``module.apply({}, B, method="initialize_carry")`` works, and so does
        ``module.initialize_carry(B)`` on an unbound module.
        """
        return MambaCarry(
            jnp.zeros((batch_size, self.d_conv - 1, self.d_inner), jnp.float32),
            jnp.zeros((batch_size, self.d_inner, self.d_state), jnp.float32),
        )

    @nn.nowrap
    def _check(self, x: Array, carry: MambaCarry | None, time_axis: bool) -> MambaCarry:
        want = "(B, T, d_model)" if time_axis else "(B, d_model)"
        if x.ndim != (3 if time_axis else 2) or x.shape[-1] != self.d_model:
            raise ValueError(
                f"MambaBlock expected x of shape {want} with d_model={self.d_model}, got {x.shape}."
            )
        empty = self.initialize_carry(x.shape[0])
        if carry is None:
            return empty
        conv_state, ssm_state = carry
        for got, ref, name in (
            (conv_state, empty.conv_state, "conv_state"),
            (ssm_state, empty.ssm_state, "ssm_state"),
        ):
            if got.shape != ref.shape:
                raise ValueError(
                    f"MambaBlock carry.{name} must have shape {ref.shape}, got {got.shape}."
                )
        return MambaCarry(conv_state, ssm_state)

    # ---- shared pieces of both forms -----------------------------------------------------

    def _in(self, x: Array) -> tuple[Array, Array]:
        """x (..., d_model) -> conv input and gate z, each (..., d_inner)."""
        u = x if self.norm == "none" else self.norm_layer(x)
        xz = self.in_proj(u)
        return jnp.split(xz, 2, axis=-1)

    def _ssm_inputs(self, xc: Array) -> tuple[Array, Array, Array]:
        """Conv output (..., d_inner) -> dt (..., d_inner) (positive), B and C (..., d_state)."""
        r, n = self.rank, self.d_state
        proj = self.x_proj(xc)
        dt_low, B, C = proj[..., :r], proj[..., r : r + n], proj[..., r + n :]
        dt = jax.nn.softplus(self.dt_proj(dt_low))
        return dt, B, C

    def _out(self, x: Array, y: Array, z: Array, train: bool) -> Array:
        y = self.out_proj(y * jax.nn.silu(z))
        return x + self.drop(y, deterministic=not train)

    def _selective_scan(self, x, dt, A, B, C, D, h0):
        """The parallel form's scan; a subclass may swap it (as the memory benchmark does)."""
        return selective_scan(x, dt, A, B, C, D, h0, method=self.scan, chunk=self.chunk)

    # ---- the two forms -------------------------------------------------------------------

    def __call__(
        self, x: Array, carry: MambaCarry | None = None, train: bool = False
    ) -> tuple[MambaCarry, Array]:
        """Parallel form: x (B, T, d_model), carry (None: zeros) -> (carry after the last step, y).

        y has the shape of x; the carry returned continues the sequence in ``__call__`` or ``step``.
        """
        conv_state, h0 = self._check(x, carry, time_axis=True)
        T = x.shape[1]
        xi, z = self._in(x)
        xp = jnp.concatenate([conv_state.astype(xi.dtype), xi], axis=1)  # (B, K - 1 + T, d_inner)
        xc = jax.nn.silu(causal_conv(xp, self.conv_kernel, self.conv_bias))
        dt, B, C = self._ssm_inputs(xc)
        A = -jnp.exp(self.A_log)
        y, h_last = self._selective_scan(xc, dt, A, B, C, self.D, h0)
        return MambaCarry(xp[:, T:], h_last), self._out(x, y, z, train)

    def step(self, carry: MambaCarry, x_t: Array, train: bool = False) -> tuple[MambaCarry, Array]:
        """One-step form: carry, x_t (B, d_model) -> (next carry, y_t (B, d_model))."""
        conv_state, h = self._check(x_t, carry, time_axis=False)
        xi, z = self._in(x_t)
        # The conv's window: the d_conv - 1 previous inputs and this one, (B, d_conv, d_inner).
        window = jnp.concatenate([conv_state.astype(xi.dtype), xi[:, None]], axis=1)
        xc = jax.nn.silu(causal_conv(window, self.conv_kernel, self.conv_bias)[:, 0])
        dt, B, C = self._ssm_inputs(xc)
        A = -jnp.exp(self.A_log)
        h, y = ssm_step(h, xc, dt, A, B, C)
        y = y + self.D * xc
        return MambaCarry(window[:, 1:], h), self._out(x_t, y, z, train)
