"""Fuzzing with hypothesis (issue 18): the clip reader and writer, the config loader, and the
task math.

Properties:

- **Clip reader.** Any HDF5 folder written here with h5py (schema and unknown dataset keys,
  ranks 0-3, zero and disagreeing lengths, numeric, bool, string, vlen, compound, complex and
  enum dtypes, groups, dangling links, empty dataspaces, NaN/Inf, every attribute good, bad or
  of the wrong type, truncated files): ``ClipStore`` and each of its reads either return arrays
  of the shapes and dtypes the store declares, equal to what the file holds, or raise
  ``ClipError`` with one sentence naming the file. A read of an in-range slice of a clean
  dataset always succeeds.
- **Clip writer.** Whatever ``write_clip`` accepts reads back equal (cast to the schema's
  dtypes); whatever it refuses is one ``ClipError`` sentence naming the new file, and leaves
  the folder empty.
- **Config loader.** Any YAML text (dumped mappings of the config's keys with plausible and
  implausible values, snippets with tags, anchors and aliases, arbitrary text and bytes) and
  any ``--override`` list: ``load_config`` returns a valid ``TrainConfig`` (every value of its
  declared type, floats finite, the documented ranges held, and dumping it back as YAML loads
  the same config) or raises ``ConfigError`` with one sentence naming the key or the file. The
  same for ``SegmentConfig`` (``cls=``).
- **Task math.** Finite states of the test body (positions, unit quaternions, joint angles in
  range, velocities, actions within the control range): the observation, errors, reward,
  termination and metrics are finite, in range, and the numpy and jax.numpy versions agree to
  float32 tolerance (jax jitted once, shapes fixed, values drawn).

Every test runs a fixed, derandomized set of examples (CI is reproducible); the ``slow`` ones run
the same properties on many more. ``NCSSM_FUZZ_SCALE=10`` multiplies every test's example
count; ``NCSSM_FUZZ_RANDOM=1`` draws fresh examples each run instead of the fixed ones.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
import types
import typing
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ncssm_data.clips import SCHEMA_KEYS, ClipStore, write_clip
from ncssm_data.errors import ClipError
from ncssm_policies.config import FIELDS, ConfigError, TrainConfig, load_config

# ----------------------------------------------------------------------------------------------
# Settings: one profile, a per-test example count
# ----------------------------------------------------------------------------------------------

settings.register_profile(
    "ncssm-fuzz",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
settings.register_profile("ncssm-fuzz-random", settings.get_profile("ncssm-fuzz"),
                          derandomize=False)
_PROFILE = settings.get_profile(
    "ncssm-fuzz-random" if os.environ.get("NCSSM_FUZZ_RANDOM") == "1" else "ncssm-fuzz")
_SCALE = float(os.environ.get("NCSSM_FUZZ_SCALE", "1"))


def fuzz(n: int) -> settings:
    """The profile with ``n`` examples (times ``NCSSM_FUZZ_SCALE``)."""
    return settings(_PROFILE, max_examples=max(1, round(n * _SCALE)))


def assert_sentence(err: BaseException, names) -> str:
    """``err``'s message is one line, ends as a sentence and names one of ``names``."""
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg and msg == msg.strip() and msg[-1] in ".?", msg
    assert any(str(n) in msg for n in names), (msg, names)
    return msg


# ----------------------------------------------------------------------------------------------
# Clip files: strategies
# ----------------------------------------------------------------------------------------------

SPECS = {"obs": 2, "ctrl": 2, "latent_mean": 2, "syllables": 1, "qpos": 2, "qvel": 2, "act": 2,
         "ctrl_expert": 2}
SCHEMA_DTYPE = {"obs": "f4", "ctrl": "f4", "latent_mean": "f4", "syllables": "i4", "qpos": "f8",
                "qvel": "f8", "act": "f8", "ctrl_expert": "f4"}
UNKNOWN_KEYS = ("syllables_arhmm", "labels", "grp/deep", "extra")
FLOATS = ("<f2", "<f4", "<f8", ">f8")
INTS = ("<i1", "<i2", "<i4", "<i8", ">i4", "<u1", "<u2", "<u4", "<u8")
ODD_DTYPES = ("bool", "S4", "vlen_str", "vlen_f4", "compound", "complex64", "enum")
# text h5py can store in an attribute (no NUL, no lone surrogate)
H5_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
STYLES = st.sampled_from(["zeros", "normal", "normal", "extreme"])
SEEDS = st.integers(0, 2**32 - 1)
POISON = st.sampled_from([np.nan, np.inf, -np.inf])


def draw_numeric(draw, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """An array of ``dtype``: zeros, ordinary or extreme values, sometimes one NaN/Inf.

    Hypothesis picks the style, seed and poison; numpy fills the values (drawing every element
    through hypothesis would cost far more than the reads being tested). The helpers here take
    ``draw`` rather than being composites: building a strategy per draw is slow.
    """
    dt = np.dtype(dtype)
    style = draw(STYLES)
    rng = np.random.default_rng(draw(SEEDS))
    if dt.kind == "f":
        info = np.finfo(dt)
        pool = np.array([0.0, -0.0, 1.0, -1.0, info.max, info.min, info.tiny, info.eps,
                         info.smallest_subnormal], dtype=dt)
    else:
        info = np.iinfo(dt)
        pool = np.array([0, 1, info.max, info.min], dtype=dt)
    if style == "zeros":
        a = np.zeros(shape, dt)
    elif style == "normal":
        a = (rng.normal(size=shape) * 10).astype(dt) if dt.kind == "f" else \
            rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True)
    else:
        a = rng.choice(pool, size=shape)
    a = a.astype(dt)
    if dt.kind == "f" and a.size and draw(st.integers(0, 3)) == 0:
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(POISON)
    return a


def _odd(kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """An array of a non-numeric (or complex) dtype."""
    if kind == "bool":
        return np.zeros(shape, bool)
    if kind == "S4":
        return np.full(shape, b"ab", "S4")
    if kind == "vlen_str":
        return np.full(shape, "héllo", dtype=h5py.string_dtype())
    if kind == "vlen_f4":
        a = np.empty(shape, dtype=h5py.vlen_dtype(np.float32))
        for i in np.ndindex(shape):
            a[i] = np.arange(3, dtype=np.float32)
        return a
    if kind == "compound":
        return np.zeros(shape, dtype=[("a", "<f4"), ("b", "<i4")])
    if kind == "complex64":
        return np.zeros(shape, np.complex64)
    return np.zeros(shape, dtype=h5py.enum_dtype({"a": 0, "b": 1}, basetype="i1"))


FORMS = st.sampled_from(["ok"] * 8 + ["dtype", "rank", "length", "width0", "group", "empty",
                                      "dangling", "link"])
ANY_DTYPE = st.sampled_from(ODD_DTYPES + FLOATS + INTS)
NUMERIC = st.sampled_from(FLOATS + INTS)
SCHEMA_LINK = st.sampled_from(["/" + k for k in sorted(SPECS)])
RANKS = st.integers(0, 3)
SIDES = st.lists(st.integers(0, 3), max_size=3)
FRAMES = st.sampled_from([0, 1, 2, 3, 5, 66])  # 66: past one chunk of 64 frames
WIDTH = st.integers(1, 4)
DATASET_KEYS = st.lists(st.sampled_from(sorted(SPECS) + list(UNKNOWN_KEYS)), max_size=3)
KINDS = st.sampled_from(["full", "full", "reference", "none"])
KIND_KEYS = {"full": ["obs", "ctrl"], "reference": ["qpos"], "none": []}


def draw_entry(draw, key: str, T: int, width: int):
    """What to put at ``key``: usually a well-formed dataset, else something wrong."""
    form = draw(FORMS)
    ndim = SPECS.get(key, 1)
    shape = (T,) if ndim == 1 else (T, width)
    if form == "group":
        return ("group",)
    if form == "empty":
        return ("empty", draw(NUMERIC))
    if form == "dangling":
        return ("link", "/nowhere")
    if form == "link":  # to another key, maybe itself or a link back (a loop)
        return ("link", draw(SCHEMA_LINK))
    if form == "rank":
        rank = draw(RANKS)
        shape = (tuple(draw(SIDES)) + (1, 1, 1))[:rank] if rank != ndim else ()
    elif form == "length":
        shape = (T + 1 + T % 2, *shape[1:]) if draw(st.booleans()) else (0, *shape[1:])
    elif form == "width0" and ndim == 2:
        shape = (T, 0)
    if form == "dtype":
        kind = draw(ANY_DTYPE)
        if kind in ODD_DTYPES:
            return ("data", _odd(kind, shape), False)
        dtype = kind
    else:
        dtype = draw(INT_DTYPE if key == "syllables" else NUMERIC)
    chunked = draw(st.booleans()) and math.prod(shape) > 0 and len(shape) > 0
    return ("data", draw_numeric(draw, dtype, shape), chunked)


INT_DTYPE = st.sampled_from(INTS)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8)
WEIRD_ATTR = st.one_of(  # attribute values of any type h5py stores
    st.integers(-2**63, 2**63 - 1), st.floats(), st.booleans(),
    st.text(H5_TEXT, max_size=8), st.binary(min_size=1, max_size=6).map(np.bytes_),
    hnp.arrays(st.sampled_from(["<i4", "<f8"]),
               hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3)),
    st.just(h5py.Empty("f8")), st.just(np.uint64(2**64 - 1)), st.just(np.float16(0.02)),
)
LAYOUT_NAMES = st.sampled_from(["ref", "qpos_local", "prev_action", "a", ""])
LAYOUT_KINDS = st.sampled_from(["good"] * 4 + ["bytes", "bad", "json", "text", "weird"])
ENTRY = st.tuples(st.integers(0, 6), st.integers(1, 7))
BAD_LAYOUT = st.dictionaries(
    LAYOUT_NAMES | st.text(max_size=3),
    st.one_of(ENTRY.map(list), st.lists(st.integers(-2, 9) | st.floats() | st.booleans()
                                        | st.text(max_size=2), max_size=3),
              st.integers(), st.text(max_size=3)),
    max_size=3)


def draw_layout_text(draw, width: int):
    """An ``obs_layout`` attribute: a fitting layout as JSON (or bytes), or anything else."""
    kind = draw(LAYOUT_KINDS)
    if kind in ("good", "bytes"):
        entries = draw(st.dictionaries(LAYOUT_NAMES, ENTRY, max_size=3))
        text = json.dumps({k: [min(a, b - 1, width - 1), min(b, width)]
                           for k, (a, b) in entries.items()})
        return text if kind == "good" else np.bytes_(text.encode())
    if kind == "bad":
        return json.dumps(draw(BAD_LAYOUT))
    if kind == "json":
        return json.dumps(draw(JSON_VALUE))
    if kind == "text":
        return draw(st.text(H5_TEXT, max_size=12))
    return draw(WEIRD_ATTR)


SCHEMA_VERSION = st.one_of(st.none(), st.just(1), st.just(1), WEIRD_ATTR)
BODY = st.one_of(st.none(), st.sampled_from(["test", "rodent", ""]), st.just("test"), WEIRD_ATTR)
CONTROL_DT = st.one_of(st.none(), st.sampled_from([0.02, 0.01, 0.0, -0.02, np.nan, np.inf]),
                       st.just(0.02), WEIRD_ATTR)
GENERATOR = st.one_of(st.none(), st.text(H5_TEXT, max_size=5), WEIRD_ATTR)
DART_OF = st.one_of(st.none(), st.none(), st.integers(-2, 3), WEIRD_ATTR)
OTHER_ATTR = st.none() | WEIRD_ATTR
TRUNCATE = st.one_of(st.none(), st.none(), st.none(), st.floats(0.0, 0.99))
SECOND_DART_OF = st.sampled_from([None, 0, 1])


def draw_clip_spec(draw, base: dict | None = None):
    """One clip file: ``{"datasets": {key: entry}, "attrs": {name: value}, "truncate": f}``."""
    if base is not None and draw(st.booleans()):  # the same widths and attributes, new data
        widths, attrs = base["widths"], dict(base["attrs"])
        attrs["dart_of"] = draw(SECOND_DART_OF)
    else:
        widths = {key: draw(WIDTH) for key in (*SPECS, *UNKNOWN_KEYS)}
        attrs = {}
    T = draw(FRAMES)
    keys = KIND_KEYS[draw(KINDS)] + draw(DATASET_KEYS)
    datasets = {key: draw_entry(draw, key, T, widths[key]) for key in dict.fromkeys(keys)}
    if not attrs:
        attrs = {
            "schema_version": draw(SCHEMA_VERSION),
            "obs_layout": None if draw(st.booleans()) else draw_layout_text(draw, widths["obs"]),
            "body": draw(BODY),
            "control_dt": draw(CONTROL_DT),
            "generator": draw(GENERATOR),
            "dart_of": draw(DART_OF),
            "unknown": draw(OTHER_ATTR),
        }
    return {"datasets": datasets, "attrs": attrs, "widths": widths, "truncate": draw(TRUNCATE)}


# label keys a caller may pass: names in the file, odd names h5py reads otherwise (it cuts a name
# at a NUL, finds "obs" for "obs/", cannot encode a lone surrogate), and any text
LABEL_KEY = st.one_of(st.sampled_from(["a\x00b", "syllables\x00x", "\x00", "\ud800", "obs/", "",
                                       "/", ".", "grp", "grp/deep/"]), st.text(max_size=4))


@st.composite
def clip_folder(draw):
    first = draw_clip_spec(draw)
    specs = [first] + ([draw_clip_spec(draw, base=first)] if draw(st.booleans()) else [])
    return specs


def write_h5(path: Path, spec: dict) -> None:
    """Write ``spec`` with h5py directly (no validation)."""
    with h5py.File(path, "w") as f:
        for key, entry in spec["datasets"].items():
            if entry[0] == "group":
                f.create_group(key)
            elif entry[0] == "empty":
                f.create_dataset(key, data=h5py.Empty(entry[1]))
            elif entry[0] == "link":
                f[key] = h5py.SoftLink(entry[1])
            else:
                _, data, chunked = entry
                f.create_dataset(key, data=data, chunks=True if chunked else None)
        for name, value in spec["attrs"].items():
            if value is not None:
                f.attrs[name] = value
    if spec["truncate"] is not None:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(int(size * spec["truncate"]))


# ----------------------------------------------------------------------------------------------
# Clip files: properties
# ----------------------------------------------------------------------------------------------


def _call(paths, fn, *args):
    """``fn(*args)``, or None when it raised a ClipError (whose message is checked)."""
    try:
        return fn(*args)
    except ClipError as err:
        assert_sentence(err, paths)
        return None


def _raw(path: Path, key: str):
    """The dataset at ``key`` read with h5py, or None."""
    try:
        with h5py.File(path, "r") as f:
            ds = f.get(key)
            return ds[()] if isinstance(ds, h5py.Dataset) and ds.shape is not None else None
    except OSError:
        return None


def check_reader(specs: list[dict], data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = [root / f"clip_{i}.h5" for i in range(len(specs))]
        for path, spec in zip(paths, specs):
            write_h5(path, spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the legacy-layout warning
            store = _call(paths, ClipStore, root)
        if store is None:
            return
        with store:
            check_store(store, paths, data)


def check_store(store: ClipStore, paths: list[Path], data) -> None:
    n = len(store)
    assert n == len(paths) and store.paths == paths
    lengths = store.lengths
    assert lengths.dtype == np.int64 and lengths.shape == (n,) and (lengths >= 1).all()
    assert store.keys <= SCHEMA_KEYS and set(store.dims) == set(store.keys)
    layout = store.obs_layout
    assert all(isinstance(k, str) and 0 <= a < b for k, (a, b) in layout.items())
    assert store.body is None or isinstance(store.body, str)
    dt = store.control_dt
    assert dt is None or (isinstance(dt, float) and math.isfinite(dt) and dt > 0)
    repr(store)
    dart = _call(paths, lambda: store.dart_of)
    if dart is not None:
        assert dart.shape == (n,) and all(-1 <= j < n for j in dart)
    for i, path in enumerate(paths):
        T = int(lengths[i])
        for key in sorted(SCHEMA_KEYS):
            if not store.clip_has(i, key):
                continue
            raw = _raw(path, key)
            assert raw is not None and raw.dtype.kind in "iuf" and raw.ndim == SPECS[key]
            if key in store.dims:
                assert raw.shape[1:] == store.dims[key]
            full = _call(paths, store.read, i, key)
            clean = raw.dtype.kind != "f" or np.isfinite(raw).all()
            assert (full is not None) == clean, (key, raw)
            if full is not None:
                assert full.shape == raw.shape == (T, *raw.shape[1:]) and full.dtype == raw.dtype
                np.testing.assert_array_equal(full, raw)
            start = data.draw(st.integers(-1, T + 1), label=f"start {i} {key}")
            stop = data.draw(st.none() | st.integers(-1, T + 1), label=f"stop {i} {key}")
            part = _call(paths, store.read, i, key, start, stop)
            end = T if stop is None else stop
            in_range = 0 <= start < end <= T
            if part is not None:
                assert in_range and part.shape == (end - start, *raw.shape[1:])
                np.testing.assert_array_equal(part, raw[start:end])
            else:
                assert not in_range or not np.isfinite(raw[start:end]).all()
        if "obs" in store.keys:
            for name, (a, b) in layout.items():
                cols = _call(paths, store.obs, i, name)
                if cols is not None:
                    assert cols.shape == (T, b - a)
                    np.testing.assert_array_equal(cols, _raw(path, "obs")[:, a:b])
        for key in ("syllables", *UNKNOWN_KEYS, "obs", "nothing", data.draw(LABEL_KEY)):
            held = store.holds(key)
            assert isinstance(held, bool)
            labels = _call(paths, store.read_labels, i, key)
            if labels is not None:
                assert labels.shape == (T,) and labels.dtype.kind in "iu"
                assert (labels >= 0).all()
                np.testing.assert_array_equal(labels, _raw(path, key))
                assert held or len(store) > 1


@fuzz(200)
@given(clip_folder(), st.data())
def test_clip_reader(specs, data):
    check_reader(specs, data)


@pytest.mark.slow
@fuzz(4000)
@given(clip_folder(), st.data())
def test_clip_reader_many(specs, data):
    check_reader(specs, data)


# --- write_clip round trip ---------------------------------------------------------------------


MISTAKES = st.sampled_from([None] * 10 + ["key", "shape", "dtype", "length", "layout", "body",
                                          "control_dt", "generator", "dart_of"])
WRITE_FRAMES = st.sampled_from([1, 2, 4, 66, 0])
NAME = st.text(min_size=1, max_size=4)
BAD_ENTRY = st.one_of(ENTRY.map(np.array), ENTRY.map(lambda p: np.array([p])),
                      st.tuples(st.integers(-2, 8), st.integers(-2, 8)),
                      st.tuples(st.floats(), st.floats()), st.just((True, 2)), st.integers())
BAD_LAYOUT_ARG = st.one_of(st.none(), st.just([("a", (0, 1))]), st.just({}),
                           st.dictionaries(NAME | st.integers() | st.just(""), BAD_ENTRY,
                                           min_size=1, max_size=2))
GOOD_BODY = st.one_of(st.sampled_from(["test", "rodent"]), st.text(min_size=1, max_size=6))
BAD_BODY = st.one_of(st.just(""), st.none(), st.integers(), st.just(b"test"))
GOOD_DT = st.one_of(st.just(0.02), st.floats(1e-6, 10), st.integers(1, 2),
                    st.just(np.float32(0.02)), st.just(np.float16(0.01)))
BAD_DT = st.one_of(st.floats().filter(lambda x: not 0 < x < math.inf), st.integers(-1, 0),
                   st.just("0.02"), st.just(True), st.just(np.array([0.02])),
                   st.just(np.array([[0.02, 0.01], [0.1, 0.1]])))
GOOD_DART = st.one_of(st.none(), st.none(), st.integers(0, 5), st.just(np.int64(2)),
                      st.just(np.uint8(1)))
BAD_DART = st.one_of(st.integers(-3, -1), st.just(2**70), st.floats(), st.just("1"),
                     st.just(True), st.just(np.array([1, 2])))
EXTRA_KEYS = st.lists(st.sampled_from(sorted(SPECS)), max_size=3)


@st.composite
def write_args(draw):
    """Arguments for ``write_clip``: acceptable ones, or with one mistake."""
    mistake = draw(MISTAKES)
    T = draw(WRITE_FRAMES)
    keys = KIND_KEYS[draw(st.sampled_from(["full", "reference"]))] + draw(EXTRA_KEYS)
    if mistake == "key":
        keys.append(draw(st.sampled_from(["extra", "syllables_arhmm", ""])))
    keys = list(dict.fromkeys(keys))
    wrong = draw(st.sampled_from(keys))  # the dataset a shape, dtype or length mistake hits
    arrays = {}
    width_obs = draw(WIDTH)
    for key in keys:
        width = width_obs if key == "obs" else draw(WIDTH)
        shape = (T,) if SPECS.get(key, 2) == 1 else (T, width)
        dtype = draw(INT_DTYPE if key == "syllables" else NUMERIC)
        if key == wrong and mistake == "shape":
            shape = draw(st.sampled_from([(), (T,), (T, width, 2), (T, 0)]))
        elif key == wrong and mistake == "length":
            shape = (T + 1, *shape[1:])
        elif key == wrong and mistake == "dtype":
            dtype = draw(st.sampled_from(ODD_DTYPES + (FLOATS if key == "syllables" else ())))
        arrays[key] = (_odd(dtype, shape) if dtype in ODD_DTYPES
                       else draw_numeric(draw, dtype, shape))
    entries = draw(st.dictionaries(NAME, ENTRY, max_size=3))
    obs_layout = {k: (min(a, b - 1, width_obs - 1), min(b, width_obs))
                  for k, (a, b) in entries.items()} if "obs" in arrays else None
    if mistake == "layout":
        obs_layout = draw(BAD_LAYOUT_ARG)
    return {"arrays": arrays, "obs_layout": obs_layout,
            "body": draw(BAD_BODY if mistake == "body" else GOOD_BODY),
            "control_dt": draw(BAD_DT if mistake == "control_dt" else GOOD_DT),
            "generator": draw(st.one_of(st.none(), st.integers()) if mistake == "generator"
                              else st.text(max_size=6)),
            "dart_of": draw(BAD_DART if mistake == "dart_of" else GOOD_DART)}


def check_round_trip(args: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "clip_0.h5"
        try:
            out = write_clip(path, **args)
        except ClipError as err:
            assert_sentence(err, [path])
            assert os.listdir(root) == []  # nothing written, no temp file left
            return
        assert out == path and os.listdir(root) == ["clip_0.h5"]
        with ClipStore(root) as store:
            got = store.read_clip(0)
            assert set(got) == set(args["arrays"])
            for key, a in args["arrays"].items():
                want = np.asarray(a).astype(SCHEMA_DTYPE[key])
                assert got[key].dtype == want.dtype
                np.testing.assert_array_equal(got[key], want)
            assert store.lengths.tolist() == [len(next(iter(got.values())))]
            layout = args["obs_layout"]
            assert store.obs_layout == ({k: (int(a), int(b)) for k, (a, b) in layout.items()}
                                        if "obs" in got else {})
            assert store.body == args["body"]
            assert store.control_dt == float(args["control_dt"])
        with h5py.File(path, "r") as f:
            assert f.attrs["generator"] == args["generator"]
            if args["dart_of"] is None:
                assert "dart_of" not in f.attrs
            else:
                assert f.attrs["dart_of"] == args["dart_of"]
                assert not isinstance(args["dart_of"], (bool, float))


@fuzz(150)
@given(write_args())
def test_write_clip_round_trip(args):
    check_round_trip(args)


@pytest.mark.slow
@fuzz(3000)
@given(write_args())
def test_write_clip_round_trip_many(args):
    check_round_trip(args)


# ----------------------------------------------------------------------------------------------
# Config loader
# ----------------------------------------------------------------------------------------------

CHOICES = {  # plausible strings for the keys with a fixed set of values
    "mmode": ["state_action", "pure_state", "state_intention", "pure_intention",
              "state_intention_controller", "syllable_state_intention", "bogus"],
    "logger": ["jsonl", "tensorboard", "wandb", "csv"],
    "norm_method": ["zscore", "minmax", "none", "l2"],
    "select": ["val_loss", "closed_loop", "loglik", "duration"],
    "name": ["run", "a/b", "..", ""],
    "syllable_key": ["syllables", "syllables_arhmm", "a/b", ""],
    "out_key": ["syllables_arhmm", "obs", "x/y", ""],
}
SNIPPETS = (  # YAML that once broke, or could: tags, anchors, aliases, odd scalars
    "x: !!python/object:os.system {}", "seed: 2001-13-45", "seed: 2001-12-14",
    "conj_sym: !!bool maybe", "seed: !!int abc", "dt_min: !!float abc", "a: &x [*x]",
    "model_kwargs: &a {x: *a}", "model_kwargs: {a: &b [1], c: *b}", "tags: !!set {a, b}",
    "name: !!binary AAA", "<<: 1", "? [1, 2]\n: 3", "%YAML 1.1\n---", "---\n...\n---",
    "\tseed: 1", "seed: 0x1F", "seed: 0o17", "seed: 1_000", "learning_rate: 1e-3",
    "learning_rate: .inf", "learning_rate: .nan", "learning_rate: 1e400", "dagger: {rounds: 2}",
    "dagger: {beta: .nan}", "name: \"a\\0b\"", "seed: -1", "seed: 99999999999999999999999",
    "decoder_hidden: [-1]", "in_dim: 3", "in_dim: [0]", "out_dim: -2", "int_dim: 0",
    "clip_idx: -1", "root_dir: x", "clip_dir: x\nroot_dir: y", "model_kwargs: {1: 2}",
    "num_states: 1", "kappa: .nan", "target_duration: .inf", "sweep_kappa: [.nan]",
    "seed: &s 3\nclip_idx: *s", "x: " + "[" * 200 + "]" * 200, "a: " + "[" * 3000,
    "model_kwargs: " + "{a: " * 300 + "1" + "}" * 300, "!!str", "- 1", "'str'", "~",
)


@functools.cache
def _value_for(tp, key: str):
    """Values for a field of type ``tp``: of that type, near its bounds, or of another type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else _value_for(a, key)
                           for a in typing.get_args(tp)))
    if origin is list:
        (item,) = typing.get_args(tp)
        return st.lists(_value_for(item, key), max_size=3)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.one_of(*[st.integers(1, 40)] * 4, st.integers(), st.sampled_from([0, -1, 2**32]))
    if tp is float:
        return st.one_of(*[st.floats(0.01, 0.99)] * 4, st.floats(),
                         st.sampled_from(["1e-3", "nan", "x", -1.0, 0.0, 1.0, 10**400]))
    if tp is str:
        return st.sampled_from(CHOICES[key]) if key in CHOICES else st.text(max_size=6)
    return st.dictionaries(st.text(max_size=4), JSON_VALUE, max_size=2)


ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6),
                      JSON_VALUE, st.dates())


@functools.cache
def hints(cls) -> dict:
    """``typing.get_type_hints(cls)``, once (it evaluates every annotation: ~10 ms a call)."""
    return typing.get_type_hints(cls)


EXTRA_KEYS_CFG = st.sampled_from(["root_dir", "epoch", "zzz", "1"])
FLOW = st.booleans()
ONE_IN_5 = st.integers(0, 4)
ONE_IN_10 = st.integers(0, 9)
SNIPPET = st.sampled_from(SNIPPETS)
TEXT_KINDS = st.sampled_from(["dump"] * 5 + ["snippets", "text", "bytes", "none"])
OVERRIDE_VALUE = st.one_of(st.sampled_from([s.partition(": ")[2] for s in SNIPPETS if ": " in s]),
                           ANY_VALUE.map(lambda v: yaml.safe_dump(v).removesuffix("\n...\n")),
                           st.text(max_size=8))


@functools.cache
def config_values(cls) -> dict:
    """key -> a strategy of values for it, for each field of ``cls``."""
    return {k: st.one_of(*[_value_for(tp, k)] * 4, ANY_VALUE) for k, tp in hints(cls).items()}


@functools.cache
def config_yaml(cls):
    """YAML text (or bytes, or None: no file) for a config of ``cls``."""
    values = config_values(cls)
    keys = st.lists(st.sampled_from(sorted(values)), max_size=4, unique=True)
    snippets = st.lists(SNIPPET, min_size=1, max_size=3).map("\n".join)

    @st.composite
    def text(draw):
        kind = draw(TEXT_KINDS)
        if kind == "dump":
            mapping = {k: draw(values[k]) for k in draw(keys)}
            if draw(ONE_IN_5) == 0:
                mapping[draw(EXTRA_KEYS_CFG)] = draw(ANY_VALUE)
            flow = draw(FLOW)
            out = yaml.dump(mapping, default_flow_style=flow, allow_unicode=True)
            return out + "\n" + draw(SNIPPET) if not flow and draw(ONE_IN_10) == 0 else out
        if kind == "snippets":
            return draw(snippets)
        if kind == "text":
            return draw(st.text(max_size=30))
        return draw(st.binary(max_size=30)) if kind == "bytes" else None

    return text()


@functools.cache
def overrides(cls):
    """``--override`` lists for ``cls``: key=value items, and arbitrary text."""
    fields = sorted(hints(cls))
    key = st.one_of(st.sampled_from(fields), st.sampled_from(fields), st.text(max_size=5),
                    st.sampled_from(["root_dir", "", " "]))
    item = st.one_of(*[st.builds("{}={}".format, key, OVERRIDE_VALUE)] * 4, st.text(max_size=8))
    return st.lists(item, max_size=2)


def _is_type(value, tp) -> bool:
    """Whether ``value`` is of the annotated type ``tp`` (floats finite)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(value is None if a is type(None) else _is_type(value, a)
                   for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_is_type(v, item) for v in value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, float) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str) and "\x00" not in value
    if tp is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, tp)


def assert_valid_config(cfg, cls) -> None:
    """Every value of its declared type, the documented ranges held, and a YAML round trip."""
    assert type(cfg) is cls
    for name, tp in hints(cls).items():
        assert _is_type(getattr(cfg, name), tp), (name, getattr(cfg, name))
    if cls is TrainConfig:
        for k in ("n_layers", "d_model", "ssm_size", "blocks", "d_state", "expand", "embed_dim",
                  "epochs", "iters_per_epoch", "val_steps", "batch_size", "seg_len", "keep_ckpts",
                  "ckpt_freq", "eval_envs", "eval_every", "dart_copies"):
            assert getattr(cfg, k) >= 1, k
        for k in ("learning_rate", "ssm_lr", "weight_decay", "grad_clip", "noise_std", "warmup",
                  "eval_episodes", "clip_idx"):
            assert getattr(cfg, k) >= 0, k
        assert 0 <= cfg.seed < 2**32
        assert 0 < cfg.dt_min <= cfg.dt_max and 0 < cfg.train_frac < 1 and 0 <= cfg.dropout < 1
        assert all(d >= 1 for d in (cfg.in_dim or []) + cfg.decoder_hidden)
        assert all(d is None or d >= 1 for d in (cfg.out_dim, cfg.int_dim))
        assert cfg.dart_noise is None or cfg.dart_noise >= 0
    # what was accepted, written back as YAML, loads equal
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "again.yaml"
        path.write_text(yaml.safe_dump(dataclasses.asdict(cfg)), encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert load_config(path, cls=cls) == cfg


def check_config(text, items, cls) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if text is not None:
            path = Path(tmp) / "fuzz.yaml"
            if isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # root_dir is clip_dir
                cfg = load_config(path, items, cls=cls)
        except ConfigError as err:
            names = [*hints(cls), "Override", "key", "dagger"]
            assert_sentence(err, names + ([str(path)] if path else []))
            return
        assert_valid_config(cfg, cls)


@fuzz(250)
@given(config_yaml(TrainConfig), overrides(TrainConfig))
def test_config_loader(text, items):
    check_config(text, items, TrainConfig)


@pytest.mark.slow
@fuzz(5000)
@given(config_yaml(TrainConfig), overrides(TrainConfig))
def test_config_loader_many(text, items):
    check_config(text, items, TrainConfig)


def _segment_config():
    from ncssm_policies.arhmm import SegmentConfig

    return SegmentConfig


@fuzz(100)
@given(st.data())
def test_segment_config_loader(data):
    cls = _segment_config()
    check_config(data.draw(config_yaml(cls)), data.draw(overrides(cls)), cls)


@pytest.mark.slow
@fuzz(2000)
@given(st.data())
def test_segment_config_loader_many(data):
    cls = _segment_config()
    check_config(data.draw(config_yaml(cls)), data.draw(overrides(cls)), cls)


# ----------------------------------------------------------------------------------------------
# Task math: numpy against jax.numpy
# ----------------------------------------------------------------------------------------------

N_ENVS, T_CLIP, K_REF = 4, 6, 3  # fixed shapes: one compile serves every example


@functools.cache
def task_setup():
    """The test body, its index, and the task's step in numpy and jitted jax."""
    import jax
    import jax.numpy as jnp

    from ncssm_env import task
    from ncssm_env.body import BODIES, body_index, build_model

    m = build_model("test")
    idx = body_index(m, "test")
    cfg = task.TaskConfig()
    healthy_z = BODIES["test"].healthy_z
    ne = idx.n_end_effectors

    def step(xp, qpos, qvel, xpos, xmat, ref_fields, t, action, prev, finite):
        ref = task.Kin(*ref_fields)
        cur = task.kin(xp, idx, qpos, qvel, xpos, xmat)
        window = task.take(xp, ref, task.window(xp, T_CLIP, t, K_REF))
        obs = task.observation(xp, cur, window, prev, ne)
        err = task.errors(xp, cur, task.take(xp, ref, t), ne)
        rew, terms = task.reward(xp, cfg, err, action, prev)
        terminated, causes = task.termination(xp, cfg, err, cur, healthy_z, finite)
        metrics = task.metrics(xp, err, terms, causes)
        return {"obs": obs, "reward": rew, "terminated": terminated,
                "code": task.cause_code(xp, metrics), "torso_z": cur.torso_z,
                **{f"m_{k}": v for k, v in metrics.items()}}

    jitted = jax.jit(functools.partial(step, jnp))
    return types.SimpleNamespace(m=m, idx=idx, cfg=cfg, healthy_z=healthy_z, task=task,
                                 np_step=functools.partial(step, np), jax_step=jitted)


QUAT_STYLES = st.sampled_from(["random", "random", "identity", "flip", "half_turn"])
MIX = st.sampled_from([0.0, 1e-6, 1e-3, 0.05, 0.5, 1.0])
POS_SPAN = st.sampled_from([0.0, 0.1, 1.0, 10.0])
VEL_SPAN = st.sampled_from([0.0, 1.0, 50.0])


@st.composite
def task_inputs(draw):
    """A reference clip of the test body and N envs at, near or far from its frames.

    Hypothesis picks the seed and the structure (how far from the reference, how large the
    positions and velocities, whether joints and actions sit at their limits, identical,
    opposite-sign or half-turned root quaternions); numpy draws the values.
    """
    m = task_setup().m
    rng = np.random.default_rng(draw(SEEDS))
    span, edges = draw(POS_SPAN), draw(st.booleans())
    lo, hi = m.jnt_range[1:].T

    def qpos(n):
        pos = rng.uniform(-span, span, (n, 3))
        pos[:, 2] = rng.uniform(0.0, 0.4, n)  # around the healthy torso heights (0.03, 0.3)
        quat = rng.normal(size=(n, 4))
        quat /= np.linalg.norm(quat, axis=1, keepdims=True)
        joints = np.where(rng.random((n, len(lo))) < 0.5, lo, hi) if edges else \
            rng.uniform(lo, hi, (n, len(lo)))
        return np.concatenate([pos, quat, joints], axis=1)

    ref = qpos(T_CLIP)
    t = rng.integers(0, T_CLIP, N_ENVS).astype(np.int32)
    cur = ref[t] + draw(MIX) * (qpos(N_ENVS) - ref[t])  # from the reference frame to a random state
    style = draw(QUAT_STYLES)
    if style == "identity":
        ref[:, 3:7] = cur[:, 3:7] = [1.0, 0.0, 0.0, 0.0]
    elif style == "flip":  # -q: the same rotation
        cur[:, 3:7] = -ref[t, 3:7]
    elif style == "half_turn":  # turned by pi about x: root_rot = pi, where arcsin is steepest
        cur[:, 3:7] = np.stack([-ref[t, 4], ref[t, 3], ref[t, 6], -ref[t, 5]], axis=1)
    norm = np.linalg.norm(cur[:, 3:7], axis=1, keepdims=True)
    cur[:, 3:7] = np.where(norm > 0.1, cur[:, 3:7] / np.maximum(norm, 0.1), [1.0, 0, 0, 0])
    vspan = draw(VEL_SPAN)
    qvel = rng.uniform(-vspan, vspan, (N_ENVS, m.nv))
    lo_a, hi_a = m.actuator_ctrlrange.T
    action, prev = ((np.where(rng.random((N_ENVS, m.nu)) < 0.5, lo_a, hi_a) if edges else
                     rng.uniform(lo_a, hi_a, (N_ENVS, m.nu))) for _ in range(2))
    finite = rng.random(N_ENVS) < 0.8
    return ref, t, cur, qvel, action, prev, finite


def _kinematics(m, qpos):
    import mujoco

    d = mujoco.MjData(m)
    xpos = np.empty((len(qpos), m.nbody, 3))
    xmat = np.empty((len(qpos), m.nbody, 9))
    for i, q in enumerate(qpos):
        d.qpos[:] = q
        mujoco.mj_kinematics(m, d)
        xpos[i], xmat[i] = d.xpos, d.xmat
    return xpos, xmat


# float32 against float64: the observation and errors to ~1e-5 m or rad; the rotation angle
# near pi only to ~sqrt(float32 eps) (arcsin's slope is infinite at 1); the reward terms then
# move by at most |d term / d err| (<= 0.86 / scale) times that.
TOL_ERR = {"root_pos": 1e-5, "root_rot": 2e-3, "joints": 1e-5, "end_effectors": 1e-5,
           "bodies": 1e-5}


def check_task(inputs) -> None:
    s = task_setup()
    task, m, cfg = s.task, s.m, s.cfg
    ref_qpos, t, cur_qpos, qvel, action, prev, finite = inputs
    from ncssm_env.reference import clip_kinematics

    ref = clip_kinematics(m, s.idx, ref_qpos, np.zeros((T_CLIP, m.nv)))
    xpos, xmat = _kinematics(m, cur_qpos)
    args = (cur_qpos, qvel, xpos, xmat, tuple(ref), t, action, prev, finite)
    want = s.np_step(*args)
    got = {k: np.asarray(v) for k, v in s.jax_step(*args).items()}
    assert set(got) == set(want) == {"obs", "reward", "terminated", "code", "torso_z",
                                     *(f"m_{k}" for k in task.METRICS)}
    for k, v in want.items():  # finite inputs: finite outputs, on both sides
        assert np.isfinite(v).all() and np.isfinite(got[k]).all(), k
        assert np.shape(v) == got[k].shape == ((N_ENVS, got["obs"].shape[-1]) if k == "obs"
                                               else (N_ENVS,)), k
    assert want["obs"].shape[-1] == task.obs_layout(K_REF, s.idx)["prev_action"][1]
    np.testing.assert_allclose(got["obs"], want["obs"], rtol=1e-5, atol=1e-4)
    errs = {k: want[f"m_err_{k}"] for k in task.ERRORS}
    for k, v in errs.items():
        assert (v >= 0).all()
        np.testing.assert_allclose(got[f"m_err_{k}"], v, rtol=1e-5, atol=TOL_ERR[k], err_msg=k)
    assert (errs["root_rot"] <= np.pi + 1e-9).all()
    tol_terms = {k: 0.86 / getattr(cfg, f"scale_{k}") * TOL_ERR[k] + 1e-5
                 for k in task.REWARD_TERMS}
    for k in task.REWARD_TERMS:
        v = want[f"m_rew_{k}"]
        assert ((0 <= v) & (v <= 1)).all()
        np.testing.assert_allclose(got[f"m_rew_{k}"], v, atol=tol_terms[k], err_msg=k)
    for k in task.COSTS:
        np.testing.assert_allclose(got[f"m_rew_{k}"], want[f"m_rew_{k}"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["reward"], want["reward"],
                               atol=sum(tol_terms.values()) + 1e-5)
    assert (want["reward"] <= sum(cfg.weights) + 1e-9).all()
    # terminations agree wherever float32 cannot flip them: away from each threshold
    lo, hi = s.healthy_z
    z = want["torso_z"]
    margins = {"too_far": np.abs(errs["root_pos"] - cfg.max_root_pos) > 2 * TOL_ERR["root_pos"],
               "bad_pose": np.abs(errs["joints"] - cfg.max_joints) > 2 * TOL_ERR["joints"],
               "bad_orientation": np.abs(errs["root_rot"] - cfg.max_root_rot)
               > 2 * TOL_ERR["root_rot"],
               "bad_height": np.minimum(np.abs(z - lo), np.abs(z - hi)) > 1e-6,
               "nan": np.ones(N_ENVS, bool)}
    clear = np.logical_and.reduce(list(margins.values()))
    for k in task.TERMINATIONS:
        w, g = want[f"m_term_{k}"], got[f"m_term_{k}"]
        assert set(np.unique(w)) <= {0.0, 1.0} and set(np.unique(g)) <= {0.0, 1.0}
        np.testing.assert_array_equal(g[margins[k]], w[margins[k]], err_msg=k)
    np.testing.assert_array_equal(want["m_term_nan"], ~finite)
    for side in (want, got):
        flags = np.stack([side[f"m_term_{k}"] > 0 for k in task.TERMINATIONS], axis=-1)
        np.testing.assert_array_equal(side["terminated"], flags.any(axis=-1))
        first = np.where(flags.any(axis=-1), flags.argmax(axis=-1) + 1, 0)
        np.testing.assert_array_equal(side["code"], first)
    np.testing.assert_array_equal(got["code"][clear], want["code"][clear])


@fuzz(50)
@given(task_inputs())
def test_task_math_numpy_matches_jax(inputs):
    check_task(inputs)


@pytest.mark.slow
@fuzz(1000)
@given(task_inputs())
def test_task_math_numpy_matches_jax_many(inputs):
    check_task(inputs)


# ----------------------------------------------------------------------------------------------
# Regression tests: each defect the fuzzing found, as a plain test of that case
# ----------------------------------------------------------------------------------------------


def _with_qpos(f, **attrs):
    f["qpos"] = np.zeros((3, 4))
    f.attrs.update(attrs)


def _with_obs(f, layout):
    f["obs"] = np.zeros((3, 4), np.float32)
    f["ctrl"] = np.zeros((3, 2), np.float32)
    f.attrs["obs_layout"] = layout


def _links(f, **links):
    _with_qpos(f)
    for key, link in links.items():
        f[key] = link


READER_CASES = {  # name: (how to write the file, what the message says)
    "null dataspace": (lambda f: f.create_dataset("qpos", data=h5py.Empty("f8")),
                       "'qpos' is empty (a null dataspace)"),
    "dangling link": (lambda f: _links(f, obs=h5py.SoftLink("/nowhere")),
                      "'obs' is a link that leads to nothing"),
    "missing external file": (lambda f: _links(f, ctrl=h5py.ExternalLink("/no/such.h5", "/x")),
                              "'ctrl' is a link that leads to nothing"),
    "loop of links": (lambda f: _links(f, obs=h5py.SoftLink("/ctrl"), ctrl=h5py.SoftLink("/obs")),
                      "is a link that leads to nothing"),
    "schema_version array": (lambda f: _with_qpos(f, schema_version=np.array([1, 1])),
                             "schema_version is array([1, 1])"),
    "schema_version 2-D": (lambda f: _with_qpos(f, schema_version=np.ones((2, 2))),
                           "schema_version is array([[1., 1.], [1., 1.]])"),
    "schema_version true": (lambda f: _with_qpos(f, schema_version=True), "schema_version is"),
    "control_dt 2-D": (lambda f: _with_qpos(f, control_dt=np.zeros((2, 2))), "control_dt is"),
    "body 2-D": (lambda f: _with_qpos(f, body=np.zeros((2, 2))), "attribute 'body' is"),
    "dart_of 2-D": (lambda f: _with_qpos(f, dart_of=np.zeros((2, 2), int)), "dart_of is"),
    "dart_of past int64": (lambda f: _with_qpos(f, dart_of=np.uint64(2**64 - 1)), "dart_of is"),
    "obs_layout nested deep": (lambda f: _with_obs(f, "[" * 100_000), "nested too deeply"),
    "obs_layout huge int": (lambda f: _with_obs(f, '{"a": [0, 1' + "0" * 5000 + "]}"),
                            "not valid JSON (Exceeds the limit"),
    "obs_layout entry 2-D": (lambda f: _with_obs(f, '{"a": [[0], [1]]}'),
                             "entry 'a' is [[0], [1]]"),
}


@pytest.mark.parametrize("case", sorted(READER_CASES))
def test_reader_refuses_found_cases(tmp_path, case):
    write, says = READER_CASES[case]
    path = tmp_path / "clip_0.h5"
    with h5py.File(path, "w") as f:
        write(f)
    with pytest.raises(ClipError) as err:
        ClipStore(tmp_path)
    assert says in assert_sentence(err.value, [path])


def test_labels_only_under_plain_names(tmp_path):
    """h5py cuts a name at its first NUL ("a\\x00b" found "a") and raised on "\\x00", a lone
    surrogate or a loop of links; a label read now refuses such names in one sentence."""
    path = write_clip(tmp_path / "clip_0.h5", {"qpos": np.zeros((3, 2))}, obs_layout=None,
                      body="test", control_dt=0.02, generator="test")
    with h5py.File(path, "a") as f:
        f["a"] = np.arange(3)
        f["loop"] = h5py.SoftLink("/loop")
    with ClipStore(tmp_path) as store:
        assert store.holds("a") and store.read_labels(0, "a").tolist() == [0, 1, 2]
        for key in ("a\x00b", "\x00", "\ud800", "", "loop"):
            assert not store.holds(key)
            with pytest.raises(ClipError) as err:
                store.read_labels(0, key)
            assert_sentence(err.value, [path])


WRITE_CASES = {  # name: (changes to good arguments, what the message says)
    "zero frames": ({"arrays": {"qpos": np.zeros((0, 3))}}, "0 frames, expected at least 1"),
    "dart_of negative": ({"dart_of": -1}, "dart_of is -1"),
    "dart_of float": ({"dart_of": 0.5}, "dart_of is 0.5"),
    "dart_of string": ({"dart_of": "1"}, "dart_of is '1'"),
    "dart_of bool": ({"dart_of": True}, "dart_of is True"),
    "dart_of past int64": ({"dart_of": 2**70}, "dart_of is 1180591620717411303424"),
    "body with NUL": ({"body": "a\x00b"}, "HDF5 cannot store"),
    "body with lone surrogate": ({"body": "a\ud800"}, "HDF5 cannot store"),
    "generator with NUL": ({"generator": "\x00"}, "HDF5 cannot store"),
    "control_dt 2-D": ({"control_dt": np.full((2, 2), 0.02)}, "control_dt is array([[0.02, "),
    "layout entry 2-D": ({"arrays": {"obs": np.zeros((2, 3)), "ctrl": np.zeros((2, 1))},
                          "obs_layout": {"a": np.array([[0], [1]])}},
                         "entry 'a' is array([[0], [1]])"),
}


@pytest.mark.parametrize("case", sorted(WRITE_CASES))
def test_write_clip_refuses_found_cases(tmp_path, case):
    changes, says = WRITE_CASES[case]
    args = {"arrays": {"qpos": np.zeros((2, 3))}, "obs_layout": None, "body": "test",
            "control_dt": 0.02, "generator": "test", "dart_of": None, **changes}
    path = tmp_path / "clip_0.h5"
    with pytest.raises(ClipError) as err:
        write_clip(path, **args)
    assert says in assert_sentence(err.value, [path])
    assert os.listdir(tmp_path) == []


LAUGHS = "model_kwargs: {a: &a [x, x, x, x, x, x, x, x, x, x]" + "".join(
    f", {b}: &{b} [{', '.join(['*' + a] * 10)}]" for a, b in zip("abcde", "bcdef")) + "}"
CONFIG_CASES = {  # name: (file text or bytes, overrides, what the message says)
    "no such date": ("seed: 2001-13-45", [], "cannot be read (month must be in 1..12)"),
    "no such date, override": (None, ["seed=2001-13-45"], "'seed' must be an int"),
    "!!bool maybe": ("conj_sym: !!bool maybe", [], "cannot be read (KeyError: 'maybe')"),
    "!!int abc": ("seed: !!int abc", [], "cannot be read (invalid literal for int()"),
    "!!float abc": ("dt_min: !!float abc", [], "cannot be read (could not convert"),
    "flow nested deep": ("a: " + "[" * 10_000, [], "nested more than 32 deep"),
    "flow nested deep, override": (None, ["model_kwargs=" + "{a: " * 10_000],
                                   "'model_kwargs' must be a mapping"),
    "block nested deep": ("model_kwargs:\n" + "".join(" " * i + "-\n" for i in range(700)), [],
                          "nested too deeply"),
    "not UTF-8": (b"seed: \xff", [], "is not UTF-8 text (byte 6: b'\\xff')"),
    "contains itself": ("model_kwargs: &a {x: *a}", [], "'model_kwargs' contains itself"),
    "contains itself, override": (None, ["model_kwargs=&a {x: *a}"], "contains itself"),
    "a billion laughs": (LAUGHS, [], "'model_kwargs' holds more than 100000 values"),
    "nested 40 deep": ("model_kwargs:\n" + "".join(" " * i + "- \n" for i in range(40)), [],
                       "nests more than 32 levels deep"),
    "NaN": ("learning_rate: .nan", [], "'learning_rate' must be a finite number, got nan"),
    "Inf": ("ssm_lr: .inf", [], "'ssm_lr' must be a finite number"),
    "1e400": ("weight_decay: 1e400", [], "'weight_decay' must be a finite number, got '1e400'"),
    "int past 1e308": ("grad_clip: 1" + "0" * 400, [], "'grad_clip' must be a finite number"),
    "NUL in a string": ('name: "a\\0b"', [], "'name' must be a string without NUL"),
    "negative seed": ("seed: -1", [], "'seed' must be an int in [0, 2**32)"),
    "seed past 64 bits": (None, ["seed=18446744073709551616"], "'seed' must be an int in"),
    "negative clip_idx": ("clip_idx: -1", [], "'clip_idx' must be >= 0"),
    "negative hidden width": ("decoder_hidden: [-1]", [], "'decoder_hidden' must hold widths"),
    "zero in_dim": ("in_dim: [0]", [], "'in_dim' must hold widths >= 1"),
    "negative out_dim": ("out_dim: -2", [], "'out_dim' must hold widths >= 1"),
    "zero int_dim": ("int_dim: 0", [], "'int_dim' must hold widths >= 1"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_refuses_found_cases(tmp_path, case):
    import time

    text, items, says = CONFIG_CASES[case]
    path = None
    if text is not None:
        path = tmp_path / "c.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(path, items)
    assert time.perf_counter() - start < 10  # "[" * 10_000 once scanned for minutes
    assert says in assert_sentence(err.value, [*FIELDS, "Override", path or "config"])


@pytest.mark.parametrize("text, says", [("num_states: 1", "num_states (K) must be an int >= 2"),
                                        ("target_duration: .inf", "must be a finite number"),
                                        ("kappa: 1e400", "must be a finite number")])
def test_segment_config_refuses_with_config_error(tmp_path, text, says):
    """SegmentConfig's own checks raised a plain ValueError through load_config."""
    path = tmp_path / "segment.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, cls=_segment_config())
    assert says in assert_sentence(err.value, [*hints(_segment_config()), path])
