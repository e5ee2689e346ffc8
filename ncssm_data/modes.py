"""The modeling modes: which clip arrays feed ``x_in`` and ``x_tgt``, in one table.

Each source is a name: a dataset of the clip (``obs``, ``ctrl``, ``latent_mean``,
``syllables``; ``syllables`` arrives one-hot) or, failing that, a named slice of ``obs`` from the
clip's layout (``qpos_local``). Targets are one step ahead: for a segment starting at frame
``s`` of length ``T``, ``x_in`` reads frames ``[s, s + T)`` and ``x_tgt`` frames
``[s + 1, s + T + 1)``. Since ``ctrl[t+1]`` is the control applied at state ``t`` (see the clip
convention), a policy trained on ``state_action`` is causal.

=============================  ==================================  ===================
mode                           x_in                                x_tgt
=============================  ==================================  ===================
``state_action``               qpos_local_t                        ctrl_{t+1}
``pure_state``                 qpos_local_t                        qpos_local_{t+1}
``state_intention``            qpos_local_t                        latent_mean_{t+1}
``pure_intention``             latent_mean_t                       latent_mean_{t+1}
``state_intention_controller`` (qpos_local_t, obs_t)               ctrl_{t+1}
``syllable_state_intention``   (one-hot syllables_t, qpos_local_t) ctrl_{t+1}
=============================  ==================================  ===================
"""

from __future__ import annotations

from dataclasses import dataclass

from ncssm_data.errors import ClipError

DATASETS = ("obs", "ctrl", "latent_mean", "syllables")  # sources read as whole datasets


@dataclass(frozen=True)
class Mode:
    """Sources of ``x_in`` (one or more parts) and of ``x_tgt`` (one part)."""

    name: str
    x_in: tuple[str, ...]
    x_tgt: str

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source the mode reads, each once, inputs first."""
        return tuple(dict.fromkeys((*self.x_in, self.x_tgt)))


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("state_action", ("qpos_local",), "ctrl"),
        Mode("pure_state", ("qpos_local",), "qpos_local"),
        Mode("state_intention", ("qpos_local",), "latent_mean"),
        Mode("pure_intention", ("latent_mean",), "latent_mean"),
        Mode("state_intention_controller", ("qpos_local", "obs"), "ctrl"),
        Mode("syllable_state_intention", ("syllables", "qpos_local"), "ctrl"),
    )
}


def get_mode(name: str) -> Mode:
    """The mode called ``name``; an unknown name lists the known ones."""
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"Unknown mode {name!r}; expected one of {list(MODES)}.") from None


def check_sources(mode: Mode, keys, layout, where: str) -> None:
    """Every source of ``mode`` is a dataset among ``keys`` or a name in ``layout``."""
    for source in mode.sources:
        if source in DATASETS:
            if source not in keys:
                raise ClipError(
                    f"Mode {mode.name!r} needs the dataset /{source}, which the clips in "
                    f"{where} lack."
                )
        elif source not in layout:
            raise ClipError(
                f"Mode {mode.name!r} needs {source!r} from the obs layout of {where}, which "
                f"names only {sorted(layout)}."
            )


def read_source(store, i: int, source: str, start: int = 0, stop: int | None = None):
    """Frames ``[start, stop)`` of ``source`` (a dataset, or a named obs slice) of clip ``i`` of
    a :class:`~ncssm_data.ClipStore`: (stop - start, D), or (stop - start,) for syllables."""
    if source in DATASETS:
        return store.read(i, source, start, stop)
    return store.obs(i, source, start, stop)
