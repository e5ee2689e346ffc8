"""ClipDataset and Normalizer on small clips whose values encode where they came from."""

import re
import shutil
import threading
import warnings

import h5py
import numpy as np
import pytest

from ncssm_data import MODES, ClipDataset, ClipError, Normalizer, split_clips, write_clip
from ncssm_data.dataset import check_pair
from ncssm_data.modes import read_source

LAYOUT = {"ref": (0, 3), "qpos_local": (3, 7), "extra": (7, 9)}
N_SYL = 4
LENGTHS = [40, 33, 50, 36, 45, 38, 60, 35]


def _clip_arrays(i: int, T: int) -> dict:
    """Values that encode (clip, frame, column): value = 1000 * clip + frame + column / 100."""
    frame = np.arange(T)[:, None]

    def enc(width, offset=0.0):
        return (1000.0 * i + frame + (np.arange(width) + offset) / 100.0).astype(np.float32)

    obs = enc(9)
    obs[:, 8] = 0.5  # a constant dim: the normalizer floors its scale
    return {
        "obs": obs,
        "ctrl": enc(3, 0.5),
        "latent_mean": enc(2, 0.7),
        "syllables": (np.arange(T) + i) % N_SYL,
        "qpos": np.zeros((T, 3)),
    }


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for i, T in enumerate(LENGTHS):
        write_clip(root / f"clip_{i}.h5", _clip_arrays(i, T), obs_layout=LAYOUT, body="test",
                   control_dt=0.02, generator="test_dataset")
    return root


def _decode(x: np.ndarray) -> tuple[int, int]:
    """(clip, start frame) of a sample (T, D) of encoded values."""
    v = float(x[0, 0])
    return int(v // 1000), int(np.floor(v % 1000 + 1e-3))


def _direct(root, clip: int, source: str, start: int, stop: int) -> np.ndarray:
    with h5py.File(root / f"clip_{clip}.h5", "r") as f:
        if source in f:
            return f[source][start:stop]
        a, b = LAYOUT[source]
        return f["obs"][start:stop, a:b]


def _parts(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_delivers_the_right_arrays(clips, mode):
    T, B = 20, 5
    ds = ClipDataset(clips, batch_size=B, seg_len=T, mmode=mode, seed=3)
    m = ds.mode
    for _ in range(3):
        x_in, x_tgt = next(ds)
        assert len(_parts(x_in)) == len(m.x_in)
        assert x_tgt.shape == (B, T, ds.dims["x_tgt"]) and x_tgt.dtype == np.float32
        for b in range(B):
            anchor = next(p for s, p in zip(m.x_in, _parts(x_in)) if s != "syllables")[b]
            clip, start = _decode(anchor)
            assert clip in ds.clip_ids
            for source, part in zip(m.x_in, _parts(x_in)):
                assert part.shape == (B, T, ds.dims["x_in"][m.x_in.index(source)])
                want = _direct(clips, clip, source, start, start + T)
                if source == "syllables":
                    want = np.eye(N_SYL, dtype=np.float32)[want]
                np.testing.assert_array_equal(part[b], want)
            want = _direct(clips, clip, m.x_tgt, start + 1, start + T + 1)  # one step ahead
            np.testing.assert_array_equal(x_tgt[b], want)


@pytest.mark.parametrize("mode", list(MODES))
def test_preload_and_streaming_give_identical_batches(clips, mode):
    kw = dict(batch_size=6, seg_len=25, mmode=mode, seed=1, noise_std=0.1, normalizer="zscore")
    a, b = ClipDataset(clips, preload=True, **kw), ClipDataset(clips, preload=False, **kw)
    for _ in range(4):
        (xa, ya), (xb, yb) = next(a), next(b)
        np.testing.assert_array_equal(ya, yb)
        for u, v in zip(_parts(xa), _parts(xb)):
            np.testing.assert_array_equal(u, v)
    b.close()


@pytest.mark.parametrize("mode", list(MODES))
def test_determinism_for_a_seed(clips, mode):
    def batches(seed):
        ds = ClipDataset(clips, batch_size=4, seg_len=20, seed=seed, noise_std=0.2, mmode=mode)
        return [next(ds) for _ in range(3)]

    a, b, c = batches(0), batches(0), batches(1)
    for (xa, ya), (xb, yb) in zip(a, b):
        for u, v in zip(_parts(xa), _parts(xb)):
            np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][1], c[0][1])


@pytest.mark.parametrize("preload", [True, False])
def test_start_step_continues_the_batch_sequence(clips, preload):
    """Batch k depends only on (seed, split, k): what a resumed run needs."""
    kw = dict(batch_size=4, seg_len=20, seed=3, noise_std=0.2, preload=preload)
    full = ClipDataset(clips, **kw)
    seq = [next(full) for _ in range(5)]
    later = ClipDataset(clips, start_step=3, **kw)
    for x_want, y_want in seq[3:]:
        x_got, y_got = next(later)
        np.testing.assert_array_equal(x_got, x_want)
        np.testing.assert_array_equal(y_got, y_want)
    with pytest.raises(ValueError, match="start_step must be an int >= 0"):
        ClipDataset(clips, start_step=-1, **kw)


def test_splits_are_disjoint_and_cover_the_clips(clips):
    train, val = split_clips(len(LENGTHS), 0.75, seed=5)
    assert set(train).isdisjoint(val) and sorted([*train, *val]) == list(range(len(LENGTHS)))
    assert len(train) == 6
    t = ClipDataset(clips, split="train", train_frac=0.75, seg_len=20, seed=5)
    v = ClipDataset(clips, split="val", train_frac=0.75, seg_len=20, seed=5)
    assert set(t.clip_ids) == set(train) and set(v.clip_ids) == set(val)
    seen = {_decode(x)[0] for _ in range(10) for x in next(v)[0]}
    assert seen <= set(val)


def test_batch_size_with_and_without_replacement(clips):
    small = ClipDataset(clips, batch_size=16, split="val", train_frac=0.75, seg_len=20)
    x, _ = next(small)
    assert x.shape[0] == 16  # 2 val clips, sampled with replacement
    big = ClipDataset(clips, batch_size=6, train_frac=0.75, seg_len=20, seed=2)
    for _ in range(5):
        x, _ = next(big)
        clips_in_batch = [_decode(s)[0] for s in x]
        assert len(set(clips_in_batch)) == 6  # 6 train clips, no repeats
        starts = [_decode(s)[1] for s in x]
        assert len(set(starts)) > 1  # each sample has its own start


def test_short_clips_are_skipped_with_a_count(clips):
    train = split_clips(len(LENGTHS), 0.75, 5)[0]
    short = sum(LENGTHS[i] < 40 for i in train)
    assert 0 < short < len(train)
    with pytest.warns(UserWarning, match=rf"Skipping {short} of 6 train clips .* shorter than seg_len \+ 1 = 40"):
        ds = ClipDataset(clips, seg_len=39, train_frac=0.75, seed=5)
    assert all(LENGTHS[i] >= 40 for i in ds.clip_ids)
    with pytest.raises(ValueError, match="No train clip .* has the seg_len \\+ 1 = 61 frames"):
        ClipDataset(clips, seg_len=60)


def test_noise_only_on_train_inputs(clips):
    kw = dict(batch_size=4, seg_len=20, seed=4, mmode="syllable_state_intention")
    clean, noisy = ClipDataset(clips, **kw), ClipDataset(clips, noise_std=0.5, **kw)
    for _ in range(3):
        (xc, yc), (xn, yn) = next(clean), next(noisy)
        np.testing.assert_array_equal(yc, yn)  # targets untouched
        np.testing.assert_array_equal(xc[0], xn[0])  # one-hot syllables untouched
        assert 0.3 < np.std(xn[1] - xc[1]) < 0.7
    val_clean = ClipDataset(clips, split="val", **kw)
    val_noisy = ClipDataset(clips, split="val", noise_std=0.5, **kw)
    np.testing.assert_array_equal(next(val_clean)[0][1], next(val_noisy)[0][1])
    # stats are computed from clean data whatever the noise
    a = ClipDataset(clips, normalizer="zscore", **kw).normalizer.tree()
    b = ClipDataset(clips, normalizer="zscore", noise_std=0.5, **kw).normalizer.tree()
    np.testing.assert_array_equal(a["x_in"][1]["scale"], b["x_in"][1]["scale"])


def test_shards_are_the_rows_of_the_whole_batch(clips):
    """Each process of a multi-process run reads its rows of the global batch, noise included."""
    kw = dict(batch_size=6, seg_len=20, seed=4, mmode="syllable_state_intention", noise_std=0.5,
              preload=False, start_step=2)
    whole = next(ClipDataset(clips, **kw))
    parts = [next(ClipDataset(clips, shard=(i, 3), **kw)) for i in range(3)]
    for k in range(2):
        np.testing.assert_array_equal(np.concatenate([p[0][k] for p in parts]), whole[0][k])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    with pytest.raises(ValueError, match="count dividing batch_size 6"):
        ClipDataset(clips, shard=(0, 4), **kw)


def test_test_batch_is_always_the_same_segment(clips):
    ds = ClipDataset(clips, batch_size=3, seg_len=20, test_batch=True, clip_idx=2)
    (x1, y1), (x2, y2) = next(ds), next(ds)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert {_decode(s) for s in x1} == {(2, 0)}


def test_one_hot_clamps_and_warns_once(clips):
    ds = ClipDataset(clips, seg_len=20, mmode="syllable_state_intention", n_syllables=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, _ = next(ds)
        next(ds)
    assert len([w for w in caught if "clamped" in str(w.message)]) == 1
    assert x[0].shape[-1] == 2 and (x[0].sum(-1) == 1).all()


@pytest.mark.parametrize("method", ["zscore", "minmax"])
@pytest.mark.parametrize("mode", list(MODES))
def test_normalization_is_exact(clips, method, mode):
    ds = ClipDataset(clips, seg_len=20, mmode=mode, normalizer=method, seed=6)
    train_ids = split_clips(len(LENGTHS), 0.8, 6)[0]
    norm = ds.normalizer
    tree = norm.tree()
    for k, source in enumerate((*ds.mode.x_in, ds.mode.x_tgt)):
        stats = tree["x_in"][k] if k < len(ds.mode.x_in) else tree["x_tgt"]
        if source == "syllables":
            assert (stats["shift"] == 0).all() and (stats["scale"] == 1).all()
            continue
        frames = np.concatenate([read_source(ds.store, i, source) for i in train_ids]).astype(np.float64)
        if method == "zscore":
            shift, scale = frames.mean(0), frames.std(0)
        else:
            shift, scale = (frames.max(0) + frames.min(0)) / 2, (frames.max(0) - frames.min(0)) / 2
        np.testing.assert_allclose(stats["shift"], shift.astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(stats["scale"], np.maximum(scale, 1e-4).astype(np.float32), rtol=1e-6)
    x_in, x_tgt = next(ds)
    raw = ClipDataset(clips, seg_len=20, mmode=mode, seed=6)
    r_in, r_tgt = next(raw)
    np.testing.assert_allclose(norm.denormalize_tgt(x_tgt), r_tgt, rtol=1e-5, atol=1e-3)
    for u, v in zip(_parts(norm.denormalize(x_in)), _parts(r_in)):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-3)


def test_normalize_and_denormalize_are_inverses():
    rng = np.random.default_rng(0)
    tree = {"x_in": [{"shift": rng.normal(size=3), "scale": rng.uniform(0.1, 2, 3)},
                     {"shift": rng.normal(size=2), "scale": rng.uniform(0.1, 2, 2)}],
            "x_tgt": {"shift": rng.normal(size=4), "scale": rng.uniform(0.1, 2, 4)}}
    norm = Normalizer("state_intention_controller", "zscore", tree)
    x = (rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 2)))
    y = rng.normal(size=(2, 5, 4))
    for u, v in zip(norm.denormalize(norm.normalize(x)), x):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(norm.denormalize_tgt(norm.normalize_tgt(y)), y, rtol=1e-6, atol=1e-6)


def test_constant_dims_get_a_floor(clips):
    ds = ClipDataset(clips, seg_len=20, mmode="state_intention_controller", normalizer="zscore")
    obs_scale = ds.normalizer.tree()["x_in"][1]["scale"]
    assert obs_scale[8] == np.float32(1e-4)
    assert np.isfinite(next(ds)[0][1]).all()


def test_stats_round_trip_through_an_orbax_checkpoint(clips, tmp_path):
    import orbax.checkpoint as ocp

    norm = ClipDataset(clips, seg_len=20, mmode="syllable_state_intention", normalizer="minmax").normalizer
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "stats", norm.tree())
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "stats")
    back = Normalizer(norm.mode.name, norm.method, restored)
    for a, b in zip(np.concatenate([np.ravel(v) for p in norm.tree()["x_in"] for v in p.values()]),
                    np.concatenate([np.ravel(v) for p in back.tree()["x_in"] for v in p.values()])):
        assert a == b
    np.testing.assert_array_equal(back.tree()["x_tgt"]["scale"], norm.tree()["x_tgt"]["scale"])
    ClipDataset(clips, seg_len=20, mmode="syllable_state_intention", normalizer=back)


def test_prefetch_runs_in_a_background_thread(clips):
    ds = ClipDataset(clips, preload=False, seg_len=20, seed=0, prefetch=2)
    next(ds)
    assert any(t.name == "ClipDataset-prefetch" for t in threading.enumerate())
    ds.close()


# --- bad input -------------------------------------------------------------------------------


def test_unknown_mode_lists_the_known_ones(clips):
    with pytest.raises(ValueError, match=r"Unknown mode 'state_actions'; expected one of \['state_action'"):
        ClipDataset(clips, mmode="state_actions")


def test_unknown_split(clips):
    with pytest.raises(ValueError, match="Unknown split 'test'; expected 'train' or 'val'"):
        ClipDataset(clips, split="test")


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.5, 1.5])
def test_train_frac_outside_the_open_interval(clips, frac):
    with pytest.raises(ValueError, match=r"train_frac must be in \(0, 1\)"):
        ClipDataset(clips, train_frac=frac)


def test_an_empty_split(clips):
    with pytest.raises(ValueError, match="The val split of the 8 clips .* is empty with train_frac 0.99"):
        ClipDataset(clips, split="val", train_frac=0.99, seg_len=20)


@pytest.mark.parametrize("seg_len", [0, -3])
def test_seg_len_must_be_positive(clips, seg_len):
    with pytest.raises(ValueError, match="seg_len must be a positive int"):
        ClipDataset(clips, seg_len=seg_len)


@pytest.mark.parametrize("preload", [True, False])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_met_while_reading(tmp_path, preload, bad):
    for i in range(3):
        write_clip(tmp_path / f"clip_{i}.h5", _clip_arrays(i, 40), obs_layout=LAYOUT, body="test",
                   control_dt=0.02, generator="test")
    bad_clip = int(split_clips(3, 0.5, 0)[0][0])  # a training clip
    with h5py.File(tmp_path / f"clip_{bad_clip}.h5", "r+") as f:  # corrupt after a valid write
        f["ctrl"][17, 1] = bad
    with pytest.raises(ClipError, match=rf"clip_{bad_clip}\.h5.*'ctrl'.*frame 17"):
        ds = ClipDataset(tmp_path, seg_len=30, train_frac=0.5, batch_size=8, preload=preload, seed=0)
        for _ in range(20):
            next(ds)


def test_inputs_and_targets_of_different_lengths():
    with pytest.raises(ValueError, match=r"x_in part 1 has \(B, T\) = \(2, 5\) but x_tgt has \(2, 6\)"):
        check_pair((np.zeros((2, 6, 1)), np.zeros((2, 5, 1))), np.zeros((2, 6, 3)))


def test_stats_of_another_mode_or_dims(clips):
    norm = ClipDataset(clips, seg_len=20, mmode="state_action", normalizer="zscore").normalizer
    with pytest.raises(ValueError, match="stats are for mode 'state_action', but .* is mode 'pure_state'"):
        ClipDataset(clips, seg_len=20, mmode="pure_state", normalizer=norm)
    wrong = Normalizer("state_action", "zscore", {
        "x_in": [{"shift": np.zeros(5), "scale": np.ones(5)}],
        "x_tgt": {"shift": np.zeros(3), "scale": np.ones(3)},
    })
    with pytest.raises(ValueError, match=r"stats have dims .*\(5,\).* but .* has .*\(4,\)"):
        ClipDataset(clips, seg_len=20, mmode="state_action", normalizer=wrong)
    with pytest.raises(ValueError, match="2 x_in parts"):
        Normalizer("state_intention_controller", "zscore", norm.tree())


def test_a_mode_whose_arrays_the_clips_lack(tmp_path):
    arrays = _clip_arrays(0, 30)
    del arrays["latent_mean"]
    write_clip(tmp_path / "clip_0.h5", arrays, obs_layout=LAYOUT, body="test", control_dt=0.02,
               generator="test")
    with pytest.raises(ClipError, match="Mode 'pure_intention' needs the dataset /latent_mean"):
        ClipDataset(tmp_path, mmode="pure_intention", seg_len=10)
    write_clip(tmp_path / "clip_0.h5", arrays, obs_layout={"ref": (0, 9)}, body="test",
               control_dt=0.02, generator="test")
    with pytest.raises(ClipError, match="Mode 'state_action' needs 'qpos_local' from the obs layout"):
        ClipDataset(tmp_path, mmode="state_action", seg_len=10)


# --- the syllable key ------------------------------------------------------------------------

N_ARHMM = 6


def _arhmm(i: int, T: int) -> np.ndarray:
    """AR-HMM-like labels unlike /syllables: another width, and they depend on the frame alone
    for clip 0."""
    return ((3 * np.arange(T) + 2 * i) % N_ARHMM).astype(np.int64)


@pytest.fixture()
def arhmm_clips(clips, tmp_path):
    """The module's clips with a /syllables_arhmm dataset added to each (as segmenting does)."""
    root = tmp_path / "arhmm"
    shutil.copytree(clips, root)
    for i, T in enumerate(LENGTHS):
        with h5py.File(root / f"clip_{i}.h5", "r+") as f:
            f.create_dataset("syllables_arhmm", data=_arhmm(i, T))
    return root


@pytest.mark.parametrize("preload", [True, False])
def test_one_hot_inputs_follow_the_syllable_key(arhmm_clips, preload):
    T, B = 20, 5
    kw = dict(batch_size=B, seg_len=T, mmode="syllable_state_intention", seed=2, preload=preload)
    ds = ClipDataset(arhmm_clips, syllable_key="syllables_arhmm", **kw)
    default = ClipDataset(arhmm_clips, **kw)
    assert ds.n_syllables == N_ARHMM and ds.dims["x_in"] == (N_ARHMM, 4)
    assert default.n_syllables == N_SYL and default.dims["x_in"] == (N_SYL, 4)
    for _ in range(3):
        (x, y), (xd, yd) = next(ds), next(default)
        np.testing.assert_array_equal(x[1], xd[1])  # the same segments: only the labels differ
        np.testing.assert_array_equal(y, yd)
        for b in range(B):
            clip, start = _decode(x[1][b])
            arhmm = _arhmm(clip, LENGTHS[clip])[start:start + T]
            np.testing.assert_array_equal(x[0][b], np.eye(N_ARHMM, dtype=np.float32)[arhmm])
            own = _direct(arhmm_clips, clip, "syllables", start, start + T)
            np.testing.assert_array_equal(xd[0][b], np.eye(N_SYL, dtype=np.float32)[own])
    ds.close()
    default.close()
    # the normalizer, the val split and read_source take the key too
    norm = ClipDataset(arhmm_clips, syllable_key="syllables_arhmm", normalizer="zscore", **kw).normalizer
    assert norm.dims["x_in"] == (N_ARHMM, 4)
    val = ClipDataset(arhmm_clips, split="val", syllable_key="syllables_arhmm", normalizer=norm,
                      n_syllables=N_ARHMM, **kw)
    assert next(val)[0][0].shape == (B, T, N_ARHMM)
    np.testing.assert_array_equal(
        read_source(val.store, 3, "syllables", 5, 9, syllable_key="syllables_arhmm"), _arhmm(3, 40)[5:9])
    val.close()


def test_a_missing_syllable_key(clips, arhmm_clips):
    for root in (clips, arhmm_clips):
        msg = (f"Mode 'syllable_state_intention' needs the dataset /syllables_hmm, which the clips "
               f"in {root} lack.")
        with pytest.raises(ClipError, match=f"^{re.escape(msg)}$"):
            ClipDataset(root, seg_len=20, mmode="syllable_state_intention", syllable_key="syllables_hmm")
    with h5py.File(arhmm_clips / "clip_5.h5", "r+") as f:  # one clip not segmented
        del f["syllables_arhmm"]
    with pytest.raises(ClipError, match="needs the dataset /syllables_arhmm, which the clips in"):
        ClipDataset(arhmm_clips, seg_len=20, mmode="syllable_state_intention",
                    syllable_key="syllables_arhmm")
    # modes without syllables never look for the key
    ClipDataset(clips, seg_len=20, mmode="state_action", syllable_key="syllables_hmm")
    for bad in ("", "a/b", "/syllables", None):
        with pytest.raises(ValueError, match="syllable_key must be a plain dataset name"):
            ClipDataset(clips, seg_len=20, mmode="syllable_state_intention", syllable_key=bad)


BAD_LABELS = {
    "float": (lambda T: np.arange(T, dtype=np.float32) % 3,
              r"'syllables_arhmm' has dtype float32; syllable labels must be integers >= 0"),
    "negative": (lambda T: np.where(np.arange(T) == 7, -1, np.arange(T) % 3),
                 r"'syllables_arhmm' holds the label -1 at frame 7; syllable labels must be "
                 r"integers >= 0"),
    "2d": (lambda T: np.zeros((T, 2), np.int32), r"'syllables_arhmm' has shape \(\d+, 2\), expected"),
    "short": (lambda T: np.zeros(T - 1, np.int32), r"'syllables_arhmm' has shape \(\d+,\), expected"),
}


@pytest.mark.parametrize("labels, match", BAD_LABELS.values(), ids=BAD_LABELS.keys())
@pytest.mark.parametrize("preload", [True, False])
def test_bad_syllable_labels(arhmm_clips, labels, match, preload):
    for i, T in enumerate(LENGTHS):
        with h5py.File(arhmm_clips / f"clip_{i}.h5", "r+") as f:
            del f["syllables_arhmm"]
            f.create_dataset("syllables_arhmm", data=labels(T))
    with pytest.raises(ClipError, match=r"clip_\d+\.h5.*" + match):
        ds = ClipDataset(arhmm_clips, seg_len=20, mmode="syllable_state_intention",
                         syllable_key="syllables_arhmm", n_syllables=3, preload=preload)
        for _ in range(20):
            next(ds)
    # a dataset the store knows but that is no label array
    with pytest.raises(ClipError, match=r"'ctrl' has shape .* syllable labels must be integers >= 0"):
        ClipDataset(arhmm_clips, seg_len=20, mmode="syllable_state_intention", syllable_key="ctrl")


def test_a_modes_behaviour_follows_from_its_row():
    from ncssm_data.modes import MODES, Mode

    assert {m for m, d in MODES.items() if d.acts} == {
        "state_action", "state_intention_controller", "syllable_state_intention"}
    assert {m for m, d in MODES.items() if d.feeds_back} == {"pure_state", "pure_intention"}
    assert {m: d.family for m, d in MODES.items() if d.family != "sequence"} == {
        "state_intention_controller": "controller", "syllable_state_intention": "syllable"}
    new = Mode("intention_action", ("latent_mean",), "ctrl")  # a row someone might add
    assert (new.acts, new.feeds_back, new.family, new.sources) == (
        True, False, "sequence", ("latent_mean", "ctrl"))
