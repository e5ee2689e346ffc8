"""Clips as a Minari dataset (``ncssm-data export-minari``): Farama's offline-RL format.

:func:`export_minari` replays every clip of a folder through ``NCSSM-Track-v0`` inside Minari's
own ``DataCollector``: one episode per clip, reset on the clip's frame 0 with no reset noise
(``options={"clip": i, "start": 0, "noise": zeros (nq - 7,)}``, stored with the episode), then
stepped with the clip's recorded controls ``ctrl[1:]`` until the env truncates (the clip's last
frame, or the 1000-step limit) or terminates. An episode of n steps holds ``observations``
(n + 1, D_obs) float32, ``actions`` (n, nu) float32, ``rewards``, ``terminations`` and
``truncations`` (n,), and ``infos`` (the clip, the frame and every metric of
:data:`ncssm_env.task.METRICS`, (n + 1,) each). The dataset stores the env's spec, so
``dataset.recover_environment()`` makes ``NCSSM-Track-v0`` with the same kwargs (the body and the
clip folder as an absolute path).

minari is optional (``pip install "ncssm[minari]"``) and imported only here, lazily.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np

from ncssm_data import ClipStore
from ncssm_env import ENV_ID

INSTALL = 'pip install "ncssm[minari]"'


class MinariMissingError(ImportError):
    """minari is not installed."""


def _minari():
    try:
        import minari
    except ImportError:
        raise MinariMissingError(f"Exporting to Minari needs the minari package: {INSTALL}.") \
            from None
    return minari


def check_dataset_id(dataset_id: str) -> None:
    """Refuse, in one sentence, an id Minari cannot take: ``(namespace/)name-v(version)``."""
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)  # a missing version fails inside, as a TypeError
    except (ValueError, TypeError):
        raise ValueError(f"Dataset id {dataset_id!r} is not of the form "
                         f"(namespace/)name-v(version), such as 'ncssm/rodent-builtin-v0'.") \
            from None


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The folder Minari keeps datasets in: ``root``, else ``$MINARI_DATASETS_PATH``, else
    ``~/.minari/datasets`` (Minari's own rule)."""
    if root is not None:
        return Path(root).expanduser().absolute()
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).absolute() if env else Path.home() / ".minari" / "datasets"


@contextlib.contextmanager
def _minari_root(root: Path):
    """Point Minari (which reads ``$MINARI_DATASETS_PATH`` on each call) at ``root``."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def export_minari(clip_dir: str | os.PathLike, dataset_id: str, *,
                  root: str | os.PathLike | None = None, overwrite: bool = False,
                  author: str | None = None, author_email: str | None = None,
                  code_permalink: str | None = None) -> dict:
    """Replay every clip of ``clip_dir`` through ``NCSSM-Track-v0`` into Minari dataset
    ``dataset_id`` under ``root`` (see :func:`datasets_root`), as the module docstring says.

    Refused in one sentence (``ValueError``, ``ClipError``; :class:`MinariMissingError` without
    minari): a malformed id, an id that exists (unless ``overwrite``), a folder that is missing
    or holds no clips, clips without ``/ctrl`` (reference-only: nothing to replay), clips the env
    refuses. An overwritten dataset is moved aside until the new one is written, and put back
    if writing fails.

    Returns: ``{"path", "episodes", "steps", "terminated"}``, ``terminated`` the clip indices
    whose replay the env ended early.
    """
    minari = _minari()
    check_dataset_id(dataset_id)
    root = datasets_root(root)
    target = root / dataset_id
    if target.exists() and not overwrite:
        raise ValueError(f"Minari dataset {dataset_id!r} already exists in {root}; "
                         f"pass --overwrite (overwrite=True) to replace it.")
    clip_dir = Path(clip_dir).absolute()
    with ClipStore(clip_dir) as store:
        if not store.has("ctrl"):
            raise ValueError(f"Clips in {clip_dir} lack the dataset /ctrl (reference-only "
                             f"clips), so there are no recorded controls to replay.")
        body, n_clips = store.body or "rodent", len(store)

    root.mkdir(parents=True, exist_ok=True)
    with _minari_root(root), warnings.catch_warnings():
        # Minari recommends each metadata field left out; and minari 0.5.4's DataCollector
        # drops its emptied temporary folders without cleaning them up.
        warnings.filterwarnings("ignore", message=r"`\w+` is set to None")
        warnings.filterwarnings("ignore", "Implicitly cleaning up", ResourceWarning)
        env = gym.make(ENV_ID, body=body, clip_dir=str(clip_dir))
        collector = minari.DataCollector(env, record_infos=True)
        try:
            steps, terminated = _replay(collector, n_clips)
            aside = _move_aside(target) if target.exists() else None
            try:
                dataset = collector.create_dataset(
                    dataset_id, author=author, author_email=author_email,
                    code_permalink=code_permalink,
                    algorithm_name="replay of the clips' recorded /ctrl",
                    description=f"The {n_clips} clips of {clip_dir} (body {body!r}) "
                                f"replayed through {ENV_ID}: each episode resets on a "
                                f"clip's frame 0 with no reset noise and steps its "
                                f"recorded /ctrl until the clip ends or the env "
                                f"terminates.")
            except BaseException:
                if target.exists():
                    shutil.rmtree(target)
                if aside is not None:
                    aside.rename(target)
                raise
            if aside is not None:
                shutil.rmtree(aside)
        finally:
            collector.close()
            del collector
    return {"path": target, "episodes": dataset.total_episodes, "steps": steps,
            "terminated": terminated}


def _replay(collector, n_clips: int) -> tuple[int, list[int]]:
    """One episode per clip in ``collector`` (a ``DataCollector`` around the env); returns the
    steps taken and the clips whose replay terminated."""
    env = collector.unwrapped
    zeros = np.zeros(env.model.nq - 7)
    steps, terminated = 0, []
    for i in range(n_clips):
        ctrl = env.store.read(i, "ctrl")  # (T, nu) float32; ctrl[t] moved frame t-1 to t
        collector.reset(seed=i, options={"clip": i, "start": 0, "noise": zeros})
        for t in range(1, len(ctrl)):
            _, _, term, trunc, _ = collector.step(ctrl[t])
            steps += 1
            if term:
                terminated.append(i)
            if term or trunc:
                break
    return steps, terminated


def _move_aside(path: Path) -> Path:
    aside = path.with_name(f".{path.name}.replaced-{uuid.uuid4().hex[:8]}")
    path.rename(aside)
    return aside
