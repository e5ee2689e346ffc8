"""DAgger in ncssm-train: rounds aggregate expert-labelled rollouts of the policy, resume
exactly after SIGKILL, and every refusal is one sentence."""

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from ncssm_data import ClipStore, write_clip
from ncssm_policies.checkpoint import load_policy
from ncssm_policies.config import ConfigError, TrainConfig
from ncssm_policies.dagger import FOLDER, MANIFEST, round_epochs
from ncssm_policies.train import main, train

SMALL = dict(seg_len=30, batch_size=4, epochs=3, iters_per_epoch=3, val_steps=1, d_model=16,
             ssm_size=8, blocks=2, n_layers=1, warmup=2, dropout=0.1, eval_episodes=2,
             eval_envs=2, dagger={"rounds": 2, "episodes": 3, "beta": 0.5})


def digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir())}


def mid_round_two(run: Path) -> bool:
    """Round 1 is committed and round 2 has written clips it has not committed (or, if the
    poll was late, committed them)."""
    try:
        rounds = json.loads((run / FOLDER / MANIFEST).read_text())["rounds"]
    except (OSError, ValueError):
        return False
    listed = {c for r in rounds for c in r["clips"]}
    extra = [p for p in (run / FOLDER).glob("clip_*.h5")
             if p.name not in listed and int(p.stem[5:]) >= 3]
    return len(rounds) == 2 or bool(extra)


def test_dagger_aggregates_and_resumes_exactly_after_sigkill(test_clips, tmp_path, capsys):
    cfg = TrainConfig(clip_dir=str(test_clips), runs_dir=str(tmp_path), **SMALL)
    assert round_epochs(cfg) == [1, 2]
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_json())
    run = tmp_path / "killed"
    argv = ["--config", str(path), "--run-dir", str(run), "--no-progress"]
    cmd = [sys.executable, "-m", "ncssm_policies.train", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not mid_round_two(run):
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # The same command again, resumed here (a fresh process would only add its start-up).
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "resumed at step 6" in out

    straight = train(cfg, run_dir=tmp_path / "straight", progress=False)
    a, b = load_policy(run, which="latest"), load_policy(straight.run_dir, which="latest")
    assert a.step == b.step == 9
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        assert np.array_equal(np.asarray(x), np.asarray(y))

    # The same aggregate, nothing left over, and what each round added.
    assert digests(run / FOLDER) == digests(straight.run_dir / FOLDER)
    rounds = json.loads((run / FOLDER / MANIFEST).read_text())["rounds"]
    assert [r["epoch"] for r in rounds] == [1, 2]
    written = [c for r in rounds for c in r["clips"]]
    assert len(written) == sum(r["episodes"] for r in rounds) - sum(r["short"] for r in rounds) > 0
    rows = [json.loads(line)
            for line in (straight.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "dagger_round" in r]
    assert [r["dagger_round"] for r in logged] == [1, 2]
    assert logged[1]["train_frames"] == logged[0]["train_frames"] + logged[1]["dagger_frames"]
    assert all(np.isfinite(r["closed_loop_score"]) for r in logged)
    final = [r for r in rows if r.get("dagger_final")]
    assert len(final) == 1 and final[0]["train_frames"] == logged[1]["train_frames"]
    assert (straight.run_dir / "dagger.png").stat().st_size > 0
    with ClipStore(straight.run_dir / FOLDER) as store:
        n = len(store) - len(written)
        assert (store.dart_of[:n] < 0).all() and (store.dart_of[n:] >= 0).all()
        # beta 0.5: each executed control is the expert's label or the policy's, about half each
        same = np.concatenate([
            np.all(store.read(i, "ctrl")[1:] == store.read(i, "ctrl_expert")[1:], axis=1)
            for i in range(n, len(store))])
        assert 0.2 < same.mean() < 0.8


def test_dagger_refusals_are_one_sentence(test_clips, tmp_path):
    base = dict(SMALL, clip_dir=str(test_clips), runs_dir=str(tmp_path))
    for changes, match in (
        (dict(mmode="pure_state"), "mode 'pure_state' does not act, so there are no actions"),
        (dict(dagger={"round": 2}), "unknown key 'round'; known keys: rounds, episodes"),
        (dict(dagger={"beta": 1.5}), r"'dagger.beta' must be a probability in \[0, 1\]"),
        (dict(dagger={"rounds": 3}), "3 rounds, which need epochs >= 4"),
        (dict(test_batch=True), "test_batch: true replaces by one segment"),
    ):
        with pytest.raises(ConfigError, match=match) as err:
            TrainConfig(**{**base, **changes})
        assert "\n" not in str(err.value)

    with pytest.raises(ConfigError, match="no expert named 'oracle'"):
        train(TrainConfig(**{**base, "dagger": {**SMALL["dagger"], "expert": "oracle"}}),
              progress=False)

    # Clips without /qpos give an expert nothing to track.
    bare = tmp_path / "bare"
    bare.mkdir()
    with ClipStore(test_clips) as store:
        for i in range(len(store)):
            arrays = {k: store.read(i, k) for k in ("obs", "ctrl", "latent_mean", "syllables")}
            write_clip(bare / f"clip_{i}.h5", arrays, obs_layout=store.obs_layout,
                       body=store.body, control_dt=store.control_dt, generator="test")
    with h5py.File(bare / "clip_0.h5") as f:
        assert "qpos" not in f
    with pytest.raises(ConfigError, match=r"an expert tracks /qpos, which the clips in .*bare"):
        train(TrainConfig(**{**base, "clip_dir": str(bare)}), progress=False)
