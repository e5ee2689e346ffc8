"""DART clips: the expert tracking each clip under noisy controls, labelled with its noise-free
control; split with the clip they track; learned from through ``ctrl_expert``."""

import mujoco
import numpy as np
import pytest

from ncssm_data import ClipDataset, ClipError, ClipStore, split_clips, write_clip
from ncssm_data.dataset import split_store
from ncssm_env.body import build_model
from ncssm_env.dart import generate_dart
from ncssm_env.expert import feedback
from ncssm_env.synthetic import generate


@pytest.fixture(scope="module")
def dart_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dart")
    generate(root, body="test", n_clips=4, n_frames=60, seed=2, progress=False)
    counts = generate_dart(root, feedback(build_model("test"), gain=0.5), noise=0.2, seed=0,
                           expert_name="feedback")
    assert counts == {"written": 4, "short": 0, "frames": 240}
    return root


def test_labels_are_the_expert_at_the_stored_states(dart_dir):
    """Every ``ctrl_expert[t]`` equals the expert recomputed at the stored state of frame t-1
    and the nominal reference; the executed ``ctrl`` is that plus noise; and the stored states
    are the ones physics visits: MuJoCo from frame t-1's state, given ctrl[t], lands on frame t."""
    m = build_model("test")
    expert = feedback(m, gain=0.5)
    lo, hi = m.actuator_ctrlrange.T
    d = mujoco.MjData(m)
    with ClipStore(dart_dir) as store:
        assert store.dart_of.tolist() == [-1, -1, -1, -1, 0, 1, 2, 3]
        for i in (4, 6):
            ref = store.read_clip(int(store.dart_of[i]))
            c = store.read_clip(i)
            T = len(c["qpos"])
            for t in range(1, T):
                idx = np.minimum(t + np.arange(5), len(ref["qpos"]) - 1)
                want = np.clip(expert(np, c["qpos"][t - 1:t], c["qvel"][t - 1:t],
                                      ref["qpos"][None, idx], ref["ctrl"][t:t + 1].astype(float),
                                      np.array([t - 1])), lo, hi)[0]
                np.testing.assert_allclose(c["ctrl_expert"][t], want, atol=1e-5)
            noise = c["ctrl"][1:] - c["ctrl_expert"][1:]
            assert 0.1 < noise.std() < 0.25  # noise 0.2, clipped at the range
            np.testing.assert_array_equal(c["syllables"], ref["syllables"][:T])
            for t in (1, T // 2, T - 1):
                d.qpos, d.qvel, d.act = c["qpos"][t - 1], c["qvel"][t - 1], c["act"][t - 1]
                d.ctrl = c["ctrl"][t]
                mujoco.mj_step(m, d, nstep=10)
                np.testing.assert_allclose(d.qpos, c["qpos"][t], atol=1e-5)


def test_dart_clips_train_with_the_clip_they_track(dart_dir, tmp_path):
    with ClipStore(dart_dir) as store:
        train, val = split_store(store, 0.75, 0)
        nominal_train, nominal_val = split_clips(4, 0.75, 0)
        np.testing.assert_array_equal(val, nominal_val)  # val stays nominal
        assert set(train) == set(nominal_train) | {4 + i for i in nominal_train}
    # The modes that act learn the expert's label where a clip has one.
    ds = ClipDataset(dart_dir, batch_size=1, seg_len=20, mmode="state_action", split="train",
                     train_frac=0.75, seed=0, normalizer=None)
    with ClipStore(dart_dir) as store:
        dart = int(train[-1])
        np.testing.assert_array_equal(ds._read(dart, "ctrl", 1, 21),
                                      store.read(dart, "ctrl_expert", 1, 21))


def test_dart_bad_input(dart_dir, tmp_path):
    with pytest.raises(ValueError, match="DART noise is -1, expected a standard deviation"):
        generate_dart(dart_dir, feedback(build_model("test")), noise=-1)
    bad = tmp_path / "bad"
    bad.mkdir()
    with ClipStore(dart_dir) as store:
        for i in (0, 4):
            write_clip(bad / f"clip_{i}.h5", store.read_clip(i), obs_layout=store.obs_layout,
                       body="test", control_dt=store.control_dt, generator="test",
                       dart_of=None if i == 0 else 1)
    (bad / "clip_4.h5").rename(bad / "clip_1.h5")
    with ClipStore(bad) as store, pytest.raises(ClipError, match="is a DART rollout of clip 1, "
                                                              "which is not a nominal clip"):
        store.dart_of


def test_builtin_dart_clips_are_made_once(monkeypatch):
    """``dart_noise`` in a config trains on the built-in clips plus a DART rollout of each,
    made once into the cache; dart_noise with a clip folder of your own is one sentence."""
    from ncssm_env.dart import builtin_dart
    from ncssm_env.expert import replay
    from ncssm_policies.config import ConfigError, TrainConfig

    path = builtin_dart(replay(build_model("test")), "replay", 0.1, body="test")
    with ClipStore(path) as store:
        assert len(store) == 128 and store.dart_of.tolist() == [-1] * 64 + list(range(64))
    stamp = (path / "clip_100.h5").stat().st_mtime_ns
    assert builtin_dart(replay(build_model("test")), "replay", 0.1, body="test") == path
    assert (path / "clip_100.h5").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="'dart_noise' makes DART rollouts of the built-in"):
        TrainConfig(clip_dir="/data/clips", dart_noise=0.1)
    with pytest.raises(ConfigError, match="'dart_noise' must be a standard deviation >= 0"):
        TrainConfig(dart_noise=-0.1)


def test_ncssm_data_dart_writes_into_a_folder(dart_dir, tmp_path, capsys):
    import shutil

    from ncssm_policies.data_cli import main

    root = tmp_path / "clips"
    root.mkdir()
    for i in range(4):
        shutil.copy(dart_dir / f"clip_{i}.h5", root)
    assert main(["dart", "--clip-dir", str(root), "--noise", "0.05", "--expert", "feedback"]) == 0
    assert "wrote 4 DART rollouts" in capsys.readouterr().out
    with ClipStore(root) as store:
        assert store.dart_of.tolist() == [-1, -1, -1, -1, 0, 1, 2, 3]
    assert main(["dart", "--clip-dir", str(root), "--noise", "0.05", "--expert", "oracle"]) == 2
    assert "no expert named 'oracle'" in capsys.readouterr().err
