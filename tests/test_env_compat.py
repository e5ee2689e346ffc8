"""The env with other libraries: Stable-Baselines3 through ``ncssm_env.sb3``.

stable-baselines3 (and torch, about 6 GB with CUDA) is not in the test extra: the SB3 tests run
only where it is installed; the import and bad-input tests run everywhere.
"""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import ncssm_env  # noqa: F401  (registers NCSSM-Track-v0)
from ncssm_data import ClipStore
from ncssm_env.sb3 import as_sb3_vec_env

QUIET = {"reset_noise": 0.0}


def test_import_leaves_torch_and_sb3_out():
    code = ("import sys, ncssm_env.sb3; "
            "print([m for m in ('torch', 'stable_baselines3') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_same_step_env_is_refused(test_clips):
    env = gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips,
                       vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    with pytest.raises(ValueError, match="needs a vector env with NEXT_STEP autoreset .* "
                                         "SyncVectorEnv has AutoresetMode.SAME_STEP"):
        as_sb3_vec_env(env)


def test_without_sb3(monkeypatch, test_clips):
    from ncssm_env import sb3

    sb3._adapter_class.cache_clear()
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # import fails
    env = gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips)
    with pytest.raises(ImportError, match="needs stable-baselines3: pip install"):
        as_sb3_vec_env(env)
    sb3._adapter_class.cache_clear()


@pytest.mark.parametrize("mode", [None, "sync"])
def test_sb3_vec_env(test_clips, mode):
    """Same-step autoreset over the NEXT_STEP env: the step that ends an episode (truncated
    after 3 steps) returns the next episode's first observation, the last one in
    ``terminal_observation``, and the step after it steps the new episode."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import VecEnv

    kw = {} if mode is None else {"vectorization_mode": mode}
    vec = gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips, task=QUIET,
                       max_episode_steps=3, **kw)
    venv = as_sb3_vec_env(vec)
    assert isinstance(venv, VecEnv) and venv.num_envs == 2
    assert venv.observation_space == vec.single_observation_space
    assert venv.get_attr("render_mode") == [None, None] and venv.env_is_wrapped(Monitor) == [False] * 2
    with ClipStore(test_clips) as store:
        ctrl = store.read(1, "ctrl")
        stored = store.read(1, "obs")
    venv.seed(0)
    venv.set_options({"clip": 1, "start": 0})
    obs = venv.reset()
    np.testing.assert_array_equal(obs, np.stack([stored[0]] * 2))
    assert venv.reset_infos[0]["t"] == 0 and set(venv.reset_infos[0]) == {"clip", "t", "metrics"}
    for t in (1, 2, 3):
        obs, rew, dones, infos = venv.step(np.stack([ctrl[t]] * 2))
        assert rew.shape == (2,) and dones.tolist() == [t == 3] * 2
    assert all(i["TimeLimit.truncated"] and i["t"] == 3 for i in infos)
    for i in range(2):
        np.testing.assert_allclose(infos[i]["terminal_observation"], stored[3], atol=1e-5)
    starts = [r["t"] for r in venv.reset_infos]
    assert not np.array_equal(obs[0], stored[3])  # a new episode's first observation
    _, _, dones, infos = venv.step(np.zeros((2, 4), np.float32))
    assert not dones.any() and [i["t"] for i in infos] == [s + 1 for s in starts]
    venv.close()


def test_sb3_ppo_runs(test_clips):
    """A few PPO updates on the adapter, under SB3's VecMonitor."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    vec = gym.make_vec("NCSSM-Track-v0", num_envs=4, body="test", clip_dir=test_clips,
                       max_episode_steps=20)
    venv = VecMonitor(as_sb3_vec_env(vec))
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256 and len(model.ep_info_buffer) > 0
    venv.close()
