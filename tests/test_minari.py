"""``ncssm-data export-minari``: clips replayed through NCSSM-Track-v0 into a Minari dataset, and
Minari's ``DataCollector`` around the env."""

import shutil
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari")

import ncssm_env  # noqa: E402
from ncssm_data import ClipStore, write_clip  # noqa: E402
from ncssm_env.gym_env import json_kwargs  # noqa: E402
from ncssm_env.task import METRICS, TaskConfig  # noqa: E402
from ncssm_policies.data_cli import main  # noqa: E402

ID = "ncssm/test-clips-v0"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """``$MINARI_DATASETS_PATH`` pointed at a fresh folder for the module."""
    path = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(path))
        yield path


@pytest.fixture(scope="module")
def exported(root, test_clips):
    """The test clips (3 x 80 frames) exported as ``ID``; the CLI's stdout."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export-minari", str(test_clips), "--id", ID]) == 0
    return out.getvalue()


def test_episodes_are_the_clips_replayed(exported, root, test_clips):
    assert exported == (f"ncssm-data export-minari: wrote {ID} (3 episodes, 237 steps) to "
                        f"{root / ID}\n")
    dataset = minari.load_dataset(ID)
    assert dataset.total_episodes == 3 and dataset.total_steps == 3 * 79
    metadata = list(dataset.storage.get_episode_metadata(range(3)))
    with ClipStore(test_clips) as store:
        for i, (ep, meta) in enumerate(zip(dataset.iterate_episodes(), metadata)):
            c = store.read_clip(i, ["obs", "ctrl"])
            assert meta["options"]["clip"] == i and meta["options"]["start"] == 0
            np.testing.assert_array_equal(meta["options"]["noise"], np.zeros(4))
            assert ep.actions.dtype == np.float32 and ep.observations.dtype == np.float32
            np.testing.assert_array_equal(ep.actions, c["ctrl"][1:])         # (79, 4)
            np.testing.assert_array_equal(ep.observations[0], c["obs"][0])   # (80, 173)
            np.testing.assert_allclose(ep.observations, c["obs"], atol=1e-5, rtol=0)
            assert not ep.terminations.any() and ep.truncations.tolist() == [False] * 78 + [True]
            np.testing.assert_array_equal(ep.infos["clip"], np.full(80, i))
            np.testing.assert_array_equal(ep.infos["t"], np.arange(80))
            assert set(ep.infos["metrics"]) == set(METRICS)
            assert ep.infos["metrics"]["rew_joints"][0] == 0.0  # reset: zeros
            np.testing.assert_allclose(ep.infos["metrics"]["rew_joints"][1:], 1.0, atol=1e-9)


def test_recovered_env_has_the_spec_and_replays_the_episodes(exported, test_clips):
    dataset = minari.load_dataset(ID)
    env = dataset.recover_environment()
    want = gym.make(ncssm_env.ENV_ID, body="test", clip_dir=test_clips.absolute())
    assert env.spec.kwargs == want.spec.kwargs == {"body": "test",
                                                   "clip_dir": str(test_clips.absolute())}
    assert env.spec.id == ncssm_env.ENV_ID and env.spec.max_episode_steps == 1000
    assert dataset.observation_space == env.observation_space
    assert dataset.action_space == env.action_space
    ep = dataset[2]
    meta = next(dataset.storage.get_episode_metadata([2]))
    obs, _ = env.reset(seed=0, options=meta["options"])
    steps = [env.step(a) for a in ep.actions]
    np.testing.assert_array_equal(np.array([obs, *[s[0] for s in steps]]), ep.observations)
    np.testing.assert_array_equal([s[1] for s in steps], ep.rewards)
    np.testing.assert_array_equal([s[2] for s in steps], ep.terminations)
    np.testing.assert_array_equal([s[3] for s in steps], ep.truncations)


def test_env_spec_kwargs_are_json(test_clips):
    """Documented non-JSON kwargs (a Path, an array, a TaskConfig) reach the spec as JSON."""
    env = gym.make(ncssm_env.ENV_ID, body="test", clip_dir=test_clips, clips=np.arange(2),
                   K=np.int64(3), task=TaskConfig(reset_noise=0.0, healthy_z=(0.01, 1.0)))
    kwargs = env.spec.kwargs
    assert kwargs["clip_dir"] == str(test_clips) and kwargs["clips"] == [0, 1]
    assert type(kwargs["K"]) is int and kwargs["task"]["healthy_z"] == [0.01, 1.0]
    again = gym.make(gym.envs.registration.EnvSpec.from_json(env.spec.to_json())).unwrapped
    assert again.clip_ids.tolist() == [0, 1] and again.K == 3
    assert again.cfg == env.unwrapped.cfg
    assert json_kwargs({"a": (np.float32(0.5), [np.arange(2)])}) == {"a": [0.5, [[0, 1]]]}


def test_data_collector_around_the_env(root, test_clips):
    """Minari's own wrapper with record_infos around an env made with a Path and a numpy
    array: reset's info has step's keys, the ``minari_autoseed`` option it passes on is
    ignored with one warning, and the dataset's recovered env replays the episode."""
    env = gym.make(ncssm_env.ENV_ID, body="test", clip_dir=test_clips, clips=np.arange(3))
    collector = minari.DataCollector(env, record_infos=True)
    with pytest.warns(UserWarning, match="ignores the unknown reset option 'minari_autoseed'"):
        collector.reset(seed=3, options={"minari_autoseed": False, "clip": 1, "start": 70})
    rng = np.random.default_rng(0)
    lengths = []
    for episode in range(2):
        if episode:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the same option again: no second warning
                collector.reset(options={"minari_autoseed": True, "clip": 2, "start": 74})
        for n in range(1, 20):
            action = (0.1 * rng.uniform(-1, 1, 4)).astype(np.float32)
            *_, term, trunc, info = collector.step(action)
            if term or trunc:
                break
        lengths.append(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Minari's advice on the metadata left out
        dataset = collector.create_dataset("ncssm/collector-v0", algorithm_name="random")
    collector.close()
    assert lengths == [9, 5] and dataset.total_episodes == 2
    for ep, n, clip in zip(dataset.iterate_episodes(), lengths, (1, 2)):
        assert ep.observations.shape == (n + 1, env.observation_space.shape[0])
        assert ep.infos["clip"].tolist() == [clip] * (n + 1)
        assert set(ep.infos["metrics"]) == set(METRICS)
        assert ep.truncations[-1] and not ep.terminations.any()
    recovered = dataset.recover_environment()
    assert recovered.spec.kwargs == {"body": "test", "clip_dir": str(test_clips),
                                     "clips": [0, 1, 2]}
    ep = dataset[0]
    obs, _ = recovered.reset(seed=3, options={"clip": 1, "start": 70})
    replayed = [obs, *[recovered.step(a)[0] for a in ep.actions]]
    np.testing.assert_array_equal(replayed, ep.observations)


def test_rodent(tmp_path, root):
    """The rodent's path, tiny: one clip of 12 frames."""
    from ncssm_env.minari_export import export_minari
    from ncssm_env.synthetic import generate

    generate(tmp_path, body="rodent", n_clips=1, n_frames=12, seed=0, progress=False)
    s = export_minari(tmp_path, "ncssm/rodent-tiny-v0")
    assert s["episodes"] == 1 and s["steps"] == 11 and s["terminated"] == []
    ep = minari.load_dataset("ncssm/rodent-tiny-v0")[0]
    with ClipStore(tmp_path) as store:
        c = store.read_clip(0, ["obs", "ctrl"])
    assert ep.observations.shape == (12, 786) and ep.actions.shape == (11, 38)
    np.testing.assert_array_equal(ep.actions, c["ctrl"][1:])
    np.testing.assert_allclose(ep.observations, c["obs"], atol=1e-5, rtol=0)


def test_overwrite_replaces_and_keeps_nothing_aside(tmp_path, root, test_clips):
    """``--root`` over ``$MINARI_DATASETS_PATH``; ``--overwrite`` leaves only the new dataset."""
    one, other = tmp_path / "one", tmp_path / "other_root"
    one.mkdir()
    shutil.copy(test_clips / "clip_2.h5", one / "clip_0.h5")
    args = ["export-minari", "--id", "ncssm/over-v0", "--root", str(other)]
    assert main([*args, str(one)]) == 0
    assert minari.MinariDataset(other / "ncssm/over-v0/data").total_episodes == 1
    assert main([*args, str(test_clips), "--overwrite"]) == 0
    assert minari.MinariDataset(other / "ncssm/over-v0/data").total_episodes == 3
    assert sorted(p.name for p in (other / "ncssm").iterdir()) == ["namespace_metadata.json",
                                                                   "over-v0"]
    assert not (root / "ncssm" / "over-v0").exists()


def _reference_only(path, test_clips):
    path.mkdir()
    with ClipStore(test_clips) as store:
        write_clip(path / "clip_0.h5", {"qpos": store.read(0, "qpos")}, obs_layout=None,
                   body="test", control_dt=store.control_dt, generator="test")
    return path


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("not_clips", "clip_0.h5"),
    ("reference_only", "lack the dataset /ctrl"),
    ("bad_id", "Dataset id 'no-version' is not of the form"),
    ("exists", f"Minari dataset '{ID}' already exists"),
])
def test_bad_input_is_one_sentence(case, match, exported, tmp_path, root, test_clips, capsys):
    clip_dir, dataset_id = test_clips, ID if case == "exists" else "ncssm/bad-v0"
    if case == "missing":
        clip_dir = tmp_path / "nowhere"
    elif case == "not_clips":
        clip_dir = tmp_path
        (tmp_path / "clip_0.h5").write_text("not HDF5")
    elif case == "reference_only":
        clip_dir = _reference_only(tmp_path / "ref", test_clips)
    elif case == "bad_id":
        dataset_id = "no-version"
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert main(["export-minari", str(clip_dir), "--id", dataset_id]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncssm-data: error: ") and match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written
    assert minari.load_dataset(ID).total_episodes == 3  # nothing lost


def test_without_minari(monkeypatch, test_clips, capsys):
    monkeypatch.setitem(sys.modules, "minari", None)  # import minari fails
    assert main(["export-minari", str(test_clips), "--id", "ncssm/none-v0"]) == 2
    assert capsys.readouterr().err == ('ncssm-data: error: Exporting to Minari needs the minari '
                                       'package: pip install "ncssm[minari]".\n')
