"""Policies built from sequence layers, one family per kind of mode.

Every policy follows the contract in :mod:`ncssm_policies.hookspecs`: ``__call__(x, train)``
over ``(B, T, D)``, ``forward(carry, x, train) -> (carry, y)``, ``initialize_carry(B)`` and
``step(carry, x_t) -> (carry, y_t)``, the one-step form equal to the parallel form.

- :class:`SequencePolicy` (family ``"sequence"``: one input part, e.g. ``state_action``):
  an encoder Dense, ``n_layers`` residual blocks of a sequence layer (``"s5"`` or
  ``"mamba"``), a decoder Dense.
- :class:`Controller` (family ``"controller"``: ``state_intention_controller``): a sequence
  model predicts the intention from ``qpos_local``; a decoder MLP maps (intention, obs) to
  the action. Its parameters sit under ``"decoder"``, so training can freeze them (an optax
  label) after loading.
- :class:`SyllableController` (family ``"syllable"``: ``syllable_state_intention``): a
  learned embedding of the syllable joins ``qpos_local`` as the sequence model's input.

:func:`build_policy` wraps any registered policy, built-in or from a plugin, in the family
its mode names (:attr:`ncssm_data.modes.Mode.family`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ncssm_data.modes import get_mode
from ncssm_policies.hookspecs import PolicySpec


def _layer_class(name: str):
    if name == "s5":
        from ncssm_policies.layers.s5 import S5Block

        return S5Block
    if name == "mamba":
        from ncssm_policies.layers.mamba import MambaBlock

        return MambaBlock
    raise ValueError(f"Unknown sequence layer {name!r}; expected 's5' or 'mamba'.")


class SequencePolicy(nn.Module):
    """Dense(d_model) -> n_layers x layer block -> Dense(out_dim), over (B, T, D_in).

    ``layer_kwargs`` go to every block (e.g. ``state_dim`` for S5, ``d_state`` for Mamba). The
    carry is a tuple with one entry per block.

    ``in_frames`` K > 1 lets the encoder read the last K frames: the encoded frame h_t
    (d_model) gets ``Dense(concat(h_t - h_{t-1}, ..., h_{t-K+2} - h_{t-K+1}))`` added (zero
    at init, frames before the first are zeros), the finite differences a linear model on K
    frames reads velocities and accelerations from. The carry is then ``(last K - 1 encoded
    frames (B, K - 1, d_model), block carries)``.
    """

    out_dim: int
    layer: str = "s5"
    d_model: int = 128
    n_layers: int = 4
    layer_kwargs: Any = None
    in_frames: int = 1

    def setup(self):
        if self.n_layers < 1 or self.d_model < 1 or self.out_dim < 1:
            raise ValueError(
                f"out_dim, d_model and n_layers must be >= 1, got {self.out_dim}, {self.d_model}, "
                f"{self.n_layers}."
            )
        block = _layer_class(self.layer)
        kwargs = dict(self.layer_kwargs or {})
        if self.in_frames < 1:
            raise ValueError(f"in_frames must be >= 1, got {self.in_frames}.")
        self.encoder = nn.Dense(self.d_model)
        if self.in_frames > 1:
            self.frames = nn.Dense(self.d_model, kernel_init=nn.initializers.zeros)
        self.blocks = [block(d_model=self.d_model, **kwargs) for _ in range(self.n_layers)]
        self.decoder = nn.Dense(self.out_dim)

    def __call__(self, x, train: bool = False):
        return self.forward(self.initialize_carry(x.shape[0]), x, train)[1]

    def _encode(self, carry, x):
        """Encoded frames (B, T, d_model) and the block carries, with the frame buffer
        advanced when ``in_frames`` > 1."""
        h = self.encoder(x)
        if self.in_frames == 1:
            return None, carry, h
        buf, carry = carry
        K, T = self.in_frames, h.shape[1]
        hp = jnp.concatenate([buf.astype(h.dtype), h], axis=1)  # (B, K - 1 + T, d_model)
        diffs = [hp[:, K - 1 - k: K - 1 - k + T] - hp[:, K - 2 - k: K - 2 - k + T]
                 for k in range(K - 1)]
        return hp[:, -(K - 1):], carry, h + self.frames(jnp.concatenate(diffs, axis=-1))

    def forward(self, carry, x, train: bool = False):
        buf, carry, h = self._encode(carry, x)
        new = []
        for blk, c in zip(self.blocks, carry):
            c, h = blk(h, c, train=train)
            new.append(c)
        return (tuple(new) if buf is None else (buf, tuple(new))), self.decoder(h)

    def initialize_carry(self, batch_size: int):
        block = _layer_class(self.layer)
        kwargs = dict(self.layer_kwargs or {})
        blocks = tuple(
            block(d_model=self.d_model, **kwargs, parent=None).initialize_carry(batch_size)
            for _ in range(self.n_layers)
        )
        if self.in_frames == 1:
            return blocks
        return jnp.zeros((batch_size, self.in_frames - 1, self.d_model), jnp.float32), blocks

    def step(self, carry, x_t):
        buf, carry, h = self._encode(carry, x_t[:, None])
        h = h[:, 0]
        new = []
        for blk, c in zip(self.blocks, carry):
            c, h = blk.step(c, h)
            new.append(c)
        return (tuple(new) if buf is None else (buf, tuple(new))), self.decoder(h)


class Controller(nn.Module):
    """``state_intention_controller``: x = (qpos_local (B, T, Dq), obs (B, T, Do)) -> action.

    ``seq`` (any registered policy module with ``out_dim = int_dim``) predicts the intention
    from qpos_local; the decoder MLP (``decoder_hidden`` ELU layers, then Dense(out_dim)) maps
    the concatenated (intention, obs) to the action. Trained jointly by default; to load a
    decoder frozen, restore its params under ``"decoder"`` and give them a zero update.
    """

    seq: nn.Module
    out_dim: int
    decoder_hidden: Sequence[int] = (256, 256)

    def setup(self):
        self.decoder = _MLP(tuple(self.decoder_hidden), self.out_dim)

    def __call__(self, x, train: bool = False):
        return self.forward(self.initialize_carry(x[0].shape[0]), x, train)[1]

    def forward(self, carry, x, train: bool = False):
        qpos, obs = x
        carry, intention = self.seq.forward(carry, qpos, train)
        return carry, self.decoder(jnp.concatenate([intention, obs], axis=-1))

    def initialize_carry(self, batch_size: int):
        return self.seq.initialize_carry(batch_size)

    def step(self, carry, x_t):
        qpos, obs = x_t
        carry, intention = self.seq.step(carry, qpos)
        return carry, self.decoder(jnp.concatenate([intention, obs], axis=-1))


class SyllableController(nn.Module):
    """``syllable_state_intention``: x = (one-hot syllables (B, T, S), qpos_local (B, T, Dq)).

    The syllable's ``embed_dim`` embedding (a bias-free Dense of the one-hot, i.e. a lookup
    table) is concatenated with qpos_local and fed to ``seq`` (out_dim = action dim).
    """

    seq: nn.Module
    embed_dim: int = 16

    def setup(self):
        self.embed = nn.Dense(self.embed_dim, use_bias=False)

    def _join(self, x):
        syllables, qpos = x
        return jnp.concatenate([self.embed(syllables), qpos], axis=-1)

    def __call__(self, x, train: bool = False):
        return self.forward(self.initialize_carry(x[0].shape[0]), x, train)[1]

    def forward(self, carry, x, train: bool = False):
        return self.seq.forward(carry, self._join(x), train)

    def initialize_carry(self, batch_size: int):
        return self.seq.initialize_carry(batch_size)

    def step(self, carry, x_t):
        return self.seq.step(carry, self._join(x_t))


class _MLP(nn.Module):
    hidden: tuple[int, ...]
    out_dim: int

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.elu(nn.Dense(width)(x))
        return nn.Dense(self.out_dim)(x)


def build_policy(spec: PolicySpec, mode: str, out_dim: int, *, int_dim: int = 16,
                 decoder_hidden: Sequence[int] = (256, 256), embed_dim: int = 16,
                 **hparams) -> nn.Module:
    """The policy for ``mode`` around the registered policy ``spec``.

    ``out_dim`` is the width of the mode's target (the action for the controllers);
    ``int_dim`` the controller's intention width; ``hparams`` go to ``spec.make``.
    """
    family = get_mode(mode).family
    if family == "controller":
        return Controller(seq=spec.make(int_dim, **hparams), out_dim=out_dim,
                          decoder_hidden=tuple(decoder_hidden))
    if family == "syllable":
        return SyllableController(seq=spec.make(out_dim, **hparams), embed_dim=embed_dim)
    return spec.make(out_dim, **hparams)
