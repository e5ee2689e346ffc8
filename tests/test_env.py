"""TrackEnv through ``gymnasium.make``: the Gymnasium contract, replay, rendering, bad input."""

import copy
import pickle
import warnings

import h5py
import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import ncssm_env
from ncssm_data import ClipError, ClipStore, write_clip
from ncssm_env.body import build_model
from ncssm_env.synthetic import builtin_clips, cache_dir, upright_fraction


def make(clip_dir, **kw):
    return gym.make(ncssm_env.ENV_ID, body=kw.pop("body", "test"), clip_dir=clip_dir, **kw)


def _replay_qpos(body, clip_dir, i):
    """Replay clip ``i``'s controls open-loop in raw MuJoCo from its first state."""
    with ClipStore(clip_dir) as store:
        c = store.read_clip(i)
    m = build_model(body)
    d = mujoco.MjData(m)
    d.qpos[:], d.qvel[:], d.act[:] = c["qpos"][0], c["qvel"][0], c["act"][0]
    out = [d.qpos.copy()]
    for t in range(1, len(c["ctrl"])):
        d.ctrl[:] = c["ctrl"][t]
        mujoco.mj_step(m, d, nstep=10)
        out.append(d.qpos.copy())
    return np.array(out), c["qpos"]


# --- the Gymnasium contract ------------------------------------------------------------------


def test_rodent_with_builtin_clips_passes_check_env(rodent_clips):
    env = gym.make(ncssm_env.ENV_ID)  # the rodent and the built-in clips, as a user would
    assert env.unwrapped.clip_dir == rodent_clips
    assert env.observation_space.shape == (max(b for _, b in env.unwrapped.obs_layout.values()),)
    assert env.action_space.shape == (38,)
    assert env.spec.max_episode_steps == ncssm_env.MAX_EPISODE_STEPS
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_test_body_passes_check_env(test_clips):
    env = make(test_clips, render_mode="rgb_array")
    check_env(env.unwrapped)
    env.close()


def test_builtin_clips_are_long_upright_and_cached(rodent_clips):
    store = ClipStore(rodent_clips)
    assert len(store) >= 16 and store.lengths.min() >= 500
    assert store.body == "rodent" and store.has("latent_mean") and store.has("syllables")
    fractions = [upright_fraction(store.read(i, "obs"), store.obs_layout) for i in range(len(store))]
    assert np.mean(fractions) > 0.9, fractions
    assert rodent_clips.parent == cache_dir()
    mtime = (rodent_clips / "clip_0.h5").stat().st_mtime_ns
    assert builtin_clips("rodent") == rodent_clips  # a second call does not regenerate
    assert (rodent_clips / "clip_0.h5").stat().st_mtime_ns == mtime


def test_cache_folder_follows_xdg(monkeypatch, tmp_path):
    """``$NCSSM_CACHE``, else ``$XDG_CACHE_HOME/ncssm``, else ``~/.cache/ncssm``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("NCSSM_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("NCSSM_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "ncssm"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # blank counts as unset
    assert cache_dir() == tmp_path / "home" / ".cache" / "ncssm"


def test_obs_layout_is_the_clips_layout(test_clips):
    env = make(test_clips)
    with ClipStore(test_clips) as store:
        assert {k: tuple(v) for k, v in store.obs_layout.items()} == env.unwrapped.obs_layout


# --- replay: the ground truth tracks perfectly -----------------------------------------------


@pytest.mark.parametrize("body", ["test", "rodent"])
def test_open_loop_replay_matches_qpos(body, test_clips, rodent_clips):
    clip_dir = test_clips if body == "test" else rodent_clips
    replayed, stored = _replay_qpos(body, clip_dir, 1)
    np.testing.assert_allclose(replayed, stored, atol=1e-6, rtol=0)


@pytest.mark.parametrize("body", ["test", "rodent"])
def test_replaying_ctrl_through_the_env_scores_perfectly(body, test_clips, rodent_clips):
    clip_dir = test_clips if body == "test" else rodent_clips
    env = make(clip_dir, body=body, task={"reset_noise": 0.0})
    with ClipStore(clip_dir) as store:
        c = store.read_clip(0)
    start = 3
    obs, info = env.reset(seed=0, options={"clip": 0, "start": start})
    assert info == {"clip": 0, "t": start,  # reset's metrics: zeros, so step's keys
                    "metrics": dict.fromkeys(ncssm_env.task.METRICS, 0.0)}
    np.testing.assert_array_equal(obs, c["obs"][start])
    T = len(c["ctrl"])
    for t in range(start + 1, T):
        obs, reward, terminated, truncated, info = env.step(c["ctrl"][t])
        assert not terminated
        assert truncated == (t == T - 1)
        assert info["t"] == t
        np.testing.assert_allclose(obs, c["obs"][t], atol=1e-5)
        for name in ncssm_env.task.REWARD_TERMS:
            assert info["metrics"][f"rew_{name}"] == pytest.approx(1.0, abs=1e-9)
    assert tuple(info["metrics"]) == ncssm_env.task.METRICS  # the schema every env shares


def test_reset_is_seeded_and_noisy(test_clips):
    env = make(test_clips)
    a, ia = env.reset(seed=5)
    b, ib = env.reset(seed=5)
    np.testing.assert_array_equal(a, b)
    assert ia == ib
    starts = {env.reset(seed=s)[1]["t"] for s in range(20)}
    assert len(starts) > 5
    with ClipStore(test_clips) as store:
        stored = store.read(0, "obs", 4, 5)[0]
    obs, _ = env.reset(seed=0, options={"clip": 0, "start": 4})
    assert 0 < np.abs(obs - stored).max()  # reset noise moved the joints


def test_clip_selection(test_clips):
    env = make(test_clips, clips=[2])
    assert {env.reset(seed=s)[1]["clip"] for s in range(10)} == {2}
    with pytest.raises(ValueError, match=r"clips must be a non-empty list of indices in \[0, 3\)"):
        make(test_clips, clips=[3])


def test_render_returns_rgb_frame(test_clips):
    """Frame 0, rendered right after reset, is already right: the tracking camera is on the
    body (reset computes what a render needs), so it is close to frame 1 after one step.
    Before, the camera sat at the origin and frame 0 was nearly black (mean 4.5 against 117)."""
    env = make(test_clips, render_mode="rgb_array", width=96, height=64)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
    assert frame.std() > 0  # something was drawn
    env.step(np.zeros(4))
    f0, f1 = frame.astype(float), env.render().astype(float)
    assert f1.mean() > 50 and abs(f0.mean() - f1.mean()) < 0.05 * f1.mean()
    assert np.corrcoef(f0.ravel(), f1.ravel())[0, 1] > 0.9
    env.close()


def test_record_video(test_clips, tmp_path):
    """Gymnasium's RecordVideo around the env: an episode of 4 steps is an mp4 of 5 frames,
    the first (rendered right after reset) not black."""
    pytest.importorskip("moviepy")  # RecordVideo writes through it
    import imageio
    from gymnasium.wrappers import RecordVideo

    env = make(test_clips, render_mode="rgb_array", width=64, height=48, max_episode_steps=4)
    env = RecordVideo(env, str(tmp_path / "videos"), disable_logger=True)
    env.reset(seed=0)
    for _ in range(4):
        *_, truncated, _ = env.step(np.zeros(4))
    assert truncated
    env.close()
    (video,) = (tmp_path / "videos").glob("*.mp4")
    with imageio.get_reader(video, format="FFMPEG") as reader:
        frames = [f for f in reader]
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)
    assert frames[0].mean() > 0.5 * frames[1].mean() > 25


def test_rodent_renders(rodent_clips):
    env = gym.make(ncssm_env.ENV_ID, render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0)
    assert env.render().shape == (48, 64, 3)
    env.close()


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_copy_continues_the_episode(test_clips, how):
    """A copy made mid-episode (its model, MjData and clip files rebuilt, not pickled) steps on
    exactly as the original; each has its own clip files: closing the copy leaves the
    original reading clips it had not read yet."""
    env = make(test_clips, clips=[0, 1], task={"reset_noise": 0.05})
    env.reset(seed=3, options={"clip": 0})
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (8, 4)).astype(np.float32)
    for a in actions[:3]:
        env.step(a)
    twin = pickle.loads(pickle.dumps(env)) if how == "pickle" else copy.deepcopy(env)
    assert twin.unwrapped.data is not env.unwrapped.data
    assert twin.unwrapped.spec.to_json() == env.unwrapped.spec.to_json()
    assert twin.unwrapped.np_random.random() == env.unwrapped.np_random.random()
    for a in actions[3:]:
        got, want = twin.step(a), env.step(a)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1:] == want[1:]
    twin.close()
    assert 1 not in env.unwrapped._clips
    env.reset(options={"clip": 1})  # read from the original's own file handle
    env.close()


# --- bad input -------------------------------------------------------------------------------


def test_action_of_wrong_shape(test_clips):
    env = make(test_clips)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"Action has shape \(3,\); body 'test' expects \(4,\)"):
        env.step(np.zeros(3))


def test_nan_action_terminates_cleanly(test_clips):
    env = make(test_clips)
    env.reset(seed=0)
    qpos = env.unwrapped.data.qpos.copy()
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, np.nan, 0.0, 0.0]))
    assert terminated and reward == 0.0 and info["metrics"]["term_nan"] == 1.0
    assert np.isfinite(obs).all()
    np.testing.assert_array_equal(env.unwrapped.data.qpos, qpos)  # physics never saw the NaN
    env.reset(seed=1)
    _, _, terminated, _, _ = env.step(np.zeros(4))
    assert not terminated


def test_unknown_body():
    with pytest.raises(ValueError, match=r"Unknown body 'rat'; expected one of \['rodent', 'test'\]"):
        gym.make(ncssm_env.ENV_ID, body="rat")


def test_clip_too_short_for_K(tmp_path, test_clips):
    with ClipStore(test_clips) as store:
        c = store.read_clip(0)
    short = {k: v[:4] for k, v in c.items()}
    write_clip(tmp_path / "clip_0.h5", short, obs_layout=store.obs_layout, body="test",
               control_dt=0.02, generator="test")
    with pytest.raises(ClipError, match=r"clip_0\.h5.*4 frames.*6"):
        make(tmp_path, K=5)


def test_clips_without_qpos(tmp_path):
    write_clip(tmp_path / "clip_0.h5", {"obs": np.zeros((20, 3)), "ctrl": np.zeros((20, 4))},
               obs_layout={"x": (0, 3)}, body="test", control_dt=0.02, generator="test")
    with pytest.raises(ClipError, match="lack the dataset /qpos"):
        make(tmp_path)


def test_clips_of_another_body(test_clips):
    with pytest.raises(ClipError, match="/qpos of width"):
        make(test_clips, body="rodent")


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_clip_folder(tmp_path, kind):
    folder = tmp_path / "clips"
    if kind == "empty":
        folder.mkdir()
    with pytest.raises(ClipError, match=str(folder)):
        make(folder)


def test_corrupt_clip_file(tmp_path, test_clips):
    data = (test_clips / "clip_0.h5").read_bytes()
    (tmp_path / "clip_0.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ClipError, match=r"clip_0\.h5.*not a readable HDF5 file"):
        make(tmp_path)


def test_nan_in_clip_qpos(tmp_path, test_clips):
    import shutil

    path = tmp_path / "clip_0.h5"
    shutil.copy(test_clips / "clip_0.h5", path)
    with h5py.File(path, "r+") as f:
        f["qpos"][7, 3] = np.nan
    env = make(tmp_path)
    with pytest.raises(ClipError, match=r"clip_0\.h5.*qpos.*frame 7"):
        env.reset(seed=0)


def test_bad_reset_options(test_clips):
    env = make(test_clips)
    with pytest.raises(ValueError, match="start=79 must be in"):
        env.reset(options={"clip": 0, "start": 79})
    with pytest.warns(UserWarning, match="ignores the unknown reset option 'frame'"):
        env.reset(options={"frame": 0})  # ignored (wrappers pass their own), warned once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.reset(options={"frame": 0})


def test_builtin_clips_follow_the_physics_settings():
    env = gym.make(ncssm_env.ENV_ID, body="test", n_substeps=5)
    assert env.unwrapped.store.control_dt == pytest.approx(0.01)
    env.reset(seed=0)
    env.step(np.zeros(4))
