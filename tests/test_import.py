"""``ncssm-data import``: qpos arrays (.npz / .h5) -> reference-only clips at 50 Hz."""

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from ncssm_data import ClipStore
from ncssm_data.errors import ClipError
from ncssm_env.body import build_model
from ncssm_env.importer import import_qpos, slerp
from ncssm_env.reference import finite_difference_qvel
from ncssm_policies.data_cli import main

REAL = Path(os.environ.get("NCSSM_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
STAC = REAL / "stac_fit_qpos_50.npz"
TEST_NAMES = np.array(["root"] * 7 + ["hip_FL", "hip_FR", "hip_HL", "hip_HR"])


@pytest.fixture(scope="module")
def test_model():
    return build_model("test")


def _trajectory(T=20, phase=0.0):
    """qpos (T, 11) of the test body at 25 fps: a drifting root turning about a tilted axis,
    hinge angles swinging within their ranges (+-0.8 rad)."""
    t = np.arange(T) / 25.0 + phase
    axis = np.array([0.2, 0.1, 1.0]) / np.linalg.norm([0.2, 0.1, 1.0])
    angle = 1.5 * t + 2.5  # crosses pi: the quaternion's w changes sign
    quat = np.concatenate([np.cos(angle / 2)[:, None], np.sin(angle / 2)[:, None] * axis], axis=1)
    quat[1::3] *= -1  # the same rotations, written with the other sign
    pos = np.stack([0.1 * t, 0.02 * np.sin(t), 0.06 + 0.01 * np.cos(3 * t)], axis=1)
    hinges = 0.7 * np.sin(2 * t[:, None] + np.arange(4))
    return np.concatenate([pos, quat, hinges], axis=1)


def _check_round_trip(model, src, store, i=0):
    """Clip ``i`` of ``store`` is ``src`` (T, nq) at 25 fps resampled to 50 Hz."""
    qpos, qvel = store.read(i, "qpos"), store.read(i, "qvel")
    assert qpos.shape == (2 * len(src) - 1, model.nq) and qvel.shape == (len(qpos), model.nv)
    assert store.control_dt == 0.02 and not store.has("obs") and not store.has("act")
    even, q0 = qpos[::2], src[:, 3:7] / np.linalg.norm(src[:, 3:7], axis=1, keepdims=True)
    np.testing.assert_allclose(np.delete(even, np.s_[3:7], 1), np.delete(src, np.s_[3:7], 1), atol=1e-6)
    sign = np.sign(np.sum(even[:, 3:7] * q0, axis=1, keepdims=True))
    np.testing.assert_allclose(even[:, 3:7] * sign, q0, atol=1e-6)
    odd = qpos[1::2]
    lin = np.delete((src[:-1] + src[1:]) / 2, np.s_[3:7], 1)  # linear midpoints
    np.testing.assert_allclose(np.delete(odd, np.s_[3:7], 1), lin, atol=1e-9)
    a, b = q0[:-1], q0[1:] * np.sign(np.sum(q0[:-1] * q0[1:], axis=1, keepdims=True))
    mid = (a + b) / np.linalg.norm(a + b, axis=1, keepdims=True)  # the slerp midpoint, short way
    np.testing.assert_allclose(odd[:, 3:7], mid, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(qpos[:, 3:7], axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(qvel, finite_difference_qvel(model, qpos, 0.02), atol=1e-12)
    return qpos


def _shuffle(qpos, names, seed):
    """The same data with its columns permuted (the root's 7 keep their relative order)."""
    perm = np.random.default_rng(seed).permutation(len(names))
    is_root = names[perm] == "root"
    perm[is_root] = np.sort(perm[is_root])
    return qpos[..., perm], names[perm]


def test_stac_fit_round_trip(tmp_path):
    if not STAC.is_file():
        pytest.skip(f"{STAC} is absent")
    src = np.load(STAC, allow_pickle=False)
    qpos, names = src["qpos"], src["names_qpos"]
    model = build_model("rodent")
    paths = import_qpos(STAC, tmp_path / "a", body="rodent", fps=25, names_key="names_qpos")
    assert [p.name for p in paths] == ["clip_0.h5"]
    with ClipStore(tmp_path / "a") as store:
        assert store.body == "rodent" and list(store.lengths) == [99]
        with h5py.File(paths[0]) as f:
            assert f.attrs["generator"] == "ncssm-data import stac_fit_qpos_50.npz (fps 25 -> 50)"
        clip = _check_round_trip(model, qpos, store)
    shuffled, snames = _shuffle(qpos, names, seed=0)
    snames = np.array([("walker/" + n) if k % 2 else n for k, n in enumerate(snames)])  # prefix or not
    np.savez(tmp_path / "shuffled.npz", qpos=shuffled, names_qpos=snames)
    import_qpos(tmp_path / "shuffled.npz", tmp_path / "b", fps=25, names_key="names_qpos")
    with ClipStore(tmp_path / "b") as store:
        np.testing.assert_array_equal(store.read(0, "qpos"), clip)


def test_synthetic_round_trip_and_name_mapping(tmp_path, test_model):
    src = _trajectory()
    np.savez(tmp_path / "plain.npz", qpos=src)
    import_qpos(tmp_path / "plain.npz", tmp_path / "a", body="test", fps=25)
    with ClipStore(tmp_path / "a") as store:
        clip = _check_round_trip(test_model, src, store)
        assert store.provenance(0) == {"source": str((tmp_path / "plain.npz").resolve()),
                                       "source_start_s": 0.0}
    shuffled, names = _shuffle(src, TEST_NAMES, seed=1)
    np.savez(tmp_path / "named.npz", qpos=shuffled, names=names)
    import_qpos(tmp_path / "named.npz", tmp_path / "b", body="test", fps=25, names_key="names")
    with ClipStore(tmp_path / "b") as store:
        np.testing.assert_array_equal(store.read(0, "qpos"), clip)


def test_same_rate_keeps_frames_and_other_rates_span_the_source(tmp_path):
    src = _trajectory(T=12)
    np.savez(tmp_path / "q.npz", qpos=src)
    import_qpos(tmp_path / "q.npz", tmp_path / "a", body="test", fps=50)
    with ClipStore(tmp_path / "a") as store:
        qpos = store.read(0, "qpos")
    sign = np.sign(np.sum(qpos[:, 3:7] * src[:, 3:7], axis=1, keepdims=True))  # the same rotation
    np.testing.assert_allclose(np.concatenate([qpos[:, :3], qpos[:, 3:7] * sign, qpos[:, 7:]], 1), src, atol=1e-12)
    import_qpos(tmp_path / "q.npz", tmp_path / "b", body="test", fps=30)  # 11/30 s -> 19 frames at 50 Hz
    with ClipStore(tmp_path / "b") as store:
        assert list(store.lengths) == [19]
        np.testing.assert_allclose(store.read(0, "qpos")[-1, 0], np.interp(18 * 0.02 * 30, np.arange(12), src[:, 0]))


def test_slerp_takes_the_short_way():
    q0 = np.array([[1.0, 0, 0, 0]])
    q1 = np.array([[np.cos(0.5), 0, 0, np.sin(0.5)]])  # 1 rad about z
    half = np.array([[np.cos(0.25), 0, 0, np.sin(0.25)]])
    for other in (q1, -q1):
        np.testing.assert_allclose(slerp(q0, other, np.array([0.5])), half, atol=1e-12)
    np.testing.assert_allclose(slerp(q0, -q0, np.array([0.3])), q0, atol=1e-12)  # same rotation


def test_several_clips_npz_axis_and_h5_groups(tmp_path, test_model):
    a, b = _trajectory(T=10), _trajectory(T=14, phase=0.4)
    np.savez(tmp_path / "two.npz", qpos=np.stack([a, _trajectory(T=10, phase=0.4)]))
    assert [p.name for p in import_qpos(tmp_path / "two.npz", tmp_path / "n", body="test", fps=25)] \
        == ["clip_0.h5", "clip_1.h5"]
    with ClipStore(tmp_path / "n") as store:
        _check_round_trip(test_model, a, store, 0)
    with h5py.File(tmp_path / "groups.h5", "w") as f:
        f["names"] = TEST_NAMES.astype("S")  # bytes names, shared by the groups
        f["trial_10/qpos"], f["trial_2/qpos"] = b, a  # natural order: trial_2 first
    import_qpos(tmp_path / "groups.h5", tmp_path / "g", body="test", fps=25, names_key="names")
    with ClipStore(tmp_path / "g") as store:
        assert list(store.lengths) == [19, 27]
        _check_round_trip(test_model, a, store, 0)
        _check_round_trip(test_model, b, store, 1)
        with h5py.File(store.paths[1]) as f:
            assert f.attrs["generator"] == "ncssm-data import groups.h5:/trial_10 (fps 25 -> 50)"


def _bad(edit):
    q = _trajectory(T=10)
    edit(q)
    return q


def _set(q, t, c, v):
    q[t, c] = v


@pytest.mark.parametrize("qpos, kwargs, match", [
    (_trajectory(10)[:, :10], {}, r"q\.npz, 'qpos' has width 10, expected nq 11 of body 'test'"),
    (_bad(lambda q: _set(q, 3, 8, np.nan)), {}, r"'qpos' holds nan at frame 3 \(joint 'walker/hip_FR'\)"),
    (_bad(lambda q: _set(q, 5, 1, np.inf)), {}, r"'qpos' holds inf at frame 5 \(joint 'walker/root'\)"),
    (_bad(lambda q: q.__setitem__((4, slice(3, 7)), q[4, 3:7] * 1.01)), {},
     r"'qpos' frame 4 has the quaternion of joint 'walker/root' at norm 1\.01, expected 1 within 0\.001"),
    (_bad(lambda q: _set(q, 2, 9, -0.95)), {},
     (r"'qpos' frame 2 puts joint 'walker/hip_HL' at -0\.95 rad, beyond its range \[-0\.8, 0\.8\] "
      r"by more than 0\.1 rad")),
    (_bad(lambda q: _set(q, 2, 9, -0.85)), {"range_margin": 0.01}, r"frame 2 puts joint 'walker/hip_HL' at -0\.85"),
    (_trajectory(T=3), {}, r"'qpos' has 3 frames at 25 fps, 5 at 50 Hz, fewer than the K\+2 = 7"),
    (_trajectory(T=4), {"K": 6}, r"'qpos' has 4 frames at 25 fps, 7 at 50 Hz, fewer than the K\+2 = 8"),
    (_trajectory(T=10), {"key": "joints"}, r"q\.npz has no array 'joints'; it holds \['qpos'\]"),
    (_trajectory(T=10), {"names_key": "names"}, r"has no array 'names'"),
    (_trajectory(T=10), {"fps": 0}, r"fps is 0 for .*q\.npz, expected a positive finite number"),
    (_trajectory(T=10), {"fps": -25.0}, r"fps is -25\.0"),
    (_trajectory(T=10), {"fps": float("nan")}, r"fps is nan"),
    (_trajectory(T=10), {"body": "cat"}, r"Unknown body 'cat'"),
    (_trajectory(T=10)[:, 0], {},
     r"'qpos' has shape \(10,\) and dtype float64, expected numbers of shape \(T, nq\)"),
], ids=["width", "nan", "inf", "quaternion", "range", "range_margin", "few_frames", "few_frames_for_K",
        "unknown_key", "unknown_names_key", "fps_zero", "fps_negative", "fps_nan", "unknown_body", "one_dim"])
def test_refusals(tmp_path, qpos, kwargs, match):
    np.savez(tmp_path / "q.npz", qpos=qpos)
    with pytest.raises(ClipError if "body" not in kwargs else ValueError, match=match):
        import_qpos(tmp_path / "q.npz", tmp_path / "out", **{"body": "test", "fps": 25, **kwargs})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("names, match", [
    (TEST_NAMES[:-1], r"'qpos' has width 11 but 'names' names 10 columns"),
    (np.where(TEST_NAMES == "hip_FR", "tail", TEST_NAMES),
     r"'names' names 'tail' \(column 8\), which is not a joint of body 'test'"),
    (np.where(TEST_NAMES == "hip_FR", "hip_FL", TEST_NAMES),
     r"names joint 'walker/hip_FL' of body 'test' 2 times, expected 1"),
    (np.array(["root"] * 6 + ["walker/hip_FL", "hip_FR", "hip_HL", "hip_HR", "hip_HR"]),
     r"names joint 'walker/root' of body 'test' 6 times, expected 7"),
    (np.arange(11), r"'names' has shape \(11,\) and dtype int64, expected one string per column"),
], ids=["count", "unknown_name", "joint_twice", "root_six_columns", "not_strings"])
def test_name_refusals(tmp_path, names, match):
    np.savez(tmp_path / "q.npz", qpos=_trajectory(T=10), names=names)
    with pytest.raises(ClipError, match=match):
        import_qpos(tmp_path / "q.npz", tmp_path / "out", body="test", fps=25, names_key="names")


def test_missing_joint_is_named(tmp_path):
    keep = TEST_NAMES != "hip_HR"
    np.savez(tmp_path / "q.npz", qpos=_trajectory(T=10)[:, keep], names=TEST_NAMES[keep])
    with pytest.raises(ClipError, match=r"q\.npz, 'names' lacks joint 'walker/hip_HR' of body 'test'\."):
        import_qpos(tmp_path / "q.npz", tmp_path / "out", body="test", fps=25, names_key="names")


def test_unreadable_files_are_refused_without_unpickling(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive at all")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    good = tmp_path / "good.npz"
    np.savez(good, qpos=_trajectory(T=10))
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:200])
    np.save(tmp_path / "array.npy", _trajectory(T=10))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    (tmp_path / "pickled.npz").write_bytes(pickle.dumps({"qpos": _trajectory(T=10)}))
    np.savez(tmp_path / "objects.npz", qpos=np.array([_trajectory(T=10)], dtype=object))
    np.savetxt(tmp_path / "q.csv", _trajectory(T=10))
    for name, match in [("junk.npz", r"junk\.npz is not a readable \.npz file without pickled data"),
                        ("cut.npz", r"cut\.npz is not a readable \.npz file"),
                        ("array.npz", r"array\.npz is not an \.npz archive"),
                        ("pickled.npz", r"pickled\.npz is not a readable \.npz file without pickled data"),
                        ("objects.npz", r"objects\.npz is not a readable \.npz file without pickled data"),
                        ("junk.h5", r"junk\.h5 is not a readable HDF5 file"),
                        ("q.csv", r"q\.csv has suffix '\.csv', expected \.npz, \.h5 or \.hdf5"),
                        ("absent.npz", r"The qpos file .*absent\.npz does not exist")]:
        with pytest.raises(ClipError, match=match):
            import_qpos(tmp_path / name, tmp_path / "out", body="test", fps=25)
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["other"] = np.zeros(3)
    with pytest.raises(ClipError, match=r"empty\.h5 has no dataset 'qpos', at its top or in a group; "
                                        r"it holds \['other'\]"):
        import_qpos(tmp_path / "empty.h5", tmp_path / "out", body="test", fps=25)
    assert not (tmp_path / "out").exists()


def test_one_bad_clip_writes_nothing(tmp_path):
    bad = _trajectory(T=10)
    bad[6, 2] = np.nan
    np.savez(tmp_path / "three.npz", qpos=np.stack([_trajectory(T=10), bad, _trajectory(T=10)]))
    with pytest.raises(ClipError, match=r"three\.npz\[1\], 'qpos' holds nan at frame 6"):
        import_qpos(tmp_path / "three.npz", tmp_path / "out", body="test", fps=25)
    with h5py.File(tmp_path / "groups.h5", "w") as f:
        f["a/qpos"], f["b/qpos"] = _trajectory(T=10), _trajectory(T=10)[:, :9]
    with pytest.raises(ClipError, match=r"groups\.h5:/b, 'qpos' has width 9, expected nq 11"):
        import_qpos(tmp_path / "groups.h5", tmp_path / "out", body="test", fps=25)
    assert not (tmp_path / "out").exists()


def test_out_dir_with_clips_needs_overwrite(tmp_path):
    np.savez(tmp_path / "three.npz", qpos=np.stack([_trajectory(T=10)] * 3))
    np.savez(tmp_path / "one.npz", qpos=_trajectory(T=12))
    import_qpos(tmp_path / "three.npz", tmp_path / "out", body="test", fps=25)
    with pytest.raises(ClipError, match=r"out already holds clip files \(clip_0\.h5, clip_1\.h5, clip_2\.h5\); "
                                        r"pass overwrite=True"):
        import_qpos(tmp_path / "one.npz", tmp_path / "out", body="test", fps=25)
    import_qpos(tmp_path / "one.npz", tmp_path / "out", body="test", fps=25, overwrite=True)
    with ClipStore(tmp_path / "out") as store:  # the old clips beyond the new one are gone
        assert list(store.lengths) == [23]


def test_cli(tmp_path, capsys):
    np.savez(tmp_path / "q.npz", qpos=np.stack([_trajectory(T=10)] * 2))
    out = tmp_path / "out"
    args = ["import", "--qpos", str(tmp_path / "q.npz"), "--fps", "25", "--body", "test", "--out", str(out)]
    assert main(args) == 0
    assert capsys.readouterr().out == f"ncssm-data import: wrote 2 clips of 19 frames each (25 fps -> 50 Hz) to {out}\n"
    assert main(args) == 2
    assert "ncssm-data: error: The output folder" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--key", "pose"]) == 2
    assert capsys.readouterr().err == (f"ncssm-data: error: {tmp_path / 'q.npz'} has no array 'pose'; "
                                       f"it holds ['qpos'].\n")
    assert main([*args, "--overwrite", "--fps", "-1"]) == 2
    assert "fps is -1.0" in capsys.readouterr().err


def test_rodent_tracks_imported_motion(tmp_path, rodent_clips):
    """The rodent's path: a built-in clip's qpos (T, 74) imported as reference-only motion is
    tracked by the env; zero action runs on it through evaluate, with the expert skipped."""
    from ncssm_env.gym_env import TrackEnv
    from ncssm_policies.rollout import evaluate

    with ClipStore(rodent_clips) as store:
        np.savez(tmp_path / "motion.npz", qpos=store.read(0, "qpos")[:40])
    import_qpos(tmp_path / "motion.npz", tmp_path / "clips", body="rodent")
    env = TrackEnv(body="rodent", clip_dir=tmp_path / "clips", task={"reset_noise": 0})
    obs, _ = env.reset(seed=0, options={"clip": 0, "start": 5})
    assert not env.has_ctrl and obs.shape == (786,) and np.isfinite(obs).all()
    obs, rew, terminated, _, info = env.step(np.zeros(env.model.nu, np.float32))
    assert np.isfinite(obs).all() and rew > 0 and not terminated
    res = evaluate("zero", num_envs=2, episodes=2, clip_dir=tmp_path / "clips", body="rodent",
                   max_steps=10)
    assert res.summary["episodes"] == 2 and set(res.summary["baselines"]) == set()
    assert "expert baseline skipped" in res.summary["notes"][0]  # nothing to replay


@pytest.mark.skipif(not STAC.exists(), reason=f"{STAC} is not here")
def test_zero_action_on_the_stac_fit(tmp_path):
    """The README's example: the shared STAC fit, imported at 25 -> 50 Hz, tracked by zero
    action in the rodent on the CPU."""
    from ncssm_policies.rollout import evaluate

    import_qpos(STAC, tmp_path / "stac", body="rodent", fps=25, names_key="names_qpos",
                z_offset="floor")
    res = evaluate("zero", num_envs=2, episodes=2, clip_dir=tmp_path / "stac", body="rodent")
    assert res.summary["episodes"] == 2 and set(res.episodes["clip"]) == {0}
    assert np.isfinite(res.episodes["err_joints"]).all()
    # Lifted onto our floor, the body stands: zero action keeps it up to the clip's end.
    assert res.summary["survival"] == 1.0


def test_z_offset_lifts_the_motion_onto_the_floor(tmp_path, test_model):
    """``z_offset="floor"``: motion fitted against a floor 5 cm lower, sunk into ours, comes
    out with its lowest paw exactly on the floor at its deepest frame; a number adds to z."""
    from ncssm_env.importer import floor_distance

    q = _trajectory(T=30)
    np.savez(tmp_path / "sunk.npz", qpos=q - np.r_[0, 0, 0.05, np.zeros(q.shape[1] - 3)])
    paws = build_model("test", contacts="paws")
    assert floor_distance(paws, q) - floor_distance(paws, np.load(tmp_path / "sunk.npz")["qpos"]) \
        == pytest.approx(0.05, abs=1e-9)
    import_qpos(tmp_path / "sunk.npz", tmp_path / "floor", body="test", fps=25, z_offset="floor")
    import_qpos(tmp_path / "sunk.npz", tmp_path / "up", body="test", fps=25, z_offset=0.05)
    with ClipStore(tmp_path / "floor") as a, ClipStore(tmp_path / "up") as b:
        assert floor_distance(paws, a.read(0, "qpos")) == pytest.approx(0, abs=1e-9)
        lifted = b.read(0, "qpos")[::2]  # 25 -> 50 Hz; quaternions may flip sign
        np.testing.assert_allclose(np.delete(lifted, np.s_[3:7], 1), np.delete(q, np.s_[3:7], 1),
                                   atol=1e-9)
    with pytest.raises(ClipError, match="z_offset is 'sky'"):
        import_qpos(tmp_path / "sunk.npz", tmp_path / "bad", body="test", fps=25, z_offset="sky")
    assert main(["import", "--qpos", str(tmp_path / "sunk.npz"), "--body", "test", "--fps", "25",
                 "--out", str(tmp_path / "cli"), "--z-offset", "floor"]) == 0
