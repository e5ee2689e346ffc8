"""The MJX env: parity with the CPU env, fresh restarts, and brax's PPO training on it."""

import numpy as np
import pytest

QUIET = {"reset_noise": 0.0}


@pytest.fixture(scope="module")
def mjx_env(test_clips, jax_cache):
    from ncssm_env.mjx_env import MJXTrackEnv

    env = MJXTrackEnv(body="test", clip_dir=test_clips, task=QUIET)
    return env, jax_cache.jit(env.reset_to), jax_cache.jit(env.step)


def test_matches_the_cpu_env_for_50_steps(mjx_env, test_clips):
    import jax
    import jax.numpy as jnp

    from ncssm_env.gym_env import TrackEnv

    env, reset_to, step = mjx_env
    cpu = TrackEnv(body="test", clip_dir=test_clips, task=QUIET)
    state = reset_to(jax.random.PRNGKey(0), 1, 3)
    obs, _ = cpu.reset(options={"clip": int(env.clip_ids[1]), "start": 3})
    np.testing.assert_allclose(state.obs, obs, atol=1e-5)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.uniform(-0.3, 0.3, cpu.model.nu).astype(np.float32)
        state = step(state, jnp.asarray(a))
        obs, rew, term, trunc, _ = cpu.step(a)
        # Stated tolerance: 1e-4 on observations and rewards (float32 MJX against float64 C).
        np.testing.assert_allclose(state.obs, obs, atol=1e-4)
        assert float(state.reward) == pytest.approx(rew, abs=1e-4)
        assert bool(state.done) == (term or trunc)
        if term or trunc:
            break


def test_a_finished_episode_restarts_on_a_fresh_clip_and_frame(mjx_env):
    import jax
    import jax.numpy as jnp

    env, reset_to, step = mjx_env
    state = reset_to(jax.random.PRNGKey(1), 0, 0)
    state = step(state, jnp.full(env.action_size, jnp.nan))  # a NaN action ends the episode
    assert float(state.done) == 1.0 and float(state.reward) == 0.0
    assert int(state.info["episode_steps"]) == 0 and np.isfinite(state.obs).all()
    starts = set()
    for k in range(8):
        s = step(reset_to(jax.random.PRNGKey(k), 0, 0), jnp.full(env.action_size, jnp.nan))
        starts.add((int(s.info["slot"]), int(s.info["t"])))
    assert len(starts) > 1  # drawn afresh, not a cached first state


def test_brax_ppo_trains_on_it(test_clips, jax_cache):
    from brax.training.agents.ppo import train as ppo

    from ncssm_env.mjx_env import MJXTrackEnv, wrap_for_training

    env = MJXTrackEnv(body="test", clip_dir=test_clips, max_episode_steps=20)
    progress = []
    _, params, _ = ppo.train(
        environment=env, num_timesteps=400, num_envs=4, episode_length=20,
        wrap_env_fn=wrap_for_training, num_evals=2, num_eval_envs=4, unroll_length=5,
        batch_size=4, num_minibatches=2, num_updates_per_batch=1, seed=0,
        progress_fn=lambda step, metrics: progress.append(float(metrics["eval/episode_reward"])))
    assert len(progress) == 2 and np.isfinite(progress).all()
    with pytest.raises(ValueError, match="episode_length 30 must equal the env's max_episode_steps 20"):
        wrap_for_training(env, episode_length=30)
