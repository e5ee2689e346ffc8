"""The one error type of ncssm_data, and the one check of a count argument that every layer uses."""

import numbers


class ClipError(ValueError):
    """Bad clip data or a bad observation layout; the message is one sentence naming the file or key."""


def check_count(name: str, value) -> int:
    """``value`` as an int if it is an integer >= 1 (not a bool); else a ValueError naming
    ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return int(value)
