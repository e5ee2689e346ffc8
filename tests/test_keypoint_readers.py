"""Keypoint readers through pynwb + ndx-pose and sleap-io (ncssm_data.keypoints): an ndx-pose 0.4
file reads alike through pynwb and through h5py, the shared ndx-pose 0.1.1 file (which pynwb
refuses) falls back to h5py, a 3D .slp round-trips, and bad files are one sentence."""

import datetime
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from ncssm_data import keypoints
from ncssm_data.errors import ClipError
from ncssm_data.keypoints import read_keypoints
from test_keypoints import FPS, NAMES, T, _xyz

pynwb = pytest.importorskip("pynwb")
ndx_pose = pytest.importorskip("ndx_pose")
sio = pytest.importorskip("sleap_io")

REAL = Path(os.environ.get("NCSSM_REAL_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "real"))
FIELDS = ("xyz", "names", "times", "confidence", "unit", "source", "animal")


def _same(a, b) -> None:
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def _through_h5py(monkeypatch, path, **kwargs):
    """``read_keypoints`` as without pynwb installed (an import of it fails)."""
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pynwb", None)
        return read_keypoints(path, **kwargs)


def _conf(k: int) -> np.ndarray:
    return 0.5 + 0.01 * k + 0.001 * np.arange(T)


def write_nwb4(path: Path, animals: dict[str, np.ndarray], *, kind="PoseEstimation",
               rate=False) -> Path:
    """What ndx-pose 0.4 writes: a Subject, a Skeleton in Skeletons, one pose group per animal
    (series stored in reverse node order; the first series' timestamps shared by the others)."""
    from pynwb.file import Subject

    nwb = pynwb.NWBFile(session_description="rat", identifier="kp",
                        session_start_time=datetime.datetime(2024, 1, 1,
                                                             tzinfo=datetime.timezone.utc),
                        subject=Subject(subject_id="rat1", species="Rattus norvegicus"))
    behavior = nwb.create_processing_module("behavior", "keypoints")
    skeletons = []
    for animal, xyz in animals.items():
        skeleton = ndx_pose.Skeleton(name=f"{animal}_skeleton", nodes=list(NAMES),
                                     edges=np.array([[0, 1], [1, 2], [1, 3]], np.uint8),
                                     subject=nwb.subject)
        skeletons.append(skeleton)
        series = []
        for k, name in reversed(list(enumerate(NAMES))):
            clock = (dict(starting_time=2.0, rate=FPS) if rate else
                     dict(timestamps=series[0] if series else 2.0 + np.arange(T) / FPS))
            series.append(ndx_pose.PoseEstimationSeries(
                name=name, description=name, data=xyz[:, k], unit="mm", reference_frame="arena",
                confidence=_conf(k), **clock))
        group = getattr(ndx_pose, kind)
        behavior.add(group(name=animal, pose_estimation_series=series, skeleton=skeleton,
                           description="DANNCE", source_software="DANNCE"))
    behavior.add(ndx_pose.Skeletons(skeletons=skeletons))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@pytest.mark.parametrize("kind, rate", [("PoseEstimation", False),
                                        ("MultiCameraPoseEstimation", True)])
def test_an_ndx_pose_04_file_reads_alike_through_pynwb_and_h5py(tmp_path, monkeypatch, kind,
                                                                 rate):
    xyz = _xyz()
    path = write_nwb4(tmp_path / "a.nwb", {"rat": xyz}, kind=kind, rate=rate)
    assert keypoints._pose_via_pynwb(path, None) is not None  # pynwb builds this file
    kp = read_keypoints(path)
    assert kp.names == NAMES  # the linked Skeleton's nodes give the order
    np.testing.assert_array_equal(kp.xyz, xyz)  # the NaN included
    np.testing.assert_allclose(kp.times, 2.0 + np.arange(T) / FPS)
    np.testing.assert_array_equal(kp.confidence, np.stack([_conf(k) for k in range(4)], 1))
    assert kp.unit == "mm" and kp.animal is None and kp.fps == pytest.approx(FPS)
    _same(kp, _through_h5py(monkeypatch, path))


def test_several_animals_are_picked_alike_through_pynwb_and_h5py(tmp_path, monkeypatch):
    path = write_nwb4(tmp_path / "two.nwb", {"rat1": _xyz(1), "rat2": _xyz(2)})
    for read in (read_keypoints, lambda p, **kw: _through_h5py(monkeypatch, p, **kw)):
        with pytest.raises(ClipError) as err:
            read(path)
        assert str(err.value) == (f"NWB file {path} holds 2 animals (rat1, rat2); pick one "
                                  f"with --animal.")
    kp = read_keypoints(path, animal="rat2")
    np.testing.assert_array_equal(kp.xyz, _xyz(2))
    assert kp.animal == "rat2"
    _same(kp, _through_h5py(monkeypatch, path, animal="rat2"))


@pytest.mark.skipif(not (REAL / "rat_dannce_keypoints_1000.nwb").is_file(),
                    reason="../shared/data/real is not here")
def test_the_shared_ndx_pose_011_file_falls_back_to_h5py():
    path = REAL / "rat_dannce_keypoints_1000.nwb"
    # pynwb with ndx-pose 0.4 refuses it ("incorrect shape for edges: got (0,)")
    assert keypoints._pose_via_pynwb(path, None) is None
    nwb = read_keypoints(path)
    assert nwb.xyz.shape == (1000, 23, 3) and nwb.names[:3] == ("Snout", "EarL", "EarR")
    mat = read_keypoints(REAL / "rat_dannce_keypoints_1000.mat", names=nwb.names, fps=30.0)
    np.testing.assert_array_equal(mat.xyz, nwb.xyz)
    np.testing.assert_allclose(nwb.times - nwb.times[0], mat.times)


def write_slp(path: Path, animals: dict[str, np.ndarray], *, fps=FPS, missing=(),
              identity=False, flat=False) -> Path:
    """SLEAP labels of a 2-camera recording session: per frame and animal, a 2D instance per
    camera on the animal's track and their InstanceGroup with the 3D points and point scores
    (``missing``: (animal, frame) pairs left out; ``flat``: 2D instances only, no session)."""
    skeleton = sio.Skeleton(list(NAMES))
    cameras = [sio.Camera(name=f"cam{i}", rvec=np.zeros(3), tvec=np.array([0.0, 0.0, i]))
               for i in range(2)]
    videos = [sio.Video(filename=f"cam{i}.mp4", open_backend=False) for i in range(2)]
    session = sio.RecordingSession(camera_group=sio.CameraGroup(cameras=cameras))
    for video, camera in zip(videos, cameras):
        video.fps = fps
        session.add_video(video, camera)
    tracks = {a: sio.Track(name=a) for a in animals}
    frames = []
    for t in range(T):
        lfs = {c: sio.LabeledFrame(video=v, frame_idx=t, instances=[])
               for v, c in zip(videos, cameras)}
        groups = []
        for a, xyz in animals.items():
            if (a, t) in missing:
                continue
            scores = np.array([_conf(k)[t] for k in range(len(NAMES))])
            by_camera = {}
            for c in cameras:
                by_camera[c] = sio.PredictedInstance.from_numpy(
                    xyz[t, :, :2], skeleton=skeleton, track=tracks[a], point_scores=scores,
                    score=1.0)
                lfs[c].instances.append(by_camera[c])
            groups.append(sio.InstanceGroup(
                instance_by_camera=by_camera,
                identity=sio.Identity(name=a) if identity else None,
                instance_3d=sio.PredictedInstance3D(points=xyz[t], skeleton=skeleton,
                                                    point_scores=scores)))
        frames.extend(lfs.values())
        if groups and not flat:
            session.frame_groups[t] = sio.FrameGroup(frame_idx=t, instance_groups=groups,
                                                     labeled_frame_by_camera=lfs)
    labels = sio.Labels(labeled_frames=frames, videos=videos, skeletons=[skeleton],
                        tracks=list(tracks.values()), sessions=[] if flat else [session])
    sio.save_slp(labels, str(path), verbose=False)
    return path


def test_a_3d_slp_round_trips(tmp_path):
    one, two = _xyz(1), _xyz(2)
    path = write_slp(tmp_path / "two.slp", {"rat1": one, "rat2": two},
                     missing={("rat2", 5), ("rat2", 0)})
    with pytest.raises(ClipError) as err:
        read_keypoints(path)  # the tracks name the animals
    assert str(err.value) == (f"SLEAP file {path} holds 2 animals (rat1, rat2); pick one with "
                              f"--animal.")
    kp = read_keypoints(path, animal="rat2")
    assert kp.names == NAMES and kp.animal == "rat2" and kp.unit is None
    want = two[1:].copy()  # frames 1..T-1: frame 0 unlabelled, frame 5 a gap
    want[5 - 1] = np.nan
    np.testing.assert_array_equal(kp.xyz, want)
    assert np.isnan(kp.xyz[3 - 1, 1]).all()  # _xyz's missing keypoint
    np.testing.assert_allclose(kp.times, np.arange(1, T) / FPS)  # the videos' fps, frame clock
    conf = np.stack([_conf(k) for k in range(len(NAMES))], 1)[1:]
    conf[5 - 1] = np.nan
    np.testing.assert_allclose(kp.confidence, conf)
    np.testing.assert_array_equal(read_keypoints(path, animal="rat1").xyz, one)
    # identities name the animals too; videos that state no fps need --fps
    path = write_slp(tmp_path / "one.slp", {"mouse": one}, fps=None, identity=True)
    with pytest.raises(ClipError, match="states no frame rate .*; give --fps"):
        read_keypoints(path)
    kp = read_keypoints(path, fps=25.0)
    np.testing.assert_array_equal(kp.xyz, one)
    assert kp.fps == pytest.approx(25.0) and kp.animal is None


def test_bad_slp_and_nwb_files_are_one_sentence(tmp_path, monkeypatch):
    good = write_slp(tmp_path / "good.slp", {"rat1": _xyz()})
    cut = tmp_path / "cut.slp"
    cut.write_bytes(good.read_bytes()[:2000])
    (tmp_path / "junk.slp").write_bytes(b"not a SLEAP file" * 20)
    import h5py

    with h5py.File(tmp_path / "other.slp", "w") as f:
        f["x"] = 1
    empty = pynwb.NWBFile(session_description="no pose", identifier="x",
                          session_start_time=datetime.datetime(2024, 1, 1,
                                                               tzinfo=datetime.timezone.utc))
    with pynwb.NWBHDF5IO(str(tmp_path / "empty.nwb"), "w") as io:
        io.write(empty)
    cases = {
        cut: "is not a readable HDF5 file (truncated or corrupt?)",
        tmp_path / "junk.slp": "is not a readable HDF5 file (truncated or corrupt?)",
        tmp_path / "other.slp": "is not SLEAP labels that sleap-io reads (KeyError: ",
        write_slp(tmp_path / "flat.slp", {"rat1": _xyz()}, flat=True):
            "holds 2D points; the fit needs 3D keypoints",
        tmp_path / "empty.nwb": "holds no ndx-pose PoseEstimation group under processing/",
    }
    for path, fragment in cases.items():
        for read in (read_keypoints, lambda p: _through_h5py(monkeypatch, p)):
            with pytest.raises(ClipError) as err:
                read(path)
            text = str(err.value)
            one = text.replace("e.g. ", "").count(". ") == 0 and text.endswith(".")
            assert fragment in text and one, text
            assert str(path) in text
    with pytest.raises(ClipError, match="has no animal 'rat9'; it holds rat1"):
        read_keypoints(good, animal="rat9")
    with monkeypatch.context() as m:  # sleap-io not installed
        m.setitem(sys.modules, "sleap_io", None)
        with pytest.raises(ClipError, match=r"needs sleap-io \(pip install 'ncssm\[keypoints\]'\)"):
            read_keypoints(good)
