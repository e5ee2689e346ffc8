"""Shared fixtures: a private clip cache, JAX's compilation cache, and small clip folders."""

import os
import tempfile

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede importing mujoco
# One JAX compilation cache for every test session on this machine (the library turns it on
# for the MJX env and training; its default folder would be the session's fresh clip cache).
os.environ.setdefault("NCSSM_JAX_CACHE", os.path.join(tempfile.gettempdir(), "ncssm-jax-cache"))

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Built-in clips go to a fresh cache for the session (the user's is never touched)."""
    old = os.environ.get("NCSSM_CACHE")
    os.environ["NCSSM_CACHE"] = str(tmp_path_factory.mktemp("ncssm_cache"))
    yield
    if old is None:
        os.environ.pop("NCSSM_CACHE", None)
    else:
        os.environ["NCSSM_CACHE"] = old


@pytest.fixture(scope="session")
def jax_cache():
    """JAX with the persistent compilation cache on (``$NCSSM_JAX_CACHE``), shared by the
    session's MJX tests."""
    import jax

    from ncssm_env.jax_cache import enable_compilation_cache

    enable_compilation_cache()
    return jax


@pytest.fixture(scope="session")
def test_clips(tmp_path_factory):
    """Three clips of 80 frames of the behaviour program in the small test body."""
    from ncssm_env.synthetic import generate

    path = tmp_path_factory.mktemp("test_clips")
    generate(path, body="test", n_clips=3, n_frames=80, seed=1, progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_run(test_clips, tmp_path_factory):
    """``tiny_run(mode)``: the run folder of a tiny S5 of ``mode`` (one epoch of 3 steps, no
    closed-loop evaluation) trained on ``test_clips``, once per session and shared by every
    test that asks for that mode: read it, never change it (copy it first)."""
    from ncssm_policies.config import TrainConfig
    from ncssm_policies.train import train

    runs = {}

    def run(mode: str):
        if mode not in runs:
            cfg = TrainConfig(clip_dir=str(test_clips), seg_len=30, batch_size=4, epochs=1,
                              iters_per_epoch=3, val_steps=1, d_model=16, ssm_size=8, blocks=2,
                              n_layers=1, runs_dir=str(tmp_path_factory.mktemp(f"tiny_{mode}")),
                              mmode=mode, eval_episodes=0)
            runs[mode] = train(cfg, progress=False, plots=False).run_dir
        return runs[mode]

    return run


@pytest.fixture(scope="session")
def rodent_clips():
    """The built-in rodent clips, generated once into the session's cache."""
    from ncssm_env.synthetic import builtin_clips

    return builtin_clips("rodent")
