"""The MJX env: parity with the CPU env (test body under MJX's JAX path, the rodent under
MJX-Warp on Warp's CPU device), fresh restarts, impl routing, buffer overflows, and brax's
PPO training on it."""

import sys

import numpy as np
import pytest

QUIET = {"reset_noise": 0.0}


@pytest.fixture(scope="module")
def mjx_env(test_clips, jax_cache):
    from ncssm_env.mjx_env import MJXTrackEnv

    env = MJXTrackEnv(body="test", clip_dir=test_clips, task=QUIET)
    assert env.impl == "jax"  # "auto" keeps the test body on MJX's JAX path on a CPU
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
    # One evaluation, after training: brax's evaluation before training (num_evals 2) runs the
    # same env code, yet traces and compiles it all again (its initial normalizer params are
    # weakly typed, the trained ones are not).
    _, params, _ = ppo.train(
        environment=env, num_timesteps=400, num_envs=4, episode_length=20,
        wrap_env_fn=wrap_for_training, num_evals=1, num_eval_envs=4, unroll_length=5,
        batch_size=4, num_minibatches=2, num_updates_per_batch=1, seed=0,
        progress_fn=lambda step, metrics: progress.append(
            (step, float(metrics["eval/episode_reward"]))))
    assert len(progress) == 1 and progress[0][0] >= 400 and np.isfinite(progress[0][1])
    with pytest.raises(ValueError, match="episode_length 30 must equal the env's max_episode_steps 20"):
        wrap_for_training(env, episode_length=30)


def test_impl_routing_and_errors(test_clips, monkeypatch):
    import jax

    from ncssm_env.mjx_env import MJXTrackEnv, resolve_impl

    on_cpu = jax.default_backend() == "cpu"
    assert resolve_impl("auto", "rodent") == "warp"
    assert resolve_impl("auto", "test") == ("jax" if on_cpu else "warp")
    assert resolve_impl("jax", "rodent") == "jax"
    with pytest.raises(ValueError, match=r"Unknown impl 'cuda'; expected one of \['jax', 'warp', 'auto'\]"):
        MJXTrackEnv(body="test", clip_dir=test_clips, impl="cuda")
    with pytest.raises(ValueError, match="num_envs must be an int >= 1, got 0"):
        MJXTrackEnv(body="test", clip_dir=test_clips, impl="warp", num_envs=0)
    monkeypatch.setitem(sys.modules, "warp", None)  # as if warp-lang were not installed
    with pytest.raises(ValueError, match=r"needs warp-lang, which is not installed: pip install "
                                         r"'ncssm\[gpu\]' on an NVIDIA machine, or pip install "
                                         r"warp-lang==1.18.0"):
        MJXTrackEnv(body="test", clip_dir=test_clips, impl="warp")
    assert resolve_impl("jax", "rodent") == "jax"  # jax never needs it


def test_a_warp_step_that_overflows_its_contact_buffer_says_so(test_clips, jax_cache):
    import gymnasium as gym

    from ncssm_env.mjx_env import BufferOverflowError

    env = gym.make_vec("NCSSM-Track-v0", num_envs=2, body="test", clip_dir=test_clips,
                       backend="mjx", impl="warp", nconmax=1, task=QUIET)
    assert env.env.impl == "warp" and env.env.nconmax == 1 and env.env.num_envs == 2
    env.reset(seed=0)
    with pytest.raises(BufferOverflowError, match=r"MJX-Warp ran out of room for contacts "
                                                  r"\(nconmax 1 per env x num_envs 2 shared\) in "
                                                  r"env\(s\) \[0, 1\]"):
        for _ in range(3):  # the feet touch the floor within a step or two
            env.step(np.zeros((2, env.env.action_size), np.float32))


@pytest.fixture(scope="module")
def rodent_warp(rodent_clips, jax_cache):
    """The rodent under MJX-Warp (Warp's CPU device), 4 envs, with one jitted vmapped reset_to
    and step shared by the tests, and a CPU vector env of the same clips."""
    import jax

    from ncssm_env.mjx_env import MJXTrackEnv
    from ncssm_env.vector import TrackVectorEnv

    clips = [0, 1, 2, 3]
    env = MJXTrackEnv(body="rodent", clip_dir=rodent_clips, clips=clips, task=QUIET, num_envs=4)
    cpu = TrackVectorEnv(4, body="rodent", clip_dir=rodent_clips, clips=clips, task=QUIET)
    assert env.impl == "warp" and (env.nconmax, env.njmax) == (156, 691)
    yield env, jax.jit(jax.vmap(env.reset_to)), jax.jit(jax.vmap(env.step)), cpu
    cpu.close()


def _replay_actions(env, state, k):
    """The clips' recorded next controls plus Gaussian noise (sigma 0.05), clipped: (N, nu)."""
    ctrl = np.asarray(env.ctrl)
    slot, t = np.asarray(state.info["slot"]), np.asarray(state.info["t"])
    a = ctrl[slot, np.minimum(t + 1, ctrl.shape[1] - 1)]
    a = a + 0.05 * np.random.default_rng(k).standard_normal(a.shape)
    return np.clip(a, -1.0, 1.0).astype(np.float32)


def _rodent_start(env, reset_to, starts):
    import jax
    import jax.numpy as jnp

    return reset_to(jax.random.split(jax.random.PRNGKey(0), 4), jnp.arange(4), jnp.asarray(starts))


def test_rodent_warp_matches_the_cpu_env_for_20_steps(rodent_warp):
    """Stated tolerance, float32 Warp against float64 MuJoCo C: for the first 5 steps 1e-4 on
    observations and rewards (measured: 5e-7); over all 20 steps 0.02 on every observation
    part but the joint velocities, 2 rad/s on those (of up to about 20), 0.02 on rewards, and
    equal terminations. The looser bound is MuJoCo C's own: a contact that breaks a substep
    earlier or later turns tiny differences into millimetres, and C started 1e-4 rad away
    from itself moves up to 0.01 rad and 4 rad/s within 20 steps on these clips."""
    import jax.numpy as jnp

    env, reset_to, step, cpu = rodent_warp
    starts = [10, 60, 200, 400]
    state = _rodent_start(env, reset_to, starts)
    obs, _ = cpu.reset(seed=0, options={"clip": env.clip_ids, "start": starts})
    np.testing.assert_allclose(state.obs, obs, atol=1e-5)
    a, b = env.obs_layout["qvel_local"]
    for k in range(20):
        actions = _replay_actions(env, state, k)
        state = step(state, jnp.asarray(actions))
        obs, rew, term, trunc, _ = cpu.step(actions)
        got = np.asarray(state.obs)
        tight = 1e-4 if k < 5 else None
        np.testing.assert_allclose(np.delete(got, np.s_[a:b], 1), np.delete(obs, np.s_[a:b], 1),
                                   atol=tight or 0.02)
        np.testing.assert_allclose(got[:, a:b], obs[:, a:b], atol=tight or 2.0)
        np.testing.assert_allclose(state.reward, rew, atol=tight or 0.02)
        np.testing.assert_array_equal(np.asarray(state.done) > 0, term | trunc)
        assert not (term | trunc).any() and not np.asarray(state.info["overflow"]).any()


def test_rodent_warp_restarts_a_finished_episode_inside_step(rodent_warp, rodent_clips):
    """Env 3 starts 3 frames before its clip's end: the third step ends it, and the same
    batched step hands back the first observation of a new episode, which matches a CPU env
    reset at that clip and frame; the other envs go on."""
    import jax.numpy as jnp

    from ncssm_env.gym_env import TrackEnv

    env, reset_to, step, _ = rodent_warp
    T3 = int(env.lengths[3])
    state = _rodent_start(env, reset_to, [10, 60, 200, T3 - 4])
    for k in range(3):
        state = step(state, jnp.asarray(_replay_actions(env, state, k)))
    done = np.asarray(state.done)
    np.testing.assert_array_equal(done, [0, 0, 0, 1])
    assert float(state.info["truncation"][3]) == 1.0 and np.isfinite(state.obs).all()
    slot, t = int(state.info["slot"][3]), int(state.info["t"][3])
    assert int(state.info["episode_steps"][3]) == 0 and (slot, t) != (3, T3 - 1)
    single = TrackEnv(body="rodent", clip_dir=rodent_clips, task=QUIET)
    obs, _ = single.reset(options={"clip": int(env.clip_ids[slot]), "start": t})
    np.testing.assert_allclose(state.obs[3], obs, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(state.info["t"][:3]), [13, 63, 203])
    state = step(state, jnp.asarray(_replay_actions(env, state, 3)))  # and it steps on
    assert not np.asarray(state.done).any() and int(state.info["episode_steps"][3]) == 1


def test_the_compilation_cache_is_on_in_the_users_cache_folder(mjx_env, monkeypatch, tmp_path):
    import os

    import jax

    from ncssm_env.jax_cache import CACHE_ENV, cache_path

    # Making the MJX env turned it on, in $NCSSM_JAX_CACHE (the tests' shared folder).
    assert jax.config.jax_compilation_cache_dir == os.environ[CACHE_ENV]
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("NCSSM_CACHE", str(tmp_path))
    assert cache_path() == tmp_path / "jax"  # the default: beside the built-in clips
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_path() is None
