"""The bad-input corpus (issue 18): every case writes one bad input into a fresh folder at test
time (no binary file is committed) and names the public entry point that must refuse it.

A case is ``Case(id, what, build, entry, expect)``:

- ``build(work, kit)`` writes the bad input into the folder ``work`` (the current folder while
  the case runs) and returns what the entry point is called with: a clip folder for
  ``ClipStore``; ``Env(kwargs, reset, action)`` for ``gymnasium.make``; a checkpoint folder for
  ``load_policy``; ``evaluate``'s keyword arguments; the argument list for a command line.
  ``kit`` holds what cases share: ``kit.clips`` (three good clips of the test body),
  ``kit.checkpoint`` (a good run folder of a small S5 policy for them: a real checkpoint of
  untrained parameters, nothing is ever trained), ``kit.save_checkpoint(run, **config)`` (one
  of another config) and ``kit.install(key, source)`` (a plugin distribution on ``sys.path``,
  found through its entry point as an installed one is);
- ``entry``: ``ClipStore``, ``gymnasium.make``, ``load_policy``, ``evaluate``, or a command
  (``ncssm-train``, ``ncssm-rollout``, ``ncssm-data``) run in-process through its ``main``;
  ``subprocess=True`` runs the installed console script instead;
- ``expect``: a fragment of the one sentence the user gets.

``tests/test_corpus.py`` runs each case and checks that the user gets one sentence with no
traceback, that a command exits with status 2, and that no file in ``work`` was added,
changed or removed. The README's Reliability section lists every case with its sentence.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # one line for people
    build: Callable[[Path, Any], Any]
    entry: str
    expect: str  # a fragment of the sentence
    subprocess: bool = False
    period: bool = True  # the sentence ends with "." (gymnasium's own sentences do not)


@dataclass(frozen=True)
class Env:
    """``gymnasium.make("NCSSM-Track-v0", **kwargs)``, then ``reset(seed=0)`` if ``reset``, then
    ``step(action)`` if an action is given."""

    kwargs: dict
    reset: bool = True
    action: Any = None


@dataclass(frozen=True)
class Call:
    """Keyword arguments of a Python entry point (``evaluate``)."""

    kwargs: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Clip files
# ----------------------------------------------------------------------------------------------

LAYOUT = {"ref": [0, 8], "qpos_local": [8, 12]}


def arrays(T: int = 20) -> dict[str, np.ndarray]:
    """A small valid clip: obs (T, 12), ctrl (T, 3), qpos (T, 7)."""
    rng = np.random.default_rng(0)
    return {"obs": rng.normal(size=(T, 12)).astype(np.float32),
            "ctrl": rng.uniform(-1, 1, size=(T, 3)).astype(np.float32),
            "qpos": rng.normal(size=(T, 7))}


def raw_clip(folder: Path, attrs: dict | None = None, name: str = "clip_0.h5",
             **datasets) -> Path:
    """A clip file written directly with h5py (bypassing write_clip's checks): the valid
    ``arrays()`` with ``datasets`` replacing (None: removing) some, and ``attrs``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {**arrays(), **datasets}
    with h5py.File(folder / name, "w") as f:
        for key, value in data.items():
            if value is not None:
                if isinstance(value, dict):  # {"shape": ..., "dtype": ..., "chunks": ...}: no data
                    f.create_dataset(key, **value)
                else:
                    f.create_dataset(key, data=value)
        f.attrs.update({"schema_version": 1, "obs_layout": json.dumps(LAYOUT), "body": "test_body",
                        "control_dt": 0.02, **(attrs or {})})
    return folder


def good_clip(folder: Path, T: int = 20) -> Path:
    from ncssm_data import write_clip

    folder.mkdir(parents=True, exist_ok=True)
    write_clip(folder / "clip_0.h5", arrays(T), obs_layout={k: tuple(v) for k, v in LAYOUT.items()},
               body="test_body", control_dt=0.02, generator="corpus")
    return folder


def truncated(work: Path, kit) -> Path:
    path = good_clip(work / "clips", T=200) / "clip_0.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.parent


def zero_bytes(work: Path, kit) -> Path:
    (work / "clips").mkdir()
    (work / "clips" / "clip_0.h5").write_bytes(b"")
    return work / "clips"


def wrong_magic(work: Path, kit) -> Path:
    path = good_clip(work / "clips") / "clip_0.h5"
    data = path.read_bytes()
    assert data[:8] == b"\x89HDF\r\n\x1a\n"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data[8:])
    return path.parent


def nan_obs(work: Path, kit) -> Path:
    obs = arrays()["obs"]
    obs[7, 3] = np.nan
    return raw_clip(work / "clips", obs=obs)


def inf_ctrl(work: Path, kit) -> Path:
    ctrl = arrays()["ctrl"]
    ctrl[11, 0] = -np.inf
    return raw_clip(work / "clips", ctrl=ctrl)


BILLION = {"obs": {"shape": (10**9, 1000), "dtype": "f4", "chunks": (64, 64)},
           "ctrl": {"shape": (10**9, 3), "dtype": "f4", "chunks": (64, 3)},
           "qpos": {"shape": (10**9, 7), "dtype": "f8", "chunks": (64, 7)}}


def billion_frames(work: Path, kit) -> Path:
    """Datasets that declare 10**9 frames (4 TB of obs) and store none: a file of a few KB.
    Reading one whole would fail to allocate 3.6 TiB at once, never fill memory slowly."""
    folder = raw_clip(work / "clips", **BILLION)
    assert (folder / "clip_0.h5").stat().st_size < 100_000
    return folder


def other_body_clips(work: Path, kit) -> Path:
    """Clips of the rodent (qpos 74 wide) given to the test body."""
    T = 20
    return raw_clip(work / "clips", {"body": "rodent"}, obs=None, ctrl=None,
                    qpos=np.tile(np.r_[0, 0, 0.1, 1, 0, 0, 0, np.zeros(67)], (T, 1)))


def group_ctrl(work: Path) -> Path:
    folder = raw_clip(work / "clips", ctrl=None)
    with h5py.File(folder / "clip_0.h5", "r+") as f:
        f.create_group("ctrl")
    return folder


def clip_case(id: str, what: str, expect: str, **datasets) -> Case:
    attrs = datasets.pop("attrs", None)
    return Case(id, what, lambda work, kit: raw_clip(work / "clips", attrs, **datasets),
                "ClipStore", expect)


# ----------------------------------------------------------------------------------------------
# NPZ / NPY: pickled objects are refused, never loaded
# ----------------------------------------------------------------------------------------------


class Canary:
    """Unpickling it opens (so creates) the file ``path``: the case fails if it ever is."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickled_array(work: Path) -> np.ndarray:
    a = np.empty(2, dtype=object)
    a[:] = [Canary(str(work / "UNPICKLED")), 1.0]
    return a


def pickled_npz(work: Path, kit) -> list[str]:
    np.savez(work / "motion.npz", qpos=pickled_array(work))
    return ["import", "--qpos", str(work / "motion.npz"), "--body", "test", "--out", "out"]


def pickled_names_npz(work: Path, kit) -> list[str]:
    qpos = np.tile(np.r_[0, 0, 0.1, 1, 0, 0, 0, np.zeros(4)], (20, 1))
    np.savez(work / "motion.npz", qpos=qpos, names=pickled_array(work))
    return ["import", "--qpos", str(work / "motion.npz"), "--names", "names", "--body", "test",
            "--out", "out"]


def pickled_npy(work: Path, kit) -> list[str]:
    np.save(work / "motion.npy", pickled_array(work), allow_pickle=True)
    return ["import", "--qpos", str(work / "motion.npy"), "--body", "test", "--out", "out"]


def billion_frames_h5(work: Path, kit) -> list[str]:
    with h5py.File(work / "motion.h5", "w") as f:
        f.create_dataset("qpos", shape=(10**9, 11), dtype="f8", chunks=(64, 11))
    return ["import", "--qpos", str(work / "motion.h5"), "--body", "test", "--out", "out"]


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def config(text: str, *extra: str, entry: str = "ncssm-train") -> Callable[[Path, Any], list[str]]:
    """A builder writing ``text`` to ``work/config.yaml``; the command line names it."""

    def build(work: Path, kit) -> list[str]:
        (work / "config.yaml").write_text(text.replace("{work}", str(work)))
        if entry == "ncssm-data":
            return ["segment", "--config", "config.yaml", *extra]
        return ["--config", "config.yaml", *extra]

    return build


def laughs() -> str:
    """YAML aliases that expand to 9**8 (43 million) strings: a 'billion laughs'."""
    names = "abcdefgh"
    lines = ["  a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  {n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:])]
    return "model_kwargs:\n" + "\n".join(lines) + "\ntags: *h\n"


DEEP = "model_kwargs: {a: " + "[" * 1200 + "]" * 1200 + "}\n"


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def copy_checkpoint(work: Path, kit, edit: Callable[[Path], None] | None = None) -> Path:
    """A copy of the kit's good run folder in ``work/run``; ``edit(step_dir)`` breaks it."""
    run = work / "run"
    shutil.copytree(kit.checkpoint, run)
    (step,) = (run / "checkpoints" / "best").iterdir()
    if edit is not None:
        edit(step)
    return run


def edit_config(**changes) -> Callable[[Path], None]:
    def edit(step: Path) -> None:
        path = step / "config" / "metadata"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return edit


def drop_item(name: str) -> Callable[[Path], None]:
    return lambda step: shutil.rmtree(step / name)


def checkpoint_case(id: str, what: str, expect: str, edit) -> Case:
    return Case(id, what, lambda work, kit: copy_checkpoint(work, kit, edit), "load_policy", expect)


# ----------------------------------------------------------------------------------------------
# Plugins: real distributions (a dist-info with an ncssm entry point), on sys.path
# ----------------------------------------------------------------------------------------------

PLUGIN = "from ncssm_policies.hookspecs import PolicySpec, hookimpl\n\nNCSSM_API_VERSION = 1\n"

HOOK_RAISES = PLUGIN + """
@hookimpl
def ncssm_register_policies():
    raise ValueError("bad hook")
"""

APPLY_RAISES = PLUGIN + """
def make(out_dim, **hparams):
    import flax.linen as nn

    class Raises(nn.Module):
        out_dim: int

        def __call__(self, x, train=False):
            raise RuntimeError("boom in apply")

        def initialize_carry(self, batch_size):
            return ()

        def step(self, carry, x_t):
            raise RuntimeError("boom in step")

    return Raises(out_dim)


@hookimpl
def ncssm_register_policies():
    return [PolicySpec("raises", make=make, description="raises when applied")]
"""

NAN = PLUGIN + """
def make(out_dim, **hparams):
    import flax.linen as nn
    import jax.numpy as jnp

    class NaN(nn.Module):
        out_dim: int

        def setup(self):
            self.dense = nn.Dense(self.out_dim)

        def __call__(self, x, train=False):
            return self.dense(x) * jnp.nan

        def forward(self, carry, x, train=False):
            return carry, self(x)

        def initialize_carry(self, batch_size):
            return jnp.zeros((batch_size, 1))

        def step(self, carry, x_t):
            return carry, self(x_t)

    return NaN(out_dim)


@hookimpl
def ncssm_register_policies():
    return [PolicySpec("nan", make=make, description="outputs NaN")]
"""

COLLIDES = PLUGIN + """
@hookimpl
def ncssm_register_policies():
    return [PolicySpec("dup", make=lambda out_dim, **hp: None, description="claims dup")]
"""

MAKES_NONE = PLUGIN + """
@hookimpl
def ncssm_register_policies():
    return [PolicySpec("nothing", make=lambda out_dim, **hp: None, description="makes None")]
"""

BAD_NAME = PLUGIN + """
@hookimpl
def ncssm_register_policies():
    return [PolicySpec("my policy!", make=lambda out_dim, **hp: None, description="a bad name")]
"""


def plugin_checkpoint(key: str, source: str, model_type: str):
    def build(work: Path, kit) -> Path:
        kit.install(key, source)
        return copy_checkpoint(work, kit, edit_config(model_type=model_type))

    return build


def nan_policy(work: Path, kit) -> Call:
    """A run folder of the NaN plugin's policy (its real parameters), evaluated closed loop."""
    kit.install("nan", NAN)
    run = kit.save_checkpoint(work / "run", model_type="nan")
    return Call(dict(policy=run, clip_dir=kit.clips, num_envs=2, episodes=2, baselines=(),
                     behaviour=False))


def collision(work: Path, kit) -> list[str]:
    """Two plugins register 'dup' (so neither gets it) and the checkpoint's policy is 'dup'."""
    kit.install("collides_a", COLLIDES)
    kit.install("collides_b", COLLIDES)
    run = copy_checkpoint(work, kit, edit_config(model_type="dup"))
    return ["--override", f"checkpoint={run}", "out_dir=out", "episodes=1", "num_envs=1",
            "video=false"]


def collision_train(work: Path, kit) -> list[str]:
    kit.install("collides_a", COLLIDES)
    kit.install("collides_b", COLLIDES)
    return ["--override", "model_type=dup", f"clip_dir={kit.clips}", "seg_len=30",
            "batch_size=4"]


# ----------------------------------------------------------------------------------------------
# The corpus
# ----------------------------------------------------------------------------------------------

CASES: list[Case] = [
    # --- HDF5 clip files, opened (and read whole) by ClipStore --------------------------------
    Case("h5-truncated", "a clip file cut in half", truncated, "ClipStore",
         "is not a readable HDF5 file (truncated or corrupt?)"),
    Case("h5-zero-bytes", "an empty clip file", zero_bytes, "ClipStore",
         "is not a readable HDF5 file"),
    Case("h5-wrong-magic", "a clip file whose signature is PNG's", wrong_magic, "ClipStore",
         "is not a readable HDF5 file"),
    clip_case("h5-object-dtype", "/ctrl of variable-length strings (object dtype)",
              "dataset 'ctrl' has dtype object, expected a numeric",
              ctrl=np.array([str(i) for i in range(20)], dtype=h5py.string_dtype())[:, None]),
    clip_case("h5-string-dtype", "/ctrl of fixed-length bytes",
              "dataset 'ctrl' has dtype |S1, expected a numeric",
              ctrl=np.full((20, 3), b"a")),
    clip_case("h5-compound-dtype", "/qpos of records (a compound dtype)",
              "dataset 'qpos' has dtype",
              qpos=np.zeros((20, 7), dtype=[("a", "f4"), ("b", "i4")])),
    Case("h5-nan", "a NaN in /obs", nan_obs, "ClipStore", "'obs' holds a non-finite value (NaN) "
                                                           "at frame 7"),
    Case("h5-inf", "-Inf in /ctrl", inf_ctrl, "ClipStore",
         "'ctrl' holds a non-finite value (Inf) at frame 11"),
    clip_case("h5-rank-3", "/qpos with three dims", "'qpos' has shape (20, 2, 2), expected 2 dims",
              qpos=np.zeros((20, 2, 2))),
    clip_case("h5-rank-1", "/obs with one dim", "'obs' has shape (20,), expected 2 dims",
              obs=np.zeros(20, np.float32)),
    clip_case("h5-null-dataspace", "/ctrl with no dataspace (h5py.Empty)", "dataset 'ctrl' is empty (a null dataspace)",
              ctrl=h5py.Empty("f4")),
    clip_case("h5-lengths-disagree", "/ctrl one frame shorter than /obs",
              "'ctrl' has 19 frames but 'obs' has 20", ctrl=np.zeros((19, 3), np.float32)),
    Case("h5-billion-frames", "datasets that declare 10**9 frames and store none",
         billion_frames, "ClipStore", "declares 1000000000 frames (shape"),
    clip_case("h5-layout-not-json", "an obs_layout attribute that is not JSON",
              "the observation layout is not valid JSON", attrs={"obs_layout": "{ref: [0, 8]"}),
    clip_case("h5-layout-not-string", "an obs_layout attribute that is an array of 40 ints",
              "attribute 'obs_layout' is", attrs={"obs_layout": np.arange(40)}),
    clip_case("h5-layout-overlap", "layout slices [0, 6) and [4, 12) that cross",
              "entries 'a' [0, 6) and 'b' [4, 12) overlap",
              attrs={"obs_layout": json.dumps({"a": [0, 6], "b": [4, 12]})}),
    clip_case("h5-layout-out-of-range", "a layout slice past the obs width",
              "entry 'ref' is [0, 13), expected 0 <= start < stop <= 12",
              attrs={"obs_layout": json.dumps({"ref": [0, 13]})}),
    clip_case("h5-schema-newer", "schema_version 2, newer than this code",
              "schema_version is 2, expected 1", attrs={"schema_version": 2}),
    Case("h5-group-not-dataset", "/ctrl is a group", lambda work, kit: group_ctrl(work),
         "ClipStore", "'ctrl' is a Group, expected a dataset"),
    # --- the env ---------------------------------------------------------------------------
    Case("env-action-shape", "an action of 3 numbers for a body with 4 actuators",
         lambda work, kit: Env(dict(body="test", clip_dir=kit.clips), action=np.zeros(3)),
         "gymnasium.make", "Action has shape (3,); body 'test' expects (4,)"),
    Case("env-action-strings", "an action of strings",
         lambda work, kit: Env(dict(body="test", clip_dir=kit.clips), action=np.array(["a"] * 4)),
         "gymnasium.make", "Action has dtype <U1; body 'test' expects"),
    Case("env-action-objects", "an action of Python objects (None)",
         lambda work, kit: Env(dict(body="test", clip_dir=kit.clips),
                               action=np.array([None] * 4, dtype=object)),
         "gymnasium.make", "Action has dtype object; body 'test' expects"),
    Case("env-action-complex", "an action of complex numbers",
         lambda work, kit: Env(dict(body="test", clip_dir=kit.clips), action=np.ones(4) * 1j),
         "gymnasium.make", "Action has dtype complex128; body 'test' expects"),
    Case("env-step-before-reset", "step() before reset()",
         lambda work, kit: Env(dict(body="test", clip_dir=kit.clips), reset=False,
                               action=np.zeros(4)),
         "gymnasium.make", "Cannot call env.step() before calling env.reset()", period=False),
    Case("env-other-body", "a clip folder of the rodent given to the test body",
         lambda work, kit: Env(dict(body="test", clip_dir=other_body_clips(work, kit)),
                               reset=False),
         "gymnasium.make", "have /qpos of width (74,), but body 'test' needs (11,)"),
    Case("env-billion-frames", "a clip folder whose clip declares 10**9 frames",
         lambda work, kit: Env(dict(body="test", clip_dir=billion_frames(work, kit)), reset=False),
         "gymnasium.make", "declares 1000000000 frames (shape"),
    # --- NPZ / NPY through ncssm-data import ------------------------------------------------------
    Case("npz-pickled", "an .npz whose qpos is a pickled object array", pickled_npz, "ncssm-data",
         "is not a readable .npz file without pickled data"),
    Case("npz-pickled-names", "an .npz whose joint names are pickled", pickled_names_npz,
         "ncssm-data", "is not a readable .npz file without pickled data"),
    Case("npy-pickled", "a pickled .npy array", pickled_npy, "ncssm-data",
         "has suffix '.npy', expected .npz, .h5 or .hdf5"),
    Case("import-billion-frames", "an .h5 qpos that declares 10**9 frames and stores none",
         billion_frames_h5, "ncssm-data", "declares 1000000000 frames (shape"),
    # --- configs (ncssm-train, ncssm-rollout, ncssm-data segment) ------------------------------------
    Case("yaml-python-tag", "a YAML tag that would run a command (!!python/object/apply)",
         config("epochs: !!python/object/apply:os.system ['touch {work}/RAN']\n"), "ncssm-train",
         "could not determine a constructor for the tag"),
    Case("yaml-billion-laughs", "YAML anchors and aliases that expand to 43 million strings",
         config(laughs()), "ncssm-train", "more than 100000 values"),
    Case("yaml-deep-nesting", "lists nested 1200 deep", config(DEEP), "ncssm-train",
         "found collections nested more than 32 deep"),
    Case("config-huge-int", "seed: 10**30", config("seed: 1" + "0" * 30 + "\n"), "ncssm-train",
         "key 'seed' must be an int"),
    Case("config-huge-float", "a learning rate of 400 digits", config("learning_rate: " + "9" * 400
                                                                       + "\n"),
         "ncssm-train", "key 'learning_rate' must be a finite number"),
    Case("config-nan", "learning_rate: .nan", config("learning_rate: .nan\n"), "ncssm-train",
         "key 'learning_rate' must be a finite number"),
    Case("config-wrong-type", "epochs: ten", config("epochs: ten\n"), "ncssm-train",
         "key 'epochs' must be an int, got 'ten'"),
    Case("config-unknown-key", "a misspelt key", config("lerning_rate: 0.1\n"), "ncssm-train",
         "unknown key 'lerning_rate'; did you mean 'learning_rate'?"),
    Case("config-not-mapping", "a config that is a list", config("- epochs\n- 3\n"), "ncssm-train",
         "must hold a mapping of keys to values, got list"),
    Case("config-runs-dir-escapes", "runs_dir: ../outside (climbs out of the working folder)",
         config("runs_dir: ../outside\n"), "ncssm-train",
         "key 'runs_dir' is '../outside', which leaves the current folder"),
    Case("config-out-dir-escapes", "ncssm-rollout out_dir=../../x",
         lambda work, kit: ["--override", f"checkpoint={kit.checkpoint}", "out_dir=../../x"],
         "ncssm-rollout", "key 'out_dir' is '../../x', which leaves the current folder"),
    Case("segment-out-dir-escapes", "ncssm-data segment with out_dir: ../segment",
         config("out_dir: ../segment\n", entry="ncssm-data"), "ncssm-data",
         "key 'out_dir' is '../segment', which leaves the current folder"),
    Case("override-deep-nesting", "--override with lists nested 1200 deep",
         lambda work, kit: ["--override", "model_kwargs={a: " + "[" * 1200 + "]" * 1200 + "}"],
         "ncssm-train", "key 'model_kwargs' must be a mapping, got '{a: [[[["),
    # --- checkpoints -------------------------------------------------------------------------
    checkpoint_case("ckpt-other-model", "a config whose d_model (32) is not the params' (16)",
                    "cannot be restored into the model its config describes",
                    edit_config(d_model=32)),
    checkpoint_case("ckpt-missing-params", "a checkpoint without its params item",
                    "has no 'params' item", drop_item("params")),
    checkpoint_case("ckpt-missing-meta", "a checkpoint without its meta item",
                    "has no readable 'meta' item", drop_item("meta")),
    checkpoint_case("ckpt-config-newer", "a saved config with a key this code does not know",
                    "was written by a newer ncssm", edit_config(attention_heads=4)),
    Case("ckpt-empty-folder", "ncssm-rollout on a folder without checkpoints",
         lambda work, kit: (work / "run").mkdir() or ["--override", "checkpoint=run"],
         "ncssm-rollout", "holds no checkpoints"),
    # --- plugins ----------------------------------------------------------------------------
    Case("plugin-hook-raises", "a plugin whose hook raises, asked for its policy",
         plugin_checkpoint("hook_raises", HOOK_RAISES, "fixture_hook"), "load_policy",
         "ncssm_register_policies() raised ValueError: bad hook"),
    Case("plugin-apply-raises", "a plugin policy whose apply raises",
         plugin_checkpoint("apply_raises", APPLY_RAISES, "raises"), "load_policy",
         "RuntimeError: boom in apply"),
    Case("plugin-nan-actions", "a plugin policy whose actions are NaN, evaluated closed loop",
         nan_policy, "evaluate", "were NaN or Inf", period=False),
    Case("plugin-name-collision", "a checkpoint of policy 'dup', which two plugins register",
         collision, "ncssm-rollout", "policy 'dup' is offered by two plugins"),
    Case("plugin-collision-list", "ncssm-train model_type=dup, which two plugins register",
         collision_train, "ncssm-train", "policy 'dup' is offered by two plugins"),
    Case("plugin-makes-none", "a plugin whose make() returns None instead of a module",
         plugin_checkpoint("makes_none", MAKES_NONE, "nothing"), "load_policy",
         "made a NoneType, expected a flax.linen.Module"),
    Case("plugin-bad-name", "a plugin that registers the name 'my policy!'",
         plugin_checkpoint("bad_name", BAD_NAME, "my policy!"), "load_policy",
         "whose name is 'my policy!', expected"),
    Case("train-run-dir-nested", "ncssm-train --run-dir new/run with a clip_dir that is not there",
         lambda work, kit: ["--run-dir", "new/run", "--override", "clip_dir=nowhere"],
         "ncssm-train", "Config key 'clip_dir' is 'nowhere', which is not a folder"),
    # --- the other ncssm-data commands -------------------------------------------------------------
    Case("generate-no-clips", "ncssm-data generate --clips 0",
         lambda work, kit: ["generate", "--body", "test", "--clips", "0", "--out", "gen"],
         "ncssm-data", "Need n_clips >= 1"),
    Case("dart-corrupt-clips", "ncssm-data dart on a folder with a truncated clip",
         lambda work, kit: ["dart", "--clip-dir", str(truncated(work, kit)), "--noise", "0.1"],
         "ncssm-data", "is not a readable HDF5 file"),
    Case("segment-nan-clips", "ncssm-data segment on clips with a NaN",
         lambda work, kit: ["segment", "--override", f"clip_dir={nan_obs(work, kit)}",
                            "feature=obs"],
         "ncssm-data", "'obs' holds a non-finite value (NaN) at frame 7"),
    # --- the console scripts themselves, as subprocesses -----------------------------------------
    Case("script-train-python-tag", "ncssm-train (console script) on a YAML tag",
         config("seed: !!python/object/apply:os.system ['touch {work}/RAN']\n"), "ncssm-train",
         "could not determine a constructor for the tag", subprocess=True),
    Case("script-rollout-missing", "ncssm-rollout (console script) on a missing run folder",
         lambda work, kit: ["--override", "checkpoint=nowhere"], "ncssm-rollout",
         "No checkpoint folder at nowhere", subprocess=True),
    Case("script-data-pickled", "ncssm-data import (console script) on a pickled .npz",
         pickled_npz, "ncssm-data", "is not a readable .npz file without pickled data",
         subprocess=True),
]


assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
