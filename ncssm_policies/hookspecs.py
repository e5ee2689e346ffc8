"""The ncssm plugin contract: the only module a plugin needs to import.

A plugin is a distribution that names a module in the ``ncssm`` entry-point group::

    # the plugin's pyproject.toml
    [project.entry-points.ncssm]
    gru = "ncssm_gru"

and that module declares the plugin API version it was written against and implements hooks
with :data:`hookimpl`::

    # ncssm_gru/__init__.py
    from ncssm_policies.hookspecs import PolicySpec, hookimpl

    NCSSM_API_VERSION = 1  # the API_VERSION this plugin was written for, as a literal

    @hookimpl
    def ncssm_register_policies():
        return [PolicySpec("gru", make=make_gru, description="GRU baseline")]

The registry (:mod:`ncssm_policies.registry`) imports each plugin on its own: a plugin that fails
to import, declares another ``NCSSM_API_VERSION``, or whose hook raises or returns something
malformed is reported as broken, by distribution and entry-point name, and every other plugin
still loads. Any plugin can be disabled by name (``NCSSM_DISABLE_PLUGINS=gru``).

What ``make`` receives
----------------------
``PolicySpec.make(out_dim, **hparams)`` is called by ``ncssm-train``, checkpoints and evaluation
with keyword arguments from the run's config, the same for every policy:

``out_dim``
    The output width: the mode's target, or the intention width ``int_dim`` when the policy
    sits inside the ``controller`` family.
``d_model``, ``n_layers``
    The config keys of the same names (model width, number of layers).
``dropout``
    The config key ``dropout``: the rate to apply when ``__call__``/``forward`` get
    ``train=True`` (rng name ``"dropout"``); ``0.0`` means none.
every key of ``model_kwargs``
    The config's pass-through mapping, as keyword arguments (``model_kwargs: {hidden: 64}``
    arrives as ``hidden=64``); the one place for a plugin's own hyper-parameters.

The built-in ``s5`` and ``mamba`` also get their layer keys (``state_dim``, ``blocks``, ...;
``d_state``, ``expand``, ...); no other config key reaches a plugin. A ``make`` that does not
take a key it is given fails with a TypeError, reported as one sentence naming the policy.

The policy module contract
--------------------------
``make`` returns a ``flax.linen.Module`` instance (not the class) with these methods, where
``x`` is ``(B, T, D_in)``, ``x_t`` is ``(B, D_in)``, ``y`` is ``(B, T, out_dim)`` and ``y_t`` is
``(B, out_dim)``:

``__call__(x, train=False) -> y``
    The parallel form from a fresh carry; what training calls (teacher forcing over segments).
``forward(carry, x, train=False) -> (carry, y)``
    The parallel form with a carry in and out, so that chunks chain: running ``x[:, :k]`` and then
    ``x[:, k:]`` from the first call's carry gives the same ``y`` as one pass over ``x``.
``initialize_carry(batch_size) -> carry``
    The fresh recurrent state (a pytree of arrays with leading axis ``batch_size``); it must not
    need parameters, so it can be called on the unbound module.
``step(carry, x_t) -> (carry, y_t)``
    The one-step form, what closed-loop evaluation calls, the carry reset per episode.

The one-step form must equal the parallel form: stepping through ``x`` one frame at a time from
``initialize_carry(B)`` gives ``__call__(x)`` to float tolerance, with the same parameters (a
module built by ``make`` is initialized once, through ``__call__``, and the same ``params`` serve
``forward`` and ``step``). ``train`` switches training-only behaviour such as dropout; a policy
without any ignores it.

Check a policy against this contract with ``python -m ncssm_policies check NAME`` (or
:func:`ncssm_policies.testing.check_policy` in the plugin's own tests): one sentence per failure,
naming the plugin, its distribution and the method. ``ncssm-train`` runs its cheap part before
it loads any data.

This module imports only pluggy and the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

PROJECT = "ncssm"
API_VERSION = 1
"""The plugin API version; a plugin declares the one it was written for as ``NCSSM_API_VERSION``."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class PolicySpec:
    """One policy a plugin offers.

    ``name`` is the registry name a config asks for (``"s5"``, ``"mamba"``, ``"gru"``); ``make``
    builds the policy module: ``make(out_dim: int, **hparams) -> flax.linen.Module`` following the
    policy module contract above; ``description`` is one line for ``python -m ncssm_policies list``;
    ``families`` are the policy families it serves (:data:`FAMILIES`; all by default): a mode
    of another family refuses it.
    """

    name: str
    make: Callable[..., Any]
    description: str = ""
    families: tuple[str, ...] = ("sequence", "syllable", "controller")


FAMILIES = ("sequence", "syllable", "controller")
"""The policy families (``ncssm_data.modes.Mode.family``): ``sequence`` (the policy alone, one
input), ``syllable`` (a syllable embedding joins the state at the policy's input) and
``controller`` (the policy predicts an ``int_dim`` intention that an MLP decodes with the obs)."""


@dataclass(frozen=True)
class ExpertSpec:
    """One expert a plugin offers: controls that track a reference from any state.

    ``make(model: mujoco.MjModel, **options) -> expert``, where
    ``expert(xp, qpos (N, nq), qvel (N, nv), ref_qpos (N, W, nq), ref_ctrl (N, nu), t (N,))``
    returns controls (N, nu) for N envs, written once for ``xp`` numpy and jax.numpy; the
    arguments are those of :mod:`ncssm_env.expert` (the reference frames ahead, the first
    being the one to reach, and the clip's recorded control that reached it).
    """

    name: str
    make: Callable[..., Any]
    description: str = ""


class NcssmSpec:
    """The ncssm hook specifications (a plugin implements them as plain module-level functions)."""

    @hookspec
    def ncssm_register_policies(self) -> list[PolicySpec]:
        """Return the policies this plugin offers, as a list of :class:`PolicySpec`.

        Called once per plugin when the registry loads; returning ``None`` or ``[]`` marks the
        plugin broken. Names are stripped and lower-cased, and global: when two plugins offer one
        name, that name alone is affected, with one warning naming both. A built-in name stays
        the built-in's unless ``NCSSM_PREFER=<distribution>`` names the other plugin; between
        two other plugins the one ``NCSSM_PREFER`` names takes it, and otherwise the name is
        disabled until one is preferred or disabled (``NCSSM_DISABLE_PLUGINS``).
        """
        ...  # a specification: pluggy never calls this body; plugins implement the hook

    @hookspec
    def ncssm_register_experts(self) -> list[ExpertSpec]:
        """Return the experts this plugin offers, as a list of :class:`ExpertSpec`. Names are
        global, like policy names."""
        ...  # a specification
