"""ncssm-gru: a GRU baseline policy, registered with ncssm as ``"gru"``.

This module is the plugin: the ``ncssm`` entry point names it, ncssm checks ``NCSSM_API_VERSION``
and calls the ``@hookimpl`` functions below. It imports only the public hook specification; JAX and
Flax load when a policy is built, not when ncssm lists its plugins.
"""

from ncssm_policies.hookspecs import PolicySpec, hookimpl

NCSSM_API_VERSION = 1  # the ncssm plugin API this plugin was written against

__version__ = "0.1.0"


def make_gru(out_dim: int, **hparams):
    """``GRUPolicy(out_dim=out_dim, **hparams)``; hparams: ``d_model`` (128), ``n_layers`` (2),
    ``dropout`` (0.0)."""
    from ncssm_gru.policy import GRUPolicy

    return GRUPolicy(out_dim=out_dim, **hparams)


@hookimpl
def ncssm_register_policies():
    return [
        PolicySpec(
            "gru",
            make=make_gru,
            description="GRU baseline: Dense encoder, stacked GRU layers, Dense decoder.",
        )
    ]
