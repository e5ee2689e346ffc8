"""``GRUPolicy``: Dense encoder -> ``n_layers`` GRU layers -> Dense decoder.

It follows the ncssm policy contract (see ``ncssm_policies.hookspecs``): ``__call__`` and
``forward`` run the parallel form, a ``lax.scan`` over time; ``step`` runs one frame with the same
cells and the same parameters, so stepping through a sequence gives the parallel form's output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Carry = tuple[jax.Array, ...]  # one (B, d_model) hidden state per GRU layer


def _run_cell(cell: nn.GRUCell, h: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
    return cell(h, x_t)


# The parallel form: one cell scanned over axis 1 (time) of x; the parameters are shared by every
# time step (broadcast), so they are the cell's own, the same ones ``step`` calls.
_scan_cell = nn.scan(_run_cell, variable_broadcast="params", split_rngs={"params": False},
                     in_axes=1, out_axes=1)


class GRUPolicy(nn.Module):
    """A recurrent baseline: ``(B, T, D_in) -> (B, T, out_dim)``."""

    out_dim: int
    d_model: int = 128
    n_layers: int = 2
    dropout: float = 0.0  # on each GRU layer's input, only when train=True (rng "dropout")

    def setup(self):
        if self.n_layers < 1:
            raise ValueError(f"GRUPolicy needs n_layers >= 1, got {self.n_layers}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GRUPolicy needs dropout in [0, 1), got {self.dropout}.")
        self.encoder = nn.Dense(self.d_model)
        self.drop = nn.Dropout(self.dropout)
        self.cells = [nn.GRUCell(features=self.d_model) for _ in range(self.n_layers)]
        self.decoder = nn.Dense(self.out_dim)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The parallel form from a fresh carry: ``x`` (B, T, D_in) -> ``y`` (B, T, out_dim)."""
        _, y = self.forward(self.initialize_carry(x.shape[0]), x, train=train)
        return y

    def forward(self, carry: Carry, x: jax.Array, train: bool = False) -> tuple[Carry, jax.Array]:
        """The parallel form with a carry in and out, so chunks of a sequence chain."""
        h = self.encoder(x)
        new_carry = []
        for cell, c in zip(self.cells, carry, strict=True):
            c, h = _scan_cell(cell, c, self.drop(h, deterministic=not train))
            new_carry.append(c)
        return tuple(new_carry), self.decoder(h)

    def step(self, carry: Carry, x_t: jax.Array) -> tuple[Carry, jax.Array]:
        """The one-step form: ``x_t`` (B, D_in) -> ``y_t`` (B, out_dim)."""
        h = self.encoder(x_t)
        new_carry = []
        for cell, c in zip(self.cells, carry, strict=True):
            c, h = cell(c, h)
            new_carry.append(c)
        return tuple(new_carry), self.decoder(h)

    def initialize_carry(self, batch_size: int) -> Carry:
        """Zeros, one ``(batch_size, d_model)`` array per layer; needs no parameters."""
        return tuple(jnp.zeros((batch_size, self.d_model), jnp.float32)
                     for _ in range(self.n_layers))
