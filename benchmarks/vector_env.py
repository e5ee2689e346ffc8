"""Env steps per second: the CPU vector env, the MJX env, and MJX with a policy in the loop.

**CPU** (the default): ``TrackVectorEnv`` against a gymnasium ``SyncVectorEnv`` of ``TrackEnv``.
Both sides: the same body, clips, N, seed and action sequence (uniform in +-``--amp``, drawn
once), in this one process; each side is reset, warmed up for 10 steps, then timed over
``--steps`` vector steps, ``--repeats`` times. Prints the median env steps/s of each side and
their ratio.

**MJX** (``--mjx N[,N...]``): ``MJXTrackEnv`` (``--mjx-body``, ``--impl``) as one jitted
``lax.scan`` of ``--steps`` vmapped steps over N envs on JAX's default device, with no host
round-trip inside: its compile time (trace, lower and compile; JAX's persistent cache is on,
so running the script again with the same shapes times a warm compile) and its control
steps/s (median of ``--repeats``). On a CPU device it also times MuJoCo C (``TrackVectorEnv``
threads, same body and physics, ``min(N, 64)`` envs) and prints the ratio, so that nobody
takes MJX-Warp's CPU rate for a CPU path.

- ``--policy``: also the quickstart S5 (its config, fresh weights: the speed does not depend
  on them) and the env in one scan, exactly as ``evaluate(..., backend="mjx")`` runs them.
- ``--ppo``: also brax's PPO on N envs (episodes of 100 steps, unroll 10, 4 minibatches):
  env steps/s of its second training epoch (the first one compiles).
- ``--solver``, ``--iterations``, ``--ls-iterations``: the constraint solver, for every side;
  each result line names the settings it ran with.

    python benchmarks/vector_env.py --body rodent --num-envs 16
    python benchmarks/vector_env.py --no-cpu --mjx-body rodent --mjx 64 --steps 20   # Warp on the CPU
    python benchmarks/vector_env.py --no-cpu --mjx-body rodent --mjx 1024,4096 --policy --ppo \\
        --iterations 5 --ls-iterations 5                                        # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import gymnasium as gym
import numpy as np

import ncssm_env  # noqa: F401


def rate(env, actions: np.ndarray, repeats: int) -> float:
    n, steps = actions.shape[1], actions.shape[0]
    env.reset(seed=0)
    for a in actions[:10]:
        env.step(a)
    runs = []
    for _ in range(repeats):
        env.reset(seed=0)
        t = time.perf_counter()
        for a in actions:
            env.step(a)
        runs.append(n * steps / (time.perf_counter() - t))
    return float(np.median(runs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body", default="rodent")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--amp", type=float, default=0.2)
    p.add_argument("--mjx", default="", metavar="N[,N...]", help="MJX env counts (none: skip)")
    p.add_argument("--mjx-body", default="test")
    p.add_argument("--impl", default="auto", choices=("jax", "warp", "auto"))
    p.add_argument("--policy", action="store_true", help="also time policy + env in one scan")
    p.add_argument("--ppo", action="store_true", help="also time a short brax PPO run")
    p.add_argument("--solver", default=None, choices=("newton", "cg"))
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--ls-iterations", type=int, default=None)
    p.add_argument("--clip-dir", default=None, help="clips (default: the built-in ones)")
    p.add_argument("--no-cpu", action="store_true")
    args = p.parse_args()
    physics = dict(solver=args.solver, iterations=args.iterations,
                   ls_iterations=args.ls_iterations)
    if not args.no_cpu:
        cpu_rates(args, physics)
    for n in [int(x) for x in args.mjx.split(",") if x]:
        mjx_rates(args, n, physics)


def solver_name(model) -> str:
    """The constraint solver settings of ``model``, as the result lines name them."""
    import mujoco

    return (f"solver {mujoco.mjtSolver(model.opt.solver).name[6:].lower()} "
            f"{model.opt.iterations}/{model.opt.ls_iterations} iterations")


def cpu_rates(args, physics) -> None:
    kw = dict(body=args.body, clip_dir=args.clip_dir, **physics)
    vec = gym.make_vec("NCSSM-Track-v0", num_envs=args.num_envs, backend="cpu", **kw)
    sync = gym.make_vec("NCSSM-Track-v0", num_envs=args.num_envs, vectorization_mode="sync", **kw)
    nu = vec.single_action_space.shape[0]
    actions = np.random.default_rng(0).uniform(
        -args.amp, args.amp, (args.steps, args.num_envs, nu)).astype(np.float32)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; body {args.body}, "
          f"N {args.num_envs}, {args.steps} steps x {args.repeats} repeats (medians), "
          f"{solver_name(vec.model)}")
    r_sync = rate(sync, actions, args.repeats)
    r_vec = rate(vec, actions, args.repeats)
    print(f"SyncVectorEnv(TrackEnv)   {r_sync:10.0f} env steps/s")
    print(f"TrackVectorEnv (cpu)      {r_vec:10.0f} env steps/s")
    print(f"ratio                     {r_vec / r_sync:10.2f}x")
    vec.close()
    sync.close()


def timed_scan(fn, args, n: int, steps: int, repeats: int):
    """``(compile s, first run s, median control steps/s, output)`` of jitted ``fn(*args)``, a
    scan of ``steps`` steps over ``n`` envs."""
    import jax

    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first_s = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(n * steps / (time.perf_counter() - t))
    return compile_s, first_s, float(np.median(runs)), out


def env_scan(env, n: int, steps: int, amp: float):
    """``run(keys, actions) -> (reward, overflow)`` (jit it): reset ``n`` envs, then ``steps``
    vmapped steps in one ``lax.scan``; and its arguments, actions uniform in +-``amp``."""
    import jax

    def run(keys, actions):
        state = jax.vmap(env.reset)(keys)
        step = jax.vmap(env.step)
        final = jax.lax.scan(lambda s, a: (step(s, a), None), state, actions)[0]
        return final.reward, final.info["overflow"]

    keys = jax.random.split(jax.random.PRNGKey(0), n)
    actions = jax.random.uniform(jax.random.PRNGKey(1), (steps, n, env.action_size),
                                 minval=-amp, maxval=amp)
    return run, (keys, actions)


def mjx_rates(args, n: int, physics) -> None:
    import jax

    from ncssm_env.mjx_env import MJXTrackEnv

    env = MJXTrackEnv(body=args.mjx_body, clip_dir=args.clip_dir, impl=args.impl, num_envs=n,
                      **physics)
    device = jax.devices()[0]
    where = (f"MJX {args.mjx_body}, impl {env.impl}, N {n}, {args.steps} steps, on "
             f"{device.device_kind} ({device.platform}), {solver_name(env.mj_model)}")
    print(f"{where}: compiling ...", flush=True)
    run, (keys, actions) = env_scan(env, n, args.steps, args.amp)
    compile_s, first_s, sps, (_, overflow) = timed_scan(run, (keys, actions), n, args.steps,
                                                        args.repeats)
    overflow = np.asarray(overflow)
    if overflow.any():
        raise env.overflow_error(overflow)
    print(f"  env only:     compile {compile_s:6.1f} s, first run {first_s:6.1f} s, "
          f"{sps:10.0f} control steps/s ({sps * env.n_substeps:.0f} physics steps/s; median of "
          f"{args.repeats}, reset included)", flush=True)
    if device.platform == "cpu":
        mujoco_c_rate(args, env, n, sps, physics)
    if args.policy:
        policy_rate(args, env, n, keys)
    if args.ppo:
        ppo_rate(args, n, physics)


def mujoco_c_rate(args, env, n: int, mjx_sps: float, physics) -> None:
    """MuJoCo C on this machine's cores for the same body and physics: ``min(N, 64)`` envs of
    ``TrackVectorEnv`` (its rate per env barely moves with N)."""
    from ncssm_env.vector import TrackVectorEnv

    n = min(n, 64)
    vec = TrackVectorEnv(n, body=args.mjx_body, clip_dir=args.clip_dir, **physics)
    actions = np.random.default_rng(0).uniform(
        -args.amp, args.amp, (args.steps, n, vec.model.nu)).astype(np.float32)
    c_sps = rate(vec, actions, args.repeats)
    vec.close()
    print(f"  MuJoCo C, TrackVectorEnv with {vec.n_threads} threads on {os.cpu_count()} cores, N {n}: "
          f"{c_sps:10.0f} control steps/s. MJX {env.impl} on this CPU runs at "
          f"{mjx_sps / c_sps:.3g}x MuJoCo C: it is a GPU path, not a CPU one.", flush=True)


def quickstart_policy(env):
    """The quickstart S5 (configs/quickstart.yaml's model) with fresh weights, for ``env``."""
    from pathlib import Path

    import jax

    from ncssm_policies.checkpoint import LoadedPolicy
    from ncssm_policies.config import load_config
    from ncssm_policies.build import build_model, dummy_input

    cfg = load_config(None)
    a, b = env.obs_layout["qpos_local"]
    dims = {"x_in": [b - a], "x_tgt": env.action_size}
    model = build_model(cfg, dims)
    params = model.init(jax.random.PRNGKey(0), dummy_input(dims, 1, 2))["params"]
    return LoadedPolicy(model, params, None, cfg, dims, 0, Path("untrained-quickstart"))


def policy_rate(args, env, n: int, keys) -> None:
    import jax
    import jax.numpy as jnp

    from ncssm_policies.rollout import EpisodePlan, mjx_actor, policy_env_scan

    pol = quickstart_policy(env)
    act, init = mjx_actor(pol, env, n)
    plan = EpisodePlan.draw(np.asarray(env.lengths), n, env.mj_model.nq - 7,
                            env.cfg.reset_noise, 0)
    chunk = policy_env_scan(env, act, plan, n, args.steps)
    state = jax.jit(jax.vmap(env.reset))(keys)

    def run(state, carry, fresh, k):
        return chunk(state, carry, fresh, k)[1]["reward"]

    compile_s, first_s, sps, _ = timed_scan(
        run, (state, init(), jnp.ones(n, bool), jnp.zeros(n, jnp.int32)), n, args.steps,
        args.repeats)
    print(f"  policy + env: compile {compile_s:6.1f} s, first run {first_s:6.1f} s, "
          f"{sps:10.0f} control steps/s (quickstart S5, {pol.config.n_layers} layers, "
          f"d_model {pol.config.d_model}, in the same scan as evaluate's)", flush=True)


def ppo_rate(args, n: int, physics) -> None:
    import jax
    import jax.numpy as jnp
    from brax.training.agents.ppo import train as ppo

    from ncssm_env.mjx_env import MJXTrackEnv, wrap_for_training

    if not hasattr(jax, "device_put_replicated"):  # jax >= 0.10 removed it; brax 0.14.2 calls it
        jax.device_put_replicated = lambda x, devices: jax.tree.map(
            lambda a: jnp.stack([a] * len(devices)), x)
    n_eval = min(n, 128)
    env = MJXTrackEnv(body=args.mjx_body, clip_dir=args.clip_dir, impl=args.impl,
                      num_envs=max(n, n_eval), max_episode_steps=100, **physics)
    epochs = []
    t = time.perf_counter()
    ppo.train(environment=env, num_timesteps=2 * 2 * n * 10, num_envs=n, episode_length=100,
              wrap_env_fn=wrap_for_training, num_evals=3, num_eval_envs=n_eval, unroll_length=10,
              batch_size=max(n // 4, 1), num_minibatches=4, num_updates_per_batch=1, seed=0,
              progress_fn=lambda step, m: epochs.append(m.get("training/sps")))
    wall = time.perf_counter() - t
    sps = [s for s in epochs if s is not None]
    print(f"  brax PPO:     {wall:6.1f} s for 2 epochs of {2 * n * 10} env steps (compile "
          f"included), {sps[-1] if sps else float('nan'):10.0f} env steps/s in the last epoch",
          flush=True)


if __name__ == "__main__":
    main()
