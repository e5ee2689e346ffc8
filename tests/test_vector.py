"""The CPU vector env: make_vec, parity with the single env, NEXT_STEP autoreset, replay, bad input."""

import warnings

import gymnasium as gym
import numpy as np
import pytest

import ncssm_env  # noqa: F401  (registers NCSSM-Track-v0)
from ncssm_data import ClipStore
from ncssm_env.gym_env import TrackEnv
from ncssm_env.task import METRICS, REWARD_TERMS
from ncssm_env.vector import TrackVectorEnv

QUIET = {"reset_noise": 0.0}


def test_make_vec_gives_the_cpu_vector_env(test_clips):
    env = gym.make_vec("NCSSM-Track-v0", num_envs=3, body="test", clip_dir=test_clips,
                       backend="cpu")
    assert isinstance(env, TrackVectorEnv) and env.num_envs == 3
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, info = env.reset(seed=0)
    assert obs.shape == (3,) + env.single_observation_space.shape and obs.dtype == np.float32
    assert tuple(info["metrics"]) == METRICS  # step's keys, zeros (as the single env's reset)
    assert all(v.tolist() == [0.0] * 3 for v in info["metrics"].values())
    assert env.observation_space.contains(obs)
    obs, rew, term, trunc, info = env.step(env.action_space.sample())
    assert obs.shape[0] == rew.shape[0] == term.shape[0] == trunc.shape[0] == 3
    assert tuple(info["metrics"]) == METRICS and info["t"].shape == (3,)
    assert all(v.shape == (3,) for v in info["metrics"].values())
    env.close()


@pytest.mark.parametrize("mode", [None, "sync", "async"])
def test_make_vec_modes(test_clips, mode):
    """make_vec's three modes: the default (the vector_entry_point, this project's env) and
    Gymnasium's sync and async envs of single envs, which get make_vec's kwargs, ``backend``
    among them (dropped). All three replay a clip's controls to its stored observations.
    The async env's workers are spawned (macOS's default), not forked from this process,
    whose JAX threads (other tests) make fork unsafe; spawn costs about 1 s."""
    kw = {} if mode is None else {"vectorization_mode": mode}
    if mode == "async":
        kw["vector_kwargs"] = {"context": "spawn"}
    env = gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips,
                       backend="cpu", task=QUIET, **kw)
    want = {None: TrackVectorEnv, "sync": gym.vector.SyncVectorEnv,
            "async": gym.vector.AsyncVectorEnv}[mode]
    assert type(env) is want and env.num_envs == 2
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    with ClipStore(test_clips) as store:
        c = store.read_clip(1, ["obs", "ctrl"])
    obs, info = env.reset(seed=0, options={"clip": 1, "start": 4})
    assert info["clip"].tolist() == [1, 1] and info["t"].tolist() == [4, 4]
    np.testing.assert_array_equal(obs, np.stack([c["obs"][4]] * 2))
    for t in range(5, 8):
        obs, rew, term, trunc, info = env.step(np.stack([c["ctrl"][t]] * 2))
        np.testing.assert_allclose(obs, np.stack([c["obs"][t]] * 2), atol=1e-5, rtol=0)
        assert not (term.any() or trunc.any()) and info["t"].tolist() == [t, t]
    env.close()


def test_record_video(test_clips, tmp_path):
    """The vector env under Gymnasium's vector RecordVideo: one frame per env, tiled; episode
    0 of env 0 (reset + 5 steps) is written as an mp4 when the next episode starts."""
    pytest.importorskip("moviepy")  # RecordVideo writes through it
    import imageio
    from gymnasium.wrappers.vector import RecordVideo

    env = gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips,
                       render_mode="rgb_array", width=64, height=48, max_episode_steps=5)
    frames = env.render()
    assert len(frames) == 2 and all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    env = RecordVideo(env, str(tmp_path / "videos"), episode_trigger=lambda e: e == 0,
                      disable_logger=True)
    env.reset(seed=0)
    for _ in range(6):
        env.step(np.zeros((2, 4), np.float32))
    env.close()
    (video,) = (tmp_path / "videos").glob("*.mp4")
    assert video.stat().st_size > 0
    with imageio.get_reader(video, format="FFMPEG") as reader:
        got = [f for f in reader]
    assert len(got) == 6 and got[0].shape == (48, 128, 3)  # reset + 5 steps, 2 envs side by side
    assert got[0].mean() > 50  # frame 0 is not black


def test_make_vec_on_the_rodent(rodent_clips):
    env = gym.make_vec("NCSSM-Track-v0", num_envs=2, backend="cpu")
    obs, _ = env.reset(seed=1)
    assert obs.shape == (2, env.single_observation_space.shape[0])
    for _ in range(3):
        obs, rew, term, trunc, _ = env.step(np.zeros((2, 38), np.float32))
    assert np.isfinite(obs).all() and np.isfinite(rew).all()
    env.close()


def test_matches_single_envs_step_for_step(test_clips):
    clips, starts = [0, 1, 2], [0, 5, 10]
    vec = TrackVectorEnv(3, body="test", clip_dir=test_clips, task=QUIET)
    singles = [TrackEnv(body="test", clip_dir=test_clips, task=QUIET) for _ in clips]
    obs, _ = vec.reset(seed=0, options={"clip": clips, "start": starts})
    ref = np.stack([e.reset(options={"clip": c, "start": s})[0]
                    for e, c, s in zip(singles, clips, starts)])
    np.testing.assert_array_equal(obs, ref)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.uniform(-0.3, 0.3, (3, vec.model.nu)).astype(np.float32)
        obs, rew, term, trunc, info = vec.step(a)
        outs = [e.step(a[i]) for i, e in enumerate(singles)]
        np.testing.assert_allclose(obs, np.stack([o[0] for o in outs]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(rew, [o[1] for o in outs], rtol=1e-9, atol=1e-12)
        assert list(term) == [o[2] for o in outs] and list(trunc) == [o[3] for o in outs]
        if term.any() or trunc.any():
            break


def test_replaying_true_controls_tracks_to_the_end(test_clips):
    """The ground truth scores perfectly: no episode terminates before its clip ends."""
    store = ClipStore(test_clips)
    n = len(store)
    vec = TrackVectorEnv(n, body="test", clip_dir=test_clips, task=QUIET)
    vec.reset(seed=0, options={"clip": list(range(n)), "start": 0})
    ctrl = [store.read(i, "ctrl") for i in range(n)]
    T = min(len(c) for c in ctrl)
    for t in range(1, T):
        _, rew, term, trunc, info = vec.step(np.stack([c[t] for c in ctrl]))
        assert not term.any(), {k: v for k, v in info["metrics"].items() if k.startswith("term_")}
        for name in REWARD_TERMS:  # every tracking term is perfect
            np.testing.assert_allclose(info["metrics"][f"rew_{name}"], 1.0, atol=1e-6)
    assert trunc.all()


def test_next_step_autoreset(test_clips):
    vec = TrackVectorEnv(2, body="test", clip_dir=test_clips, task=QUIET)
    vec.reset(seed=0, options={"clip": [0, 1], "start": [0, 0]})
    a = np.zeros((2, vec.model.nu), np.float32)
    a[0] = np.nan  # env 0 terminates (cause nan) without stepping its physics
    _, rew, term, trunc, info = vec.step(a)
    assert term.tolist() == [True, False] and info["metrics"]["term_nan"].tolist() == [1.0, 0.0]
    assert rew[0] == 0.0
    obs, rew, term, trunc, info = vec.step(np.zeros((2, vec.model.nu), np.float32))
    # The step after: env 0 starts a new episode (reward 0, not done), env 1 goes on.
    assert rew[0] == 0.0 and not term[0] and not trunc[0] and np.isfinite(obs[0]).all()
    assert info["t"][1] == 2


def test_max_episode_steps_truncates(test_clips):
    vec = TrackVectorEnv(2, body="test", clip_dir=test_clips, task=QUIET, max_episode_steps=3)
    vec.reset(seed=0, options={"clip": [0, 1], "start": 0})
    store = ClipStore(test_clips)
    for t in range(1, 4):
        _, _, term, trunc, _ = vec.step(np.stack([store.read(i, "ctrl")[t] for i in (0, 1)]))
    assert trunc.all() and not term.any()


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_num_envs_must_be_positive(test_clips, n):
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        gym.make_vec("NCSSM-Track-v0", num_envs=n, body="test", clip_dir=test_clips)


def test_unknown_backend(test_clips):
    with pytest.raises(ValueError, match="Unknown backend 'gpu'; expected one of"):
        gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips, backend="gpu")
    with pytest.raises(ValueError, match="Unknown backend 'gpu'; expected one of"):
        gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips, backend="gpu",
                     vectorization_mode="sync")


def test_clips_of_another_body(test_clips):
    with pytest.raises(Exception, match="another body|for body 'test'"):
        gym.make_vec("NCSSM-Track-v0", num_envs=2, body="rodent", clip_dir=test_clips)


def test_wrong_action_shape(test_clips):
    vec = TrackVectorEnv(2, body="test", clip_dir=test_clips)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"Actions have shape \(4,\); expected \(2, 4\)"):
        vec.step(np.zeros(4))


def test_make_vec_mjx_backend_on_the_test_body(test_clips, jax_cache):
    from ncssm_env.mjx_env import MJXVectorEnv

    env = gym.make_vec("NCSSM-Track-v0", num_envs=3, body="test", clip_dir=test_clips,
                       backend="mjx", task=QUIET)
    assert isinstance(env, MJXVectorEnv)
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, info = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.shape == (3,) + env.single_observation_space.shape
    store = ClipStore(test_clips)
    actions = np.stack([store.read(int(c), "ctrl")[t + 1] for c, t in zip(info["clip"], info["t"])])
    obs, rew, term, trunc, info = env.step(actions)
    assert obs.shape[0] == rew.shape[0] == 3 and not term.any()
    assert isinstance(rew, np.ndarray) and np.isfinite(obs).all()
    np.testing.assert_allclose(info["metrics"]["rew_joints"], 1.0, atol=1e-4)  # true controls
    assert set(METRICS) <= set(info["metrics"])  # the schema the CPU envs give


def test_auto_backend_is_the_cpu_env_without_an_accelerator(test_clips):
    import jax

    env = gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips,
                       backend="auto")
    want = TrackVectorEnv if jax.default_backend() == "cpu" else object
    assert isinstance(env, want)


def test_mjx_settings_on_the_cpu_backend(test_clips):
    with pytest.raises(ValueError, match=r"\['impl'\] are settings of backend 'mjx', not 'cpu'"):
        gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips, impl="warp")
    import jax

    if jax.default_backend() == "cpu":  # 'auto' picked the CPU env and dropped them
        env = gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips,
                           backend="auto", impl="warp")
        assert isinstance(env, TrackVectorEnv)


def test_reset_noise_option(test_clips):
    """``options={"noise": ...}`` sets the start states' joint offsets (one row per env, or
    one for all); a wrong shape is one sentence. The single env takes the same option."""
    from ncssm_env.gym_env import TrackEnv

    env = TrackVectorEnv(2, body="test", clip_dir=test_clips)
    nj = env.model.nq - 7
    noise = np.array([np.full(nj, 0.05), np.full(nj, -0.05)])
    env.reset(seed=0, options={"clip": 0, "start": 3, "noise": noise})
    ref = env.clips.qpos[env.slot, 3]
    np.testing.assert_allclose(np.stack([d.qpos for d in env.datas])[:, 7:] - ref[:, 7:], noise,
                               atol=1e-12)
    with pytest.raises(ValueError, match=r"Reset option noise has shape \(3,\); expected"):
        env.reset(options={"noise": np.zeros(3)})
    # An option it does not know (a wrapper's own): one warning per key, then silence
    with pytest.warns(UserWarning, match="ignores the unknown reset option 'minari_autoseed'"):
        env.reset(options={"minari_autoseed": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env.reset(options={"minari_autoseed": False})
    env.close()
    single = TrackEnv(body="test", clip_dir=test_clips)
    single.reset(seed=0, options={"clip": 0, "start": 3, "noise": np.full(nj, 0.05)})
    np.testing.assert_allclose(single.data.qpos[7:] - single.clip(0).qpos[3, 7:], 0.05, atol=1e-12)
    with pytest.raises(ValueError, match="Reset option noise has shape"):
        single.reset(options={"noise": np.zeros(nj + 1)})
