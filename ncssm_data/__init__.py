"""ncssm_data: the clips (HDF5 files of a simulated body) and their observation layouts.

No physics and no models live here: this package never imports MuJoCo, JAX or Flax.
"""

from ncssm_data.clips import SCHEMA_VERSION, ClipStore, write_clip
from ncssm_data.dataset import ClipDataset, split_clips
from ncssm_data.errors import ClipError
from ncssm_data.layout import (
    LEGACY_LAYOUT,
    Layout,
    check_layout,
    layout_from_json,
    layout_to_json,
    layout_width,
    obs_slice,
)
from ncssm_data.modes import MODES, get_mode
from ncssm_data.normalize import Normalizer

__all__ = [
    "ClipDataset",
    "ClipError",
    "ClipStore",
    "LEGACY_LAYOUT",
    "Layout",
    "MODES",
    "Normalizer",
    "SCHEMA_VERSION",
    "check_layout",
    "layout_from_json",
    "layout_to_json",
    "layout_width",
    "get_mode",
    "obs_slice",
    "split_clips",
    "write_clip",
]
