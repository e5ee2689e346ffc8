"""Keypoint readers (ncssm_data.keypoints): each format round-trips a small file written here,
the shared real recordings read alike as NWB and .mat, and bad files are one sentence."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from ncssm_data.errors import ClipError
from ncssm_data.keypoints import read_keypoints

REAL = Path(os.environ.get("NCSSM_REAL_DATA",
                          Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
NAMES = ("Snout", "SpineF", "HandL", "FootR")
T, FPS = 12, 50.0


def _xyz(seed=0) -> np.ndarray:
    xyz = np.random.default_rng(seed).normal(0, 40, (T, len(NAMES), 3))
    xyz[3, 1] = np.nan  # a missing keypoint
    return xyz


def write_nwb(path: Path, animals: dict[str, np.ndarray], *, nodes=True, rate=False) -> Path:
    """ndx-pose's layout as ndx-pose 0.1.x writes it (h5py alone, as labs' old files are)."""
    with h5py.File(path, "w") as f:
        behavior = f.create_group("processing/behavior")
        for animal, xyz in animals.items():
            group = behavior.create_group(animal)
            group.attrs["neurodata_type"] = "PoseEstimation"
            if nodes:
                group.create_dataset("nodes", data=np.array(NAMES, dtype=h5py.string_dtype()))
            group.create_dataset("edges", data=np.zeros((0,), np.uint8))
            for k, name in reversed(list(enumerate(NAMES))):  # stored order != node order
                series = group.create_group(name)
                series.attrs["neurodata_type"] = "PoseEstimationSeries"
                series.create_dataset("data", data=xyz[:, k]).attrs["unit"] = "pixels"
                series.create_dataset("confidence", data=np.full(T, 0.5 + 0.01 * k))
                if rate:
                    series.create_dataset("starting_time", data=2.0).attrs["rate"] = FPS
                else:
                    series.create_dataset("timestamps", data=2.0 + np.arange(T) / FPS)
    return path


def test_nwb_round_trip(tmp_path):
    xyz = _xyz()
    kp = read_keypoints(write_nwb(tmp_path / "a.nwb", {"PoseEstimation": xyz}))
    assert kp.names == NAMES  # the group's nodes give the order
    np.testing.assert_array_equal(kp.xyz, xyz)
    np.testing.assert_allclose(kp.times, 2.0 + np.arange(T) / FPS)
    assert kp.fps == pytest.approx(FPS) and kp.unit == "pixels"  # stated, not trusted
    np.testing.assert_allclose(kp.confidence[0], 0.5 + 0.01 * np.arange(len(NAMES)))
    # without nodes the series come in name order; starting_time with a rate gives the clock
    kp = read_keypoints(write_nwb(tmp_path / "b.nwb", {"PoseEstimation": xyz}, nodes=False,
                                  rate=True))
    assert kp.names == tuple(sorted(NAMES))
    np.testing.assert_allclose(kp.times, 2.0 + np.arange(T) / FPS)


def test_nwb_with_several_animals_needs_animal(tmp_path):
    path = write_nwb(tmp_path / "two.nwb", {"PoseEstimation_rat1": _xyz(1),
                                            "PoseEstimation_rat2": _xyz(2)})
    with pytest.raises(ClipError) as err:
        read_keypoints(path)
    assert str(err.value) == (f"NWB file {path} holds 2 animals (PoseEstimation_rat1, "
                              f"PoseEstimation_rat2); pick one with --animal.")
    kp = read_keypoints(path, animal="PoseEstimation_rat2")
    np.testing.assert_array_equal(kp.xyz, _xyz(2))
    assert kp.animal == "PoseEstimation_rat2"
    with pytest.raises(ClipError, match="has no animal 'rat3'; it holds PoseEstimation_rat1"):
        read_keypoints(path, animal="rat3")


@pytest.mark.parametrize("v73", [False, True])
def test_dannce_mat_round_trip(tmp_path, v73):
    xyz = _xyz()
    pred = np.transpose(xyz, (0, 2, 1))  # DANNCE's (T, 3, K)
    path = tmp_path / "pred.mat"
    if v73:  # MATLAB v7.3 is HDF5 holding the transposed array
        with h5py.File(path, "w") as f:
            f["pred"] = pred.T
    else:
        scipy.io.savemat(path, {"pred": pred})
    kp = read_keypoints(path, names=NAMES, fps=FPS)
    np.testing.assert_array_equal(kp.xyz, xyz)
    assert kp.names == NAMES and kp.fps == pytest.approx(FPS) and kp.confidence is None


def write_sleap(path: Path, tracks: np.ndarray, names=("rat1",)) -> Path:
    """SLEAP's analysis export as h5py reads it: tracks (n_tracks, D, K, T)."""
    with h5py.File(path, "w") as f:
        f["tracks"] = tracks
        f["node_names"] = np.array(NAMES, dtype=h5py.string_dtype())
        f["track_names"] = np.array(names, dtype=h5py.string_dtype())
        f["point_scores"] = np.full((len(names), len(NAMES), tracks.shape[-1]), 0.9)
    return path


def test_sleap_analysis_round_trip(tmp_path):
    xyz = _xyz()
    one = np.transpose(xyz, (2, 1, 0))[None]  # (1, 3, K, T)
    kp = read_keypoints(write_sleap(tmp_path / "a.h5", one), fps=FPS)
    np.testing.assert_array_equal(kp.xyz, xyz)
    assert kp.names == NAMES and kp.confidence.shape == (T, len(NAMES))
    two = write_sleap(tmp_path / "two.h5", np.concatenate([one, one + 1]), names=("a", "b"))
    with pytest.raises(ClipError, match=r"holds 2 animals \(a, b\); pick one with --animal"):
        read_keypoints(two, fps=FPS)
    np.testing.assert_array_equal(read_keypoints(two, fps=FPS, animal="b").xyz, xyz + 1)
    flat = write_sleap(tmp_path / "flat.h5", one[:, :2])
    with pytest.raises(ClipError, match="holds 2D points; the fit needs 3D keypoints"):
        read_keypoints(flat, fps=FPS)


def test_bad_keypoint_files_are_one_sentence(tmp_path):
    good = write_nwb(tmp_path / "good.nwb", {"PoseEstimation": _xyz()})
    truncated = tmp_path / "cut.nwb"
    truncated.write_bytes(good.read_bytes()[:300])
    cases = {
        truncated: (dict(), "is not a readable HDF5 file (truncated or corrupt?)"),
        tmp_path / "x.csv": (dict(), "has extension '.csv', which names no format"),
        tmp_path / "missing.nwb": (dict(), "does not exist"),
        good: (dict(format="trc"), "Keypoint format 'trc' is unknown"),
    }
    (tmp_path / "x.csv").write_text("1,2,3\n")
    bad_pred = tmp_path / "bad.mat"
    scipy.io.savemat(bad_pred, {"pred": np.zeros((5, 4, 2))})
    cases[bad_pred] = (dict(names=("a", "b"), fps=30.0), "pred has shape (5, 4, 2)")
    cases[tmp_path / "nonames.mat"] = (dict(), "names no keypoints and no frame rate")
    scipy.io.savemat(tmp_path / "nonames.mat", {"pred": np.zeros((5, 3, 2))})
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    cases[garbage] = (dict(names=("a",), fps=30.0), "is not a readable MATLAB file")
    inf = _xyz()
    inf[0, 0, 0] = np.inf
    cases[write_nwb(tmp_path / "inf.nwb", {"PoseEstimation": inf})] = (dict(), "holds Inf")
    for path, (kwargs, fragment) in cases.items():
        with pytest.raises(ClipError) as err:
            read_keypoints(path, **kwargs)
        text = str(err.value)
        assert fragment in text and text.count(". ") == 0 and text.endswith("."), text
        assert str(path) in text or "format 'trc'" in text


@pytest.mark.skipif(not (REAL / "rat_dannce_keypoints_1000.nwb").is_file(),
                    reason="../shared/data/real is not here")
def test_the_shared_rat_reads_alike_from_nwb_and_mat():
    nwb = read_keypoints(REAL / "rat_dannce_keypoints_1000.nwb")  # ndx-pose 0.1.1's file
    assert nwb.xyz.shape == (1000, 23, 3) and nwb.names[:3] == ("Snout", "EarL", "EarR")
    assert nwb.fps == pytest.approx(30.0) and nwb.unit == "pixels"  # it holds millimetres
    mat = read_keypoints(REAL / "rat_dannce_keypoints_1000.mat", names=nwb.names, fps=30.0)
    np.testing.assert_array_equal(mat.xyz, nwb.xyz)


# --- the keypoint map and the units (ncssm_env.keypoint_fit) -----------------------------------

REPO = Path(__file__).resolve().parents[1]
MAP = REPO / "configs" / "keypoints_rodent.yaml"


@pytest.fixture(scope="module")
def rodent():
    from ncssm_env.body import build_model

    return build_model("rodent")


def _recorded(rodent, scale: float) -> "object":
    """The map's keypoints on the rodent in 6 poses (qpos0 and 5 random joint perturbations),
    times ``scale``, as a recording."""
    from ncssm_data.keypoints import Keypoints
    from ncssm_env.keypoint_fit import load_keypoint_map, map_positions

    kmap = load_keypoint_map(MAP, rodent)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(6):
        qpos = rodent.qpos0.copy()
        qpos[7:] += 0.2 * rng.standard_normal(rodent.nq - 7) * (i > 0)
        frames.append(map_positions(rodent, kmap, qpos) * scale)
    return Keypoints(np.stack(frames), kmap.names, np.arange(6) / 30.0, None, None,
                     "synthetic.nwb"), kmap


@pytest.mark.parametrize("unit, scale", [("m", 1.0), ("cm", 100.0), ("mm", 1000.0)])
def test_units_are_detected_from_bone_lengths(rodent, unit, scale):
    from ncssm_env.keypoint_fit import detect_units

    recorded, kmap = _recorded(rodent, scale * 1.1)  # an animal 10% larger than the body
    got, ratio = detect_units(recorded, rodent, kmap)
    assert got == unit and 0.9 < ratio < 1.3


def test_units_off_by_1000_are_one_sentence(rodent):
    from ncssm_env.keypoint_fit import detect_units

    recorded, kmap = _recorded(rodent, 1e6)  # micrometres
    with pytest.raises(ClipError) as err:
        detect_units(recorded, rodent, kmap)
    assert str(err.value).startswith("Keypoint file synthetic.nwb is 1e+06 times the body's "
                                     "size in metres, which matches no unit (m, cm, mm)")


def test_bad_keypoint_maps_are_one_sentence(rodent, tmp_path):
    from ncssm_data.keypoints import Keypoints
    from ncssm_env.keypoint_fit import load_keypoint_map

    recorded = Keypoints(np.zeros((2, 2, 3)), ("Snout", "HandL"), np.arange(2.0), None, None,
                         "rec.nwb")
    cases = {
        "Snout: {body: skul}\n": "keypoint 'Snout' sits on body 'skul', which the model does "
                                 "not have (did you mean 'skull'?).",
        "Snot: {body: skull}\n": "names keypoint 'Snot', which rec.nwb does not have (did you "
                                 "mean 'Snout'?); it has Snout, HandL.",
        "Snout: {body: skull, offset: [0, 1]}\n": "has offset [0, 1], expected 3 finite numbers",
        "Snout: {body: skull, offset: [0, 0, 5]}\n": "(each within 0.5)",
        "Snout: skull\n": "must be {body: BODY, offset: [x, y, z]}",
    }
    for i, (body, fragment) in enumerate(cases.items()):
        path = tmp_path / f"map{i}.yaml"
        path.write_text("keypoints:\n  " + body)
        with pytest.raises(ClipError) as err:
            load_keypoint_map(path, rodent, recorded)
        assert fragment in str(err.value) and str(err.value).startswith(f"Keypoint map {path}")


@pytest.mark.skipif(not (REAL / "rat_dannce_keypoints_1000.nwb").is_file(),
                    reason="../shared/data/real is not here")
def test_the_shared_rat_is_in_millimetres(rodent):
    from ncssm_env.keypoint_fit import detect_units, load_keypoint_map

    recorded = read_keypoints(REAL / "rat_dannce_keypoints_1000.nwb")  # says "pixels"
    unit, ratio = detect_units(recorded, rodent, load_keypoint_map(MAP, rodent, recorded))
    assert unit == "mm" and 0.8 < ratio < 1.05  # the rat is about 0.92 times the body


# --- the fit (mink IK and the offsets) ---------------------------------------------------------

def _synthetic(rodent, qpos: np.ndarray, off_mm: float):
    """Keypoints of ``qpos`` (T, nq) at offsets ``off_mm`` per axis off the map's, with 0.5 mm
    noise per axis: (xyz (T, K, 3), map, true map)."""
    import dataclasses

    import mujoco

    from ncssm_env.keypoint_fit import fitting_model, load_keypoint_map

    kmap = load_keypoint_map(MAP, rodent)
    rng = np.random.default_rng(0)
    true = dataclasses.replace(kmap, offsets=kmap.offsets + rng.normal(0, off_mm / 1000, (23, 3)))
    model, sites = fitting_model("rodent", true)
    data, xyz = mujoco.MjData(model), np.empty((len(qpos), len(sites), 3))
    for t, q in enumerate(qpos):
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        xyz[t] = data.site_xpos[sites]
    return xyz + rng.normal(0, 5e-4, xyz.shape), kmap, true


@pytest.fixture(scope="module")
def synthetic(rodent, rodent_clips):
    """60 frames (every other frame) of a built-in rodent clip (known qpos) and their keypoints
    at offsets 3 mm per axis off the map's: (qpos (T, nq), xyz (T, K, 3), map, true map)."""
    with h5py.File(sorted(Path(rodent_clips).glob("clip_*.h5"))[0]) as f:
        qpos = f["qpos"][:120:2]
    return (qpos, *_synthetic(rodent, qpos, 3.0))


def test_the_fit_recovers_known_joint_angles_and_offsets(rodent, synthetic):
    """The whole fit (offsets and poses), from offsets 1 mm per axis off the truth: every hinge
    the keypoints pin down (>= 1 cm of keypoint motion per radian that no other joint can undo)
    comes back within 0.05 rad RMS, and every offset within 5 mm. The other hinges (tail, toes,
    fingers, the vertebrae between two spine keypoints) are the posture task's."""
    from ncssm_env.keypoint_fit import determined_joints, fit_keypoints, fitting_model

    qpos = synthetic[0]
    xyz, kmap, true = _synthetic(rodent, qpos, 1.0)
    fit = fit_keypoints(xyz, "rodent", kmap)  # the default config: 4 rounds
    adr, score = determined_joints(*fitting_model("rodent", true), qpos)
    pinned = adr[score >= 0.01]
    assert 12 <= len(pinned) <= 30 and len(adr) == 67  # the limbs' joints, not the tail's
    rms = float(np.sqrt(np.mean((fit.qpos[:, pinned] - qpos[:, pinned]) ** 2)))
    assert rms <= 0.05, rms
    assert np.linalg.norm(fit.offsets - true.offsets, axis=1).max() <= 0.005
    assert np.nanmedian(fit.residual) < 1e-3  # the noise is 0.5 mm per axis
    assert not fit.interpolated.any() and fit.limit_hits.shape == (60,)


def test_the_offsets_are_fitted_with_the_frames(synthetic):
    """From 3 mm per axis off, the offsets come closer (a joint angle and the offset of the one
    keypoint on its segment trade, so not all the way: see the README)."""
    from ncssm_env.keypoint_fit import FitConfig, fit_keypoints

    _, xyz, kmap, true = synthetic
    before = np.linalg.norm(kmap.offsets - true.offsets, axis=1)
    fit = fit_keypoints(xyz, "rodent", kmap, FitConfig(rounds=2))
    after = np.linalg.norm(fit.offsets - true.offsets, axis=1)
    assert np.median(after) < 0.7 * np.median(before), (before, after)
    assert np.nanmedian(fit.residual) < 1e-3


def test_missing_keypoints_and_empty_frames(synthetic):
    from ncssm_env.keypoint_fit import FitConfig, fit_keypoints

    _, xyz, _, true = synthetic
    xyz = xyz[:12].copy()
    xyz[:, 0] = np.nan  # Snout never seen: skipped, no residual
    xyz[5, 3:] = np.nan  # frame 5 keeps 2 keypoints: interpolated and marked
    fit = fit_keypoints(xyz, "rodent", true, FitConfig(rounds=0))
    assert np.isnan(fit.residual[:, 0]).all() and fit.interpolated.tolist() == [
        t == 5 for t in range(12)]
    np.testing.assert_allclose(fit.qpos[5, 7:], (fit.qpos[4, 7:] + fit.qpos[6, 7:]) / 2, atol=1e-12)
    with pytest.raises(ClipError, match="No frame has 6 or more keypoints present"):
        fit_keypoints(np.full_like(xyz, np.nan), "rodent", true)


# --- ncssm-data fit-keypoints --------------------------------------------------------------------


def _nwb(path: Path, xyz: np.ndarray, names, fps: float) -> Path:
    """One animal's keypoints ``xyz`` (T, K, 3) in ndx-pose's layout, stated as pixels."""
    with h5py.File(path, "w") as f:
        group = f.create_group("processing/behavior/PoseEstimation")
        group.attrs["neurodata_type"] = "PoseEstimation"
        group.create_dataset("nodes", data=np.array(names, dtype=h5py.string_dtype()))
        for k, name in enumerate(names):
            series = group.create_group(name)
            series.create_dataset("data", data=xyz[:, k]).attrs["unit"] = "pixels"
            series.create_dataset("timestamps", data=10.0 + np.arange(len(xyz)) / fps)
    return path


def test_fit_keypoints_writes_clips_provenance_and_report(synthetic, tmp_path, capsys):
    """The command on 20 frames (50 fps, mm) with a 3-frame hole: one clip with the hole
    interpolated and marked, or, with --max-gap below the hole, two clips each saying where
    in the recording it starts; the report, the figure and the video beside them."""
    import json

    from ncssm_data import ClipStore
    from ncssm_policies.data_cli import main

    _, xyz, kmap, _ = synthetic
    xyz = xyz[:20] * 1000.0  # millimetres, as DANNCE writes them
    xyz[10:13] = np.nan
    rec = _nwb(tmp_path / "rat.nwb", xyz, kmap.names, 50.0)
    config = tmp_path / "map.yaml"
    config.write_text(MAP.read_text().replace("rounds: 4 ", "rounds: 1 "))  # faster
    args = ["fit-keypoints", "--keypoints", str(rec), "--config", str(config)]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    printed = capsys.readouterr().out
    assert "in mm (detected; the file says pixels)" in printed and "wrote 1 clip" in printed
    report = json.loads((tmp_path / "one" / "fit_report.json").read_text())
    assert report["units"] == "mm" and report["fit"]["rounds"] == 1
    assert report["residual_mm"]["median"] < 3.0 and report["interpolated_frames"] == 3
    assert set(report["residual_per_keypoint"]) == set(kmap.names)
    assert abs(report["z_lift_m"]) < 0.02  # the built-in clip's paws were on the floor
    with ClipStore(tmp_path / "one") as store:
        assert list(store.lengths) == [20] and store.body == "rodent"
        info = store.provenance(0)
        assert info["source"] == str(rec.resolve()) and info["source_start_s"] == 10.0
        assert info["interpolated"].tolist() == [10, 11, 12]
    for name in ("fit_residuals.png", "fit.mp4"):
        assert (tmp_path / "one" / name).stat().st_size > 1000

    assert main([*args, "--out", str(tmp_path / "two"), "--max-gap", "0.04", "--no-video"]) == 0
    with ClipStore(tmp_path / "two") as store:
        assert list(store.lengths) == [10, 7]
        assert [store.provenance(i)["source_start_s"] for i in range(2)] == [10.0, 10.26]
        assert store.provenance(1)["interpolated"].size == 0
    assert not (tmp_path / "two" / "fit.mp4").exists()


def test_fit_keypoints_refuses_empty_and_sparse_recordings(synthetic, tmp_path, capsys):
    from ncssm_policies.data_cli import main

    _, xyz, kmap, _ = synthetic
    cases = {"empty": (np.full_like(xyz[:8], np.nan), "has no keypoint present in any of its "
                                                       "8 frames (all NaN)."),
             "sparse": (xyz[:8].copy(), "No frame has 6 or more keypoints present (of 23)")}
    cases["sparse"][0][:, 4:] = np.nan  # 4 keypoints per frame: too few for any frame
    for name, (bad, sentence) in cases.items():
        rec = _nwb(tmp_path / f"{name}.nwb", bad * 1000.0, kmap.names, 50.0)
        out = tmp_path / name
        assert main(["fit-keypoints", "--keypoints", str(rec), "--out", str(out),
                     "--units", "mm"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ncssm-data: error: ") and sentence in err and "\n" not in err
        assert not list(out.glob("clip_*.h5"))


def test_bad_keypoint_configs_are_one_sentence(tmp_path, capsys):
    from ncssm_env.keypoint_fit import load_fit_config
    from ncssm_policies.data_cli import main

    good = MAP.read_text()
    cases = {
        "fit:\n  round: 2\n": "fit key 'round' is unknown (did you mean 'rounds'?)",
        "fit:\n  rounds: -1\n": "fit.rounds is -1, expected a non-negative int.",
        "fit: [1]\n": "'fit' is [1], expected a mapping of posture_cost",
        "fits: {}\n": "has unknown key 'fits'; known keys are body, keypoints, fit.",
        "a: &a [*a, *a]\n": "has unknown key 'a'",
        "fit: !!python/object:os.system {}\n": "cannot be read as YAML (ConstructorError).",
    }
    for i, (extra, sentence) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(good.split("fit:")[0] + extra)
        with pytest.raises(ClipError) as err:
            load_fit_config(path)
        assert sentence in str(err.value) and str(err.value).startswith(f"Keypoint config {path}")
    # the body the config maps onto is checked before the recording is read
    assert main(["fit-keypoints", "--keypoints", str(tmp_path / "absent.nwb"), "--out",
                 str(tmp_path / "out"), "--body", "test"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "maps keypoints onto body 'rodent', not 'test'; give a config for 'test'.")
