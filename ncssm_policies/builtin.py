"""The built-in policies, registered through the same ``ncssm`` entry point as any plugin."""

from ncssm_policies.hookspecs import API_VERSION, PolicySpec, hookimpl

NCSSM_API_VERSION = API_VERSION


def _sequence(layer: str):
    def make(out_dim: int, **hparams):
        from ncssm_policies.models import SequencePolicy

        return SequencePolicy(out_dim=out_dim, layer=layer, **hparams)

    return make


@hookimpl
def ncssm_register_policies():
    return [
        PolicySpec("s5", _sequence("s5"), "S5: diagonal state-space layers (Smith et al. 2023)"),
        PolicySpec("mamba", _sequence("mamba"), "Mamba: selective state-space layers (Gu & Dao 2023)"),
    ]
