"""Keypoint readers (ncssm_data.keypoints): each format round-trips a small file written here,
the shared real recordings read alike as NWB and .mat, and bad files are one sentence."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from ncssm_data.errors import ClipError
from ncssm_data.keypoints import read_keypoints

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
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
