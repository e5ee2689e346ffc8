"""ncssm_policies: sequence-model policies, found through plugins.

Every policy, built-in or third-party, comes from a plugin of the ``ncssm`` entry-point group
(see :mod:`ncssm_policies.hookspecs` for the contract a plugin implements)::

    from ncssm_policies import registry
    model = registry().get("gru").make(out_dim=38)

``python -m ncssm_policies list`` shows what is installed and which plugins are broken. Importing
this package is light: it loads pluggy, not JAX or Flax, and imports no plugin until asked.
"""

from ncssm_policies.hookspecs import API_VERSION, PolicySpec, hookimpl, hookspec
from ncssm_policies.registry import (
    PluginError,
    Registered,
    Registry,
    UnknownPolicyError,
    load_registry,
    registry,
)

__all__ = [
    "API_VERSION",
    "PluginError",
    "PolicySpec",
    "Registered",
    "Registry",
    "UnknownPolicyError",
    "hookimpl",
    "hookspec",
    "load_registry",
    "registry",
]
