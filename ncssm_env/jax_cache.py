"""JAX's persistent compilation cache, on by default for the MJX env and the training step.

A compiled program is stored on disk under its HLO, so a second run of the same shapes loads
it instead of compiling again (the rodent's MJX step, the training step).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NCSSM_JAX_CACHE"


def cache_path() -> Path | None:
    """The cache folder ``enable_compilation_cache`` uses (None: turned off); see there."""
    from ncssm_env.synthetic import cache_dir

    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    return Path(setting).expanduser() if setting else cache_dir() / "jax"


def enable_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache; returns its folder, or None when off.

    The folder is ``$NCSSM_JAX_CACHE``, else ``jax/`` in the clip cache (``$NCSSM_CACHE``, else
    ``$XDG_CACHE_HOME/ncssm``, else ``~/.cache/ncssm``). ``NCSSM_JAX_CACHE=off`` turns it off. A cache folder already set
    (``jax.config.jax_compilation_cache_dir`` or ``JAX_COMPILATION_CACHE_DIR``) is left as it
    is. Programs that compile in under a second are not stored.

    On a CPU-only JAX it is on only when ``$NCSSM_JAX_CACHE`` names a folder: jaxlib 0.9 logs
    three lines per program it loads from the cache there, one of them a false warning of
    SIGILL, and CPU compiles here take seconds, not minutes.
    """
    import jax

    path = cache_path()
    if path is None or (not os.environ.get(CACHE_ENV) and jax.default_backend() == "cpu"):
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path
