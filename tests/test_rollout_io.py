"""Rollout files (save/load, atomic, corrupt files) and mp4 rendering of an episode."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ncssm_env.body import build_model
from ncssm_policies.rollout_io import RolloutError, load_rollouts, render_episode, save_rollouts


def episode(T: int, nq: int, nu: int, seed: int, **scalars) -> dict:
    rng = np.random.default_rng(seed)
    ep = {
        "qpos": rng.normal(size=(T, nq)),
        "ref_qpos": rng.normal(size=(T, nq)),
        "ctrl": rng.uniform(-1, 1, (T, nu)),
        "reward": rng.uniform(size=T),
        "err_joints": rng.uniform(size=T),
        "rew_root_pos": rng.uniform(size=T),
        "clip": 2,
        "start": 17,
        "length": T,
        "fraction": 0.5,
        "cause": "bad_height",
    }
    return {**ep, **scalars}


@pytest.fixture(scope="module")
def sizes() -> tuple[int, int]:
    model = build_model("test")
    return model.nq, model.nu


META = {"checkpoint": "runs/x/best", "body": "test", "backend": "cpu", "seed": 3,
        "summary": {"err_joints": {"mean": 0.25, "median": 0.5}, "causes": {"end": 1, "bad_height": 1}}}


def test_round_trip(tmp_path: Path, sizes) -> None:
    nq, nu = sizes
    eps = [episode(12, nq, nu, 0), episode(5, nq, nu, 1, clip=0, start=np.int64(0), cause="end",
                                            fraction=np.float32(1.0))]
    path = save_rollouts(tmp_path / "r.h5", eps, {**META, "np_value": np.float32(2.5)})
    assert path == tmp_path / "r.h5"
    got, meta = load_rollouts(path)
    assert meta == {**META, "np_value": 2.5}
    assert len(got) == 2
    for ep, g in zip(eps, got):
        assert set(g) == set(ep)
        for key in ("qpos", "ref_qpos", "ctrl", "reward", "err_joints", "rew_root_pos"):
            assert g[key].dtype == np.float32
            np.testing.assert_allclose(g[key], ep[key], rtol=1e-6)
        for key in ("clip", "start", "length", "fraction", "cause"):
            assert g[key] == ep[key] and type(g[key]) is {"cause": str, "fraction": float}.get(key, int)
    with h5py.File(path, "r") as f:  # the layout other tools may rely on
        assert sorted(f) == ["episode_0000", "episode_0001"]
        assert f["episode_0001"].attrs["cause"] == "end"
        assert f["episode_0000/qpos"].compression == "gzip"
        assert json.loads(f.attrs["meta"])["seed"] == 3


def test_zero_episodes_and_missing_fraction(tmp_path: Path, sizes) -> None:
    save_rollouts(tmp_path / "empty.h5", [], {})
    assert load_rollouts(tmp_path / "empty.h5") == ([], {})
    ep = episode(3, *sizes, 0)
    del ep["fraction"]
    got, _ = load_rollouts(save_rollouts(tmp_path / "nf.h5", [ep], {}))
    assert "fraction" not in got[0]


def test_failing_save_keeps_old_file(tmp_path: Path, sizes) -> None:
    path = save_rollouts(tmp_path / "r.h5", [episode(4, *sizes, 0)], META)
    before = path.read_bytes()
    bad = episode(4, *sizes, 1)
    del bad["ctrl"]
    with pytest.raises(ValueError, match=r"^In episode 1, the required key 'ctrl' is missing\.$"):
        save_rollouts(path, [episode(4, *sizes, 2), bad], {})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


def test_failure_after_the_temp_file_is_written_leaves_nothing(tmp_path: Path, sizes) -> None:
    target = tmp_path / "taken"  # a folder: the final os.replace fails after the temp file is complete
    (target / "x").mkdir(parents=True)
    with pytest.raises(OSError):
        save_rollouts(target, [episode(4, *sizes, 0)], META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("change, message", [
    (lambda ep: ep.update(reward=ep["reward"][:-1]),
     r"In episode 0, array 'reward' has 3 steps but 'qpos' has 4; all arrays must share T\."),
    (lambda ep: ep.update(ref_qpos=ep["ref_qpos"][:, :-1]), r"'ref_qpos' has shape \(4, 10\) but 'qpos'"),
    (lambda ep: ep.update(ctrl=ep["ctrl"][:, 0]), r"array 'ctrl' has shape \(4,\), expected \(T, D\)\."),
    (lambda ep: ep.update(err_x=np.zeros((4, 2))), r"array 'err_x' has shape \(4, 2\), expected \(T,\)\."),
    (lambda ep: ep.update(qvel=np.zeros((4, 2))), r"key 'qvel' is unknown"),
    (lambda ep: ep.update(clip=1.5), r"'clip' is 1.5, expected an int\."),
    (lambda ep: ep.update(start=True), r"'start' is True, expected an int\."),
    (lambda ep: ep.update(cause=3), r"'cause' is 3, expected a string\."),
])
def test_bad_episode(tmp_path: Path, sizes, change, message) -> None:
    ep = episode(4, *sizes, 0)
    change(ep)
    with pytest.raises(ValueError, match=message):
        save_rollouts(tmp_path / "r.h5", [ep], {})
    assert list(tmp_path.iterdir()) == []


def test_bad_meta(tmp_path: Path, sizes) -> None:
    with pytest.raises(ValueError, match=r"^meta is not JSON-serialisable"):
        save_rollouts(tmp_path / "r.h5", [episode(4, *sizes, 0)], {"path": Path("x")})
    assert list(tmp_path.iterdir()) == []


def test_truncated_foreign_and_missing_files(tmp_path: Path, sizes) -> None:
    good = save_rollouts(tmp_path / "good.h5", [episode(50, *sizes, i) for i in range(3)], META)
    data = good.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RolloutError, match=rf"^Rollout file {cut} is not a readable HDF5 file"):
        load_rollouts(cut)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5\n" * 100)
    with pytest.raises(ValueError, match=rf"^Rollout file {text} is not a readable HDF5 file"):
        load_rollouts(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("obs", data=np.zeros((3, 2)))
    with pytest.raises(RolloutError, match=rf"^File {other} is not a rollout file"):
        load_rollouts(other)
    with pytest.raises(RolloutError, match="does not exist"):
        load_rollouts(tmp_path / "nope.h5")


# --------------------------------------------------------------------------- video


def read_video(path: Path) -> np.ndarray:
    import imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        return np.stack(list(reader.iter_data()))  # (list(reader) asks len(), which is inf)


@pytest.fixture(scope="module")
def clip_qpos(test_clips) -> np.ndarray:
    with h5py.File(test_clips / "clip_0.h5", "r") as f:
        return f["qpos"][:10]


@pytest.mark.parametrize("with_ref", [False, True])
def test_render_test_body(tmp_path: Path, clip_qpos, with_ref) -> None:
    ref = clip_qpos[::-1] if with_ref else None
    path = render_episode(tmp_path / "ep.mp4", "test", clip_qpos, ref, fps=25, width=64, height=48)
    frames = read_video(path)
    assert frames.shape == (10, 48, 128 if with_ref else 64, 3)
    assert all(frame.std() > 5 for frame in frames)  # not one colour
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.mp4"]
    if with_ref:  # the panels differ where the poses do (frame 0: clip frames 9 and 0)
        assert np.abs(frames[0, :, :64].astype(int) - frames[0, :, 64:]).mean() > 1


def test_render_rodent(tmp_path: Path) -> None:
    qpos = np.tile(build_model("rodent").qpos0, (3, 1))
    assert qpos.shape == (3, 74)
    frames = read_video(render_episode(tmp_path / "rodent.mp4", "rodent", qpos, qpos, width=64, height=48))
    assert frames.shape == (3, 48, 128, 3) and frames.std() > 5


def test_render_bad_input(tmp_path: Path, clip_qpos) -> None:
    with pytest.raises(ValueError, match=r"qpos has shape \(10, 11\), expected \(T, 74\)"):
        render_episode(tmp_path / "a.mp4", "rodent", clip_qpos)
    with pytest.raises(ValueError, match=r"ref_qpos has shape \(5, 11\) but qpos has \(10, 11\)"):
        render_episode(tmp_path / "a.mp4", "test", clip_qpos, clip_qpos[:5])
    with pytest.raises(ValueError, match="width is 65, expected an even int"):
        render_episode(tmp_path / "a.mp4", "test", clip_qpos, width=65)
    with pytest.raises(ValueError, match="must end in .mp4"):
        render_episode(tmp_path / "a.gif", "test", clip_qpos)
    assert list(tmp_path.iterdir()) == []
