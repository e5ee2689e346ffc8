"""The modeling modes: which clip arrays feed ``x_in`` and ``x_tgt``, in one table.

Each source is a name: a dataset of the clip (``obs``, ``ctrl``, ``latent_mean``,
``syllables``; ``syllables`` arrives one-hot) or, failing that, a named slice of ``obs`` from the
clip's layout (``qpos_local``). ``syllables`` is a logical name: it reads the integer label
dataset named by ``syllable_key`` (by default ``/syllables``; ``/syllables_arhmm`` holds the
AR-HMM labels of ``ncssm-data segment``), shape (T,), labels 0..K-1. Targets are one step ahead: for a segment starting at frame
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
SYLLABLES = "syllables"  # the logical source of syllable labels, and its default dataset key


@dataclass(frozen=True)
class Mode:
    """Sources of ``x_in`` (one or more parts) and of ``x_tgt`` (one part).

    Everything else about a mode follows from these: what it reads (:attr:`sources`), whether
    it acts on the body (:attr:`acts`), whether it can run on its own predictions
    (:attr:`feeds_back`), and which policy family serves it (:attr:`family`). Adding a mode
    is one row of :data:`MODES`.
    """

    name: str
    x_in: tuple[str, ...]
    x_tgt: str

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source the mode reads, each once, inputs first."""
        return tuple(dict.fromkeys((*self.x_in, self.x_tgt)))

    @property
    def acts(self) -> bool:
        """It predicts the control to apply, so it drives the body: judged in closed loop."""
        return self.x_tgt == "ctrl"

    @property
    def feeds_back(self) -> bool:
        """Its target is its input one step ahead, so it can run on its own predictions
        (scored open loop, autoregressively); a mode that neither acts nor feeds back is
        scored open loop on true inputs (teacher forced)."""
        return self.x_tgt in self.x_in

    @property
    def family(self) -> str:
        """The policy family that serves it: ``"sequence"`` (one input part), ``"syllable"``
        (a syllable label beside the state) or ``"controller"`` (the state to an intention,
        which a decoder maps to the target together with the second input part)."""
        if len(self.x_in) == 1:
            return "sequence"
        return "syllable" if SYLLABLES in self.x_in else "controller"


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


def dataset_key(source: str, syllable_key: str = SYLLABLES) -> str:
    """The clip dataset that ``source`` (one of :data:`DATASETS`) reads."""
    return syllable_key if source == SYLLABLES else source


def check_syllable_key(syllable_key) -> str:
    """``syllable_key`` if it is a plain dataset name (a non-empty string without "/")."""
    if not isinstance(syllable_key, str) or not syllable_key or "/" in syllable_key:
        raise ValueError(
            f"syllable_key must be a plain dataset name (non-empty, no '/'), got {syllable_key!r}.")
    return syllable_key


def store_keys(store, syllable_key: str = SYLLABLES) -> frozenset[str]:
    """The dataset keys every clip of ``store`` holds: :attr:`ClipStore.keys`, plus
    ``syllable_key`` when it is a dataset the store does not know (``/syllables_arhmm``, say)
    that every clip holds."""
    keys = store.keys
    return keys | {syllable_key} if syllable_key not in keys and store.holds(syllable_key) else keys


def check_sources(mode: Mode, keys, layout, where: str, syllable_key: str = SYLLABLES) -> None:
    """Every source of ``mode`` is a dataset among ``keys`` or a name in ``layout``; the
    ``syllables`` source is the dataset ``syllable_key``. Datasets are checked first, so a
    reference-only folder (qpos without obs or ctrl) is refused naming the dataset it lacks."""
    for source in sorted(mode.sources, key=lambda s: (s not in DATASETS, s == "obs")):
        if source in DATASETS:
            key = dataset_key(source, syllable_key)
            if key not in keys:
                raise ClipError(
                    f"Mode {mode.name!r} needs the dataset /{key}, which the clips in "
                    f"{where} lack."
                )
        elif not layout:
            raise ClipError(
                f"Mode {mode.name!r} needs {source!r}, a slice of the dataset /obs, which the "
                f"clips in {where} lack (reference-only clips: qpos to track, no observations)."
            )
        elif source not in layout:
            raise ClipError(
                f"Mode {mode.name!r} needs {source!r} from the obs layout of {where}, which "
                f"names only {sorted(layout)}."
            )


def read_source(store, i: int, source: str, start: int = 0, stop: int | None = None,
                syllable_key: str = SYLLABLES):
    """Frames ``[start, stop)`` of ``source`` (a dataset, or a named obs slice) of clip ``i`` of
    a :class:`~ncssm_data.ClipStore`: (stop - start, D), or (stop - start,) for syllables,
    which are read from the dataset ``syllable_key``."""
    if source == SYLLABLES and syllable_key != SYLLABLES:
        return store.read_labels(i, syllable_key, start, stop)
    if source == "ctrl" and store.clip_has(i, "ctrl_expert"):  # DART: the expert's label
        return store.read(i, "ctrl_expert", start, stop)
    if source in DATASETS:
        return store.read(i, source, start, stop)
    return store.obs(i, source, start, stop)
