"""The built-in policies, registered through the same ``ncssm`` entry point as any plugin."""

from ncssm_policies.hookspecs import API_VERSION, ExpertSpec, PolicySpec, hookimpl

NCSSM_API_VERSION = API_VERSION


def _sequence(layer: str):
    def make(out_dim: int, d_model: int = 128, n_layers: int = 4, in_frames: int = 1,
             **layer_keys):
        """``SequencePolicy`` of ``layer`` blocks; every other key (``dropout``, ``state_dim``,
        ``d_state``, ...) goes to each block."""
        from ncssm_policies.models import SequencePolicy

        return SequencePolicy(out_dim=out_dim, layer=layer, d_model=d_model, n_layers=n_layers,
                              in_frames=in_frames, layer_kwargs=layer_keys)

    return make


@hookimpl
def ncssm_register_policies():
    return [
        PolicySpec("s5", _sequence("s5"), "S5: diagonal state-space layers (Smith et al. 2023)"),
        PolicySpec("mamba", _sequence("mamba"), "Mamba: selective state-space layers (Gu & Dao 2023)"),
    ]


def _expert(name: str):
    def make(model, **options):
        from ncssm_env.expert import BUILTIN

        return BUILTIN[name](model, **options)

    return make


@hookimpl
def ncssm_register_experts():
    return [
        ExpertSpec("replay", _expert("replay"), "the clip's recorded controls, time-indexed"),
        ExpertSpec("feedback", _expert("feedback"),
                   "replay plus a servo-target correction toward the next reference pose"),
    ]
