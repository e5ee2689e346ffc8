"""Tests of ncssm_data clips and layouts: round trips, slice reads, atomic writes, bad input."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import ncssm_data.clips as clips
from ncssm_data import LEGACY_LAYOUT, SCHEMA_VERSION, ClipError, ClipStore, write_clip
from ncssm_data.layout import check_layout, layout_from_json, layout_to_json, obs_slice

LAYOUT = {"ref": (0, 8), "ref_pos": (0, 5), "ref_vel": (5, 8), "qpos_local": (8, 12)}
META = dict(obs_layout=LAYOUT, body="test_body", control_dt=0.02, generator="tests")


def make_arrays(T: int = 30, seed: int = 0, full: bool = True) -> dict[str, np.ndarray]:
    """Small random clip: obs (T, 12), ctrl (T, 3), and if ``full`` every optional dataset."""
    rng = np.random.default_rng(seed)
    arrays = {
        "obs": rng.normal(size=(T, 12)).astype(np.float32),
        "ctrl": rng.uniform(-1, 1, size=(T, 3)).astype(np.float32),
    }
    if full:
        arrays |= {
            "latent_mean": rng.normal(size=(T, 4)).astype(np.float32),
            "syllables": rng.integers(0, 5, size=T),
            "qpos": rng.normal(size=(T, 7)),
            "qvel": rng.normal(size=(T, 6)),
            "act": rng.normal(size=(T, 3)),
        }
    return arrays


def write_raw(path: Path, attrs: dict | None = None, **datasets: np.ndarray) -> Path:
    """An HDF5 file written directly with h5py, bypassing write_clip's checks."""
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


def esc(x: object) -> str:
    return re.escape(str(x))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- round trips


def test_round_trip_all_datasets_and_attrs(tmp_path: Path) -> None:
    arrays = make_arrays(T=100)
    out = write_clip(tmp_path / "clip_0.h5", arrays, **META)
    assert out == tmp_path / "clip_0.h5"
    assert leftovers(tmp_path) == ["clip_0.h5"]

    with ClipStore(tmp_path) as store:
        assert len(store) == 1
        assert store.paths == [out]
        np.testing.assert_array_equal(store.lengths, [100])
        assert store.keys == set(arrays)
        assert store.has("qvel") and not store.has("nope")
        assert store.dims == {
            "obs": (12,), "ctrl": (3,), "latent_mean": (4,), "syllables": (), "qpos": (7,), "qvel": (6,), "act": (3,)
        }
        assert store.body == "test_body"
        assert store.control_dt == pytest.approx(0.02)
        assert store.obs_layout == LAYOUT
        got = store.read_clip(0)
    assert set(got) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert got["obs"].dtype == np.float32 and got["latent_mean"].dtype == np.float32
    assert got["qpos"].dtype == np.float64 and got["act"].dtype == np.float64  # exact replay
    assert got["syllables"].dtype == np.int32

    with h5py.File(out, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert f.attrs["generator"] == "tests"
        assert layout_from_json(f.attrs["obs_layout"], "x") == LAYOUT
        assert f["obs"].chunks == (64, 12)
        assert f["syllables"].chunks == (64,)
        assert f["obs"].compression is None


def test_float64_obs_stored_as_float32_and_qpos_kept_exact(tmp_path: Path) -> None:
    arrays = make_arrays(T=5, full=False)
    arrays["obs"] = arrays["obs"].astype(np.float64) + 1e-12
    arrays["qpos"] = np.full((5, 2), 1 + 1e-15)
    write_clip(tmp_path / "clip_0.h5", arrays, **META)
    store = ClipStore(tmp_path)
    assert store.read(0, "obs").dtype == np.float32
    np.testing.assert_array_equal(store.read(0, "qpos"), arrays["qpos"])
    store.close()


def test_layout_round_trip_and_obs_slices(tmp_path: Path) -> None:
    assert layout_from_json(layout_to_json(LAYOUT), "here") == LAYOUT
    arrays = make_arrays(T=40)
    path = write_clip(tmp_path / "clip_0.h5", arrays, **META)
    with h5py.File(path, "r") as f:
        direct = f["obs"][()]
    with ClipStore(tmp_path) as store:
        for name, (start, stop) in LAYOUT.items():
            np.testing.assert_array_equal(store.obs(0, name), direct[:, start:stop])
        np.testing.assert_array_equal(store.obs(0, "ref_vel", 3, 9), direct[3:9, slice(*LAYOUT["ref_vel"])])
        with pytest.raises(ClipError, match=r"no observation slice 'nope'.*qpos_local"):
            store.obs(0, "nope")


def test_read_slices_and_range_errors(tmp_path: Path) -> None:
    arrays = make_arrays(T=20)
    write_clip(tmp_path / "clip_0.h5", arrays, **META)
    with ClipStore(tmp_path) as store:
        np.testing.assert_array_equal(store.read(0, "ctrl", 2, 5), arrays["ctrl"][2:5])
        np.testing.assert_array_equal(store.read(0, "syllables", 19), arrays["syllables"][19:])
        for start, stop in [(-1, 3), (0, 21), (5, 5), (7, 3)]:
            with pytest.raises(ClipError, match=r"out of range.*clip_0\.h5.*20 frames"):
                store.read(0, "obs", start, stop)
        with pytest.raises(ClipError, match="Clip index 1"):
            store.read(1, "obs")
        assert set(store.read_clip(0, ["obs"])) == {"obs"}


def test_layout_checks() -> None:
    assert check_layout({"a": (0, 3)}, 3, "w") == {"a": (0, 3)}
    assert obs_slice(LAYOUT, "ref_vel") == slice(*LAYOUT["ref_vel"])
    bad = [
        ({"a": (0, 4)}, r"'a'.*stop <= 3"),
        ({"a": (2, 2)}, r"'a'.*start < stop"),
        ({"a": (-1, 2)}, r"'a'"),
        ({"a": (0.0, 2)}, r"'a'.*two ints"),
        ({"a": (0, 1, 2)}, r"'a'.*two ints"),
        ({"": (0, 1)}, r"non-empty string"),
    ]
    for layout, pattern in bad:
        with pytest.raises(ClipError, match=r"In cfg\.yaml.*" + pattern):
            check_layout(layout, 3, "cfg.yaml")
    with pytest.raises(ClipError, match=r"In f\.h5.*not valid JSON"):
        layout_from_json("{nope", "f.h5")
    with pytest.raises(ClipError, match=r"In f\.h5.*expected a mapping"):
        layout_from_json("[1, 2]", "f.h5")


# ----------------------------------------------------------------------------- legacy files


def legacy_obs(T: int = 10) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(T, 537)).astype(np.float32)


def test_legacy_file_without_layout(tmp_path: Path) -> None:
    obs = legacy_obs()
    for i in range(2):
        write_raw(tmp_path / f"clip_{i}.h5", obs=obs, ctrl=np.zeros((10, 3), np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = ClipStore(tmp_path)
    assert len(caught) == 1  # one warning per store, not per file
    assert "legacy layout" in str(caught[0].message)
    with pytest.warns(UserWarning, match="legacy layout"):
        store = ClipStore(tmp_path)
    assert store.obs_layout == LEGACY_LAYOUT
    assert store.body is None and store.control_dt is None
    np.testing.assert_array_equal(store.obs(1, "qpos_local"), obs[:, obs_slice(LEGACY_LAYOUT, "qpos_local")])
    np.testing.assert_array_equal(store.obs(0, "ref", 2, 4), obs[2:4, obs_slice(LEGACY_LAYOUT, "ref")])
    store.close()


def test_legacy_file_with_wrong_dim(tmp_path: Path) -> None:
    write_raw(tmp_path / "clip_0.h5", obs=np.zeros((10, 100), np.float32), ctrl=np.zeros((10, 3), np.float32))
    with pytest.raises(ClipError, match=r"clip_0\.h5 has no obs_layout.*obs dim 100.*legacy"):
        ClipStore(tmp_path)


# ----------------------------------------------------------------------------- slice reads touch only the slice


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/self/io")
def test_slice_read_reads_only_the_slice(tmp_path: Path) -> None:
    T, D = 20000, 512  # ~40 MB of float32
    obs = np.random.default_rng(0).normal(size=(T, D)).astype(np.float32)
    write_clip(tmp_path / "clip_0.h5", {"obs": obs, "ctrl": np.zeros((T, 2), np.float32)},
               obs_layout={"all": (0, D)}, body="b", control_dt=0.01, generator="tests")
    with ClipStore(tmp_path) as store:
        before = _rchar()
        part = store.read(0, "obs", 100, 110)
        small = _rchar() - before
        np.testing.assert_array_equal(part, obs[100:110])
        before = _rchar()
        whole = store.read_clip(0)
        big = _rchar() - before
    assert small < 2_000_000, small
    assert big > 30_000_000, big  # the measure can fail
    np.testing.assert_array_equal(whole["obs"], obs)


# ----------------------------------------------------------------------------- atomic writes


def _fail_after_first_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    real = clips._write_dataset
    calls = []

    def flaky(f, key, data):
        if calls:
            raise RuntimeError("disk on fire")
        calls.append(key)
        real(f, key, data)

    monkeypatch.setattr(clips, "_write_dataset", flaky)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_after_first_dataset(monkeypatch)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_clip(tmp_path / "clip_0.h5", make_arrays(), **META)
    assert leftovers(tmp_path) == []


def test_failed_rewrite_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_clip(tmp_path / "clip_0.h5", make_arrays(seed=1), **META)
    old_bytes = path.read_bytes()
    _fail_after_first_dataset(monkeypatch)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_clip(path, make_arrays(seed=2), **META)
    assert leftovers(tmp_path) == ["clip_0.h5"]
    assert path.read_bytes() == old_bytes
    with ClipStore(tmp_path) as store:
        np.testing.assert_array_equal(store.read(0, "obs"), make_arrays(seed=1)["obs"])


def test_rewrite_replaces_file(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip_0.h5", make_arrays(seed=1), **META)
    write_clip(path, make_arrays(seed=2, T=7), **META)
    assert leftovers(tmp_path) == ["clip_0.h5"]
    with ClipStore(tmp_path) as store:
        np.testing.assert_array_equal(store.read(0, "obs"), make_arrays(seed=2, T=7)["obs"])


# ----------------------------------------------------------------------------- bad input


def test_missing_dataset(tmp_path: Path) -> None:
    write_raw(tmp_path / "clip_0.h5", obs=np.zeros((5, 537), np.float32))
    with pytest.raises(ClipError, match=r"clip_0\.h5.*required dataset 'ctrl' is missing"):
        ClipStore(tmp_path)


def test_length_mismatch(tmp_path: Path) -> None:
    write_raw(tmp_path / "clip_0.h5", attrs={"obs_layout": layout_to_json(LAYOUT)},
              obs=np.zeros((10, 12), np.float32), ctrl=np.zeros((9, 3), np.float32))
    with pytest.raises(ClipError, match=r"clip_0\.h5.*'ctrl' has 9 frames but 'obs' has 10"):
        ClipStore(tmp_path)
    arrays = make_arrays(T=10)
    arrays["qvel"] = arrays["qvel"][:8]
    with pytest.raises(ClipError, match=r"clip_1\.h5.*'qvel' has 8 frames but 'obs' has 10"):
        write_clip(tmp_path / "clip_1.h5", arrays, **META)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_fail_at_read(tmp_path: Path, bad: float) -> None:
    obs = np.zeros((20, 12), np.float32)
    obs[7, 3] = bad
    write_raw(tmp_path / "clip_0.h5", attrs={"obs_layout": layout_to_json(LAYOUT)},
              obs=obs, ctrl=np.zeros((20, 3), np.float32))
    with ClipStore(tmp_path) as store:  # finiteness is checked at read time, not open time
        np.testing.assert_array_equal(store.read(0, "obs", 0, 7), obs[:7])
        what = "NaN" if np.isnan(bad) else "Inf"
        with pytest.raises(ClipError, match=rf"clip_0\.h5.*'obs'.*\({what}\) at frame 7"):
            store.read(0, "obs", 5, 20)
        with pytest.raises(ClipError, match=r"'obs'.*at frame 7"):
            store.obs(0, "ref")
        np.testing.assert_array_equal(store.obs(0, "qpos_local"), obs[:, 8:12])  # the bad column is not read


def test_non_numeric_dtype(tmp_path: Path) -> None:
    write_raw(tmp_path / "clip_0.h5", attrs={"obs_layout": layout_to_json(LAYOUT)},
              obs=np.zeros((4, 12), np.float32), ctrl=np.array([[b"a"], [b"b"], [b"c"], [b"d"]]))
    with pytest.raises(ClipError, match=r"clip_0\.h5.*'ctrl' has dtype \|S1.*numeric"):
        ClipStore(tmp_path)
    with pytest.raises(ClipError, match=r"'ctrl' has dtype <U1.*numeric"):
        write_clip(tmp_path / "clip_1.h5", {"obs": np.zeros((1, 12)), "ctrl": np.array([["x"]])}, **META)


def test_float_syllables_and_wrong_ndim(tmp_path: Path) -> None:
    ok = make_arrays(T=6, full=False)
    write_raw(tmp_path / "clip_0.h5", attrs={"obs_layout": layout_to_json(LAYOUT)},
              syllables=np.zeros(6, np.float32), **ok)
    with pytest.raises(ClipError, match=r"clip_0\.h5.*'syllables'.*integer"):
        ClipStore(tmp_path)
    write_raw(tmp_path / "clip_0.h5", attrs={"obs_layout": layout_to_json(LAYOUT)},
              qpos=np.zeros((6, 2, 2)), **ok)
    with pytest.raises(ClipError, match=r"clip_0\.h5.*'qpos' has shape \(6, 2, 2\)"):
        ClipStore(tmp_path)


def test_truncated_file(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip_0.h5", make_arrays(T=200), **META)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ClipError, match=r"clip_0\.h5 is not a readable HDF5 file \(truncated or corrupt\?\)"):
        ClipStore(tmp_path)


def test_random_bytes_file(tmp_path: Path) -> None:
    (tmp_path / "clip_0.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ClipError, match=r"clip_0\.h5 is not a readable HDF5 file"):
        ClipStore(tmp_path)


def test_empty_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a clip")
    (tmp_path / ".clip_0.h5.tmp-1-abcd").write_text("a stale temp file is not a clip")
    with pytest.raises(ClipError, match=rf"{esc(tmp_path)} holds no clip_<i>\.h5 files"):
        ClipStore(tmp_path)
    with pytest.raises(ClipError, match=rf"{esc(tmp_path / 'nope')} does not exist"):
        ClipStore(tmp_path / "nope")


def test_clip_too_short(tmp_path: Path) -> None:
    write_clip(tmp_path / "clip_0.h5", make_arrays(T=30), **META)
    write_clip(tmp_path / "clip_1.h5", make_arrays(T=5), **META)
    assert len(ClipStore(tmp_path, min_length=5)) == 2
    with pytest.raises(ClipError, match=r"clip_1\.h5 has 5 frames, fewer than min_length 10"):
        ClipStore(tmp_path, min_length=10)


def test_write_unknown_key(tmp_path: Path) -> None:
    arrays = make_arrays(T=5) | {"reward": np.zeros(5)}
    with pytest.raises(ClipError, match=r"\['reward'\] are unknown; known keys are \['obs', 'ctrl'"):
        write_clip(tmp_path / "clip_0.h5", arrays, **META)
    assert leftovers(tmp_path) == []


def test_write_nan_refused(tmp_path: Path) -> None:
    arrays = make_arrays(T=5)
    arrays["qvel"][3, 1] = np.nan
    with pytest.raises(ClipError, match=r"clip_0\.h5.*'qvel'.*\(NaN\) at frame 3"):
        write_clip(tmp_path / "clip_0.h5", arrays, **META)
    arrays = make_arrays(T=5)
    arrays["obs"] = arrays["obs"].astype(np.float64)
    arrays["obs"][2, 0] = 1e300  # finite in float64, Inf once stored as float32
    with pytest.raises(ClipError, match=r"'obs'.*\(Inf\) at frame 2"):
        write_clip(tmp_path / "clip_0.h5", arrays, **META)
    assert leftovers(tmp_path) == []


def test_write_bad_layout_and_attrs(tmp_path: Path) -> None:
    arrays = make_arrays(T=5)
    with pytest.raises(ClipError, match=r"clip_0\.h5.*'ref'.*stop <= 12"):
        write_clip(tmp_path / "clip_0.h5", arrays, **(META | {"obs_layout": {"ref": (0, 13)}}))
    with pytest.raises(ClipError, match=r"clip_0\.h5.*control_dt"):
        write_clip(tmp_path / "clip_0.h5", arrays, **(META | {"control_dt": 0.0}))
    with pytest.raises(ClipError, match=r"clip_0\.h5.*required dataset 'obs'"):
        write_clip(tmp_path / "clip_0.h5", {"ctrl": arrays["ctrl"]}, **META)
    assert leftovers(tmp_path) == []


def test_clips_that_disagree(tmp_path: Path) -> None:
    write_clip(tmp_path / "clip_0.h5", make_arrays(T=5), **META)
    write_clip(tmp_path / "clip_1.h5", make_arrays(T=5), **(META | {"obs_layout": {"ref": (0, 12)}}))
    with pytest.raises(ClipError, match=r"clip_0\.h5 and .*clip_1\.h5 disagree on obs_layout"):
        ClipStore(tmp_path)
    arrays = make_arrays(T=5)
    arrays["ctrl"] = np.zeros((5, 4), np.float32)
    write_clip(tmp_path / "clip_1.h5", arrays, **META)
    with pytest.raises(ClipError, match=r"clip_0\.h5 and .*clip_1\.h5 disagree on the width of 'ctrl'"):
        ClipStore(tmp_path)
    write_clip(tmp_path / "clip_1.h5", make_arrays(T=5), **(META | {"body": "rodent"}))
    with pytest.raises(ClipError, match=r"disagree on body: 'test_body' vs 'rodent'"):
        ClipStore(tmp_path)


# ----------------------------------------------------------------------------- ordering and partial keys


def test_clip_order_is_numeric(tmp_path: Path) -> None:
    for i in [10, 2, 1]:
        write_clip(tmp_path / f"clip_{i}.h5", make_arrays(T=i, full=i != 2), **META)
    (tmp_path / "clip_x.h5").write_text("ignored: not clip_<int>.h5")
    with ClipStore(tmp_path) as store:
        assert [p.name for p in store.paths] == ["clip_1.h5", "clip_2.h5", "clip_10.h5"]
        np.testing.assert_array_equal(store.lengths, [1, 2, 10])
        assert store.keys == {"obs", "ctrl"} and set(store.dims) == {"obs", "ctrl"}
        assert store.read(2, "qpos").shape == (10, 7)  # present in this clip, though not in all
        with pytest.raises(ClipError, match=r"clip_2\.h5 has no dataset 'qpos'"):
            store.read(1, "qpos")
        assert set(store.read_clip(1)) == {"obs", "ctrl"}


def test_no_heavy_imports() -> None:
    import subprocess
    import sys

    code = "import sys, ncssm_data; print(sorted(m for m in ('mujoco', 'jax', 'flax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_reference_only_clips(tmp_path: Path) -> None:
    """qpos without obs or ctrl is a reference-only clip: written, read, no layout. Without
    qpos, obs and ctrl stay required; a layout without obs is refused."""
    qpos = np.random.default_rng(0).normal(size=(12, 11))
    write_clip(tmp_path / "clip_0.h5", {"qpos": qpos}, obs_layout=None, body="test",
               control_dt=0.02, generator="test")
    with ClipStore(tmp_path) as store:
        assert store.keys == {"qpos"} and store.obs_layout == {} and store.lengths.tolist() == [12]
        np.testing.assert_array_equal(store.read(0, "qpos"), qpos)
        with pytest.raises(ClipError, match="hold no dataset 'obs' .*'qpos_local'"):
            store.obs(0, "qpos_local")
    with pytest.raises(ClipError, match="obs_layout is given but there is no dataset 'obs'"):
        write_clip(tmp_path / "clip_1.h5", {"qpos": qpos}, obs_layout={"a": (0, 1)}, body="test",
                   control_dt=0.02, generator="test")
    with pytest.raises(ClipError, match="required dataset 'obs' is missing .*reference-only"):
        write_clip(tmp_path / "clip_1.h5", {"ctrl": qpos[:, :4]}, obs_layout=None, body="test",
                   control_dt=0.02, generator="test")
    assert not (tmp_path / "clip_1.h5").exists()
