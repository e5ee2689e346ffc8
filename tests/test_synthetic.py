"""The built-in behaviour program: determinism, what each clip saves, and the CLI."""

import numpy as np
import pytest

from ncssm_data import ClipStore
from ncssm_policies.data_cli import main
from ncssm_env.synthetic import SYLLABLES, Program, generate


def _arrays(path):
    with ClipStore(path) as store:
        return [store.read_clip(i) for i in range(len(store))]


def test_same_seed_same_clips(tmp_path):
    generate(tmp_path / "a", body="test", n_clips=2, n_frames=40, seed=3, workers=1,
             progress=False)
    generate(tmp_path / "b", body="test", n_clips=2, n_frames=40, seed=3, workers=2,
             progress=False)
    generate(tmp_path / "c", body="test", n_clips=2, n_frames=40, seed=4, progress=False)
    a, b, c = (_arrays(tmp_path / k) for k in "abc")
    for ca, cb in zip(a, b):
        assert ca.keys() == cb.keys()
        for k in ca:
            np.testing.assert_array_equal(ca[k], cb[k])
    assert not np.array_equal(a[0]["ctrl"], c[0]["ctrl"])


def test_clip_contents(test_clips):
    with ClipStore(test_clips) as store:
        assert store.keys >= {"obs", "ctrl", "latent_mean", "syllables", "qpos", "qvel", "act"}
        assert store.dims["latent_mean"] == (Program().int_dim,)
        assert store.control_dt == pytest.approx(0.02) and store.body == "test"
        c = store.read_clip(0)
    assert c["syllables"].min() >= 0 and c["syllables"].max() < len(SYLLABLES)
    assert np.abs(c["ctrl"]).max() <= 1.0
    assert c["qpos"][:, 7:].std(axis=0).mean() > 0.01  # the joints move


def test_cli_generate(tmp_path, capsys):
    assert main(["generate", "--body", "test", "--clips", "2", "--frames", "30",
                 "--out", str(tmp_path)]) == 0
    assert "torso upright in" in capsys.readouterr().out
    # (and the folder's hidden write lock, ncssm_data.locks)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name[0] != ".") == ["clip_0.h5",
                                                                              "clip_1.h5"]


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["generate", "--body", "mouse", "--out", str(tmp_path)]) == 2
    assert "Unknown body 'mouse'" in capsys.readouterr().err
    assert main(["generate", "--body", "test", "--frames", "3", "--out", str(tmp_path)]) == 2
