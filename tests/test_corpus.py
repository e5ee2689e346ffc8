"""The bad-input corpus (issue 18): every case of ``tests/corpus`` through its public entry point.

Each case must give the user one sentence (one line, no traceback) holding its expected
fragment; a command must exit with status 2; and no file of the case's folder may be added,
changed or removed (the folder is also the current one, so a stray output folder shows).

The commands run in-process through their ``main`` (the functions the console scripts call),
with stderr captured; the ``subprocess`` cases run the installed console scripts themselves.
``NCSSM_CORPUS_TABLE=FILE`` writes the README's table of cases and sentences to FILE.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from corpus import CASES, Call, Case, Env

REPO = Path(__file__).resolve().parents[1]
MAINS = {"ncssm-train": "ncssm_policies.train", "ncssm-rollout": "ncssm_policies.rollout",
         "ncssm-data": "ncssm_policies.data_cli"}
SENTENCES: dict[str, str] = {}  # case id -> the sentence the user got (for the README table)


# ----------------------------------------------------------------------------------------------
# What the cases share
# ----------------------------------------------------------------------------------------------

TINY = dict(seg_len=30, batch_size=4, epochs=1, iters_per_epoch=1, val_steps=1, d_model=16,
            ssm_size=8, blocks=2, n_layers=1, eval_episodes=0)
DIMS = {"x_in": [4], "x_tgt": 4}  # the test body: 4 joints in, 4 actuators out


def save_checkpoint(run: Path, clips: Path, **changes) -> Path:
    """A run folder holding one checkpoint (``best/0``) of a small policy of the test body, its
    parameters the model's own shapes (zeros: nothing is trained), written by the real
    :class:`~ncssm_policies.checkpoint.Checkpoints`."""
    import jax
    import numpy as np

    from ncssm_policies.build import build_model, model_init_params
    from ncssm_policies.checkpoint import Checkpoints
    from ncssm_policies.config import TrainConfig

    cfg = TrainConfig(clip_dir=str(clips), **{**TINY, **changes})
    model = build_model(cfg, DIMS)
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), model_init_params(model, DIMS))
    manager = Checkpoints(run / "checkpoints", 1)
    manager.save("best", 0, params, {"step": np.int64(0)}, cfg, None, {"dims": DIMS})
    manager.close()
    return run


@pytest.fixture(scope="module")
def good_checkpoint(test_clips, tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("corpus") / "run", test_clips)


@dataclass
class Kit:
    clips: Path
    checkpoint: Path
    install: Callable[[str, str], str]
    save_checkpoint: Callable[..., Path]


@pytest.fixture
def kit(test_clips, good_checkpoint, tmp_path, monkeypatch) -> Kit:
    """The shared inputs, and ``install(key, source)``: a distribution ``ncssm-fixture-<key>``
    whose ``ncssm`` entry point names a module of ``source``, installed into a folder on
    ``sys.path`` (outside the case's folder) as pip would; the registry is then loaded afresh,
    as in a new process."""
    registry_module = importlib.import_module("ncssm_policies.registry")  # (not the function)

    site = tmp_path / "site"
    modules: list[str] = []

    def install(key: str, source: str) -> str:
        site.mkdir(exist_ok=True)
        dist, module = f"ncssm-fixture-{key.replace('_', '-')}", f"ncssm_fixture_{key}"
        info = site / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[ncssm]\nfixture_{key} = {module}\n")
        (site / f"{module}.py").write_text(source)
        modules.append(module)
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.setattr(registry_module, "_DEFAULT", None)  # the next registry() loads it
        assert importlib.metadata.distribution(dist).version == "0.1"
        return f"{dist} (fixture_{key})"

    yield Kit(test_clips, good_checkpoint, install,
              lambda run, **changes: save_checkpoint(run, test_clips, **changes))
    for module in modules:
        sys.modules.pop(module, None)


# ----------------------------------------------------------------------------------------------
# Running a case
# ----------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder``: a folder, or the digest of a file's bytes."""
    return {p.relative_to(folder).as_posix():
            "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def errors() -> tuple[type, ...]:
    """What the Python entry points raise for bad input: ValueError (ClipError, ConfigError,
    CheckpointError), PluginError, gymnasium's own errors."""
    import gymnasium

    from ncssm_policies.registry import PluginError

    return ValueError, PluginError, gymnasium.error.Error


def call_python(case: Case, value: Any) -> str:
    """Call the Python entry point; return the message of what it raised (or, for ``evaluate``,
    which ends a NaN policy's episodes rather than raising, the note it adds)."""
    try:
        if case.entry == "ClipStore":
            from ncssm_data import ClipStore

            with ClipStore(value) as store:  # opened, then every clip read whole
                for i in range(len(store)):
                    store.read_clip(i)
        elif case.entry == "gymnasium.make":
            import gymnasium as gym

            import ncssm_env

            assert isinstance(value, Env)
            env = gym.make(ncssm_env.ENV_ID, **value.kwargs)
            try:
                if value.reset:
                    env.reset(seed=0)
                if value.action is not None:
                    env.step(value.action)
            finally:
                env.close()
        elif case.entry == "load_policy":
            from ncssm_policies.checkpoint import load_policy

            load_policy(value)
        elif case.entry == "evaluate":
            from ncssm_policies.rollout import evaluate

            assert isinstance(value, Call)
            res = evaluate(**value.kwargs)
            notes = res.summary.get("notes", [])
            assert len(notes) == 1, f"{case.id}: evaluate gave notes {notes}"
            return notes[0]
        else:
            raise AssertionError(f"unknown entry point {case.entry!r}")
    except errors() as err:
        return str(err)
    pytest.fail(f"{case.id}: {case.entry} accepted the bad input")


def call_command(case: Case, argv: list[str], work: Path, capsys) -> str:
    """Run the command in-process (its ``main``) or as its console script; it must exit with
    status 2; return what it wrote to stderr."""
    if case.subprocess:
        script = Path(sys.executable).with_name(case.entry)
        assert script.is_file(), f"the console script {script} is not installed"
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([str(script), *argv], cwd=work, capture_output=True, text=True,
                              timeout=300, env=env)
        code, err = proc.returncode, proc.stderr
    else:
        main = importlib.import_module(MAINS[case.entry]).main
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse
            code = exit.code
        err = capsys.readouterr().err
    assert code == 2, f"{case.id}: {case.entry} exited with {code}; stderr: {err[-2000:]}"
    return err


def check_sentence(case: Case, text: str) -> str:
    sentence = text.strip()
    assert sentence, f"{case.id}: no message"
    assert "Traceback" not in sentence and "\n" not in sentence, \
        f"{case.id}: not one line:\n{text[-3000:]}"
    assert len(sentence) <= 1000, f"{case.id}: a message of {len(sentence)} characters"
    if case.period:
        assert sentence.endswith((".", "?")), f"{case.id}: not a sentence: {sentence}"
    assert case.expect in sentence, f"{case.id}: {case.expect!r} is not in: {sentence}"
    return sentence


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_sentence_and_changes_nothing(case, kit, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # relative outputs (runs/, out/) would land here
    value = case.build(work, kit)
    before = snapshot(work)
    if case.entry in MAINS:
        text = call_command(case, value, work, capsys)
    else:
        text = call_python(case, value)
    sentence = check_sentence(case, text)
    after = snapshot(work)
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert after == before, (f"{case.id} changed files: added {sorted(after.keys() - before.keys())}, "
                             f"removed {sorted(before.keys() - after.keys())}, changed {changed}")
    SENTENCES[case.id] = shorten(sentence, work, kit)


# ----------------------------------------------------------------------------------------------
# The README's table
# ----------------------------------------------------------------------------------------------


def shorten(sentence: str, work: Path, kit: Kit) -> str:
    """The sentence with the test's folders written as a user's relative ones (and a number
    of 40 digits or more cut short)."""
    for path, short in ((kit.checkpoint, "run"), (kit.clips, "clips"), (work, ".")):
        sentence = sentence.replace(f"{path}/", "" if short == "." else f"{short}/")
        sentence = sentence.replace(str(path), short)
    return re.sub(r"\d{40,}", lambda m: f"{m[0][:3]}…{m[0][-3:]} ({len(m[0])} digits)", sentence)


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Bad input")
    return text[start: text.index("\n### ", start + 1)]


def test_readme_lists_every_case():
    """The README's table of bad inputs has one row per case id, and no other."""
    rows = re.findall(r"^\| `([\w-]+)` \|", readme_section(), flags=re.M)
    assert sorted(rows) == sorted(c.id for c in CASES)


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    """With ``NCSSM_CORPUS_TABLE=FILE``, write the table of the cases run to FILE (for the
    README)."""
    yield
    out = os.environ.get("NCSSM_CORPUS_TABLE")
    if out:
        lines = ["| case | bad input | entry point | what the user gets |", "|---|---|---|---|"]
        for case in CASES:
            if case.id in SENTENCES:
                sentence = SENTENCES[case.id].replace("|", "\\|")
                entry = f"`{case.entry}`" + (" (console script)" if case.subprocess else "")
                lines.append(f"| `{case.id}` | {case.what} | {entry} | {sentence} |")
        Path(out).write_text("\n".join(lines) + "\n")
