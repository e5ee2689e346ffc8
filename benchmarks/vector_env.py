"""Env steps per second: the CPU vector env against a gymnasium ``SyncVectorEnv`` of TrackEnv.

Both sides: the same body, clips, N, seed and action sequence (uniform in +-``--amp``, drawn
once), in this one process; each side is reset, warmed up for 10 steps, then timed over
``--steps`` vector steps, ``--repeats`` times. Prints the median steps/s (N x vector steps /
second) of each side and their ratio.

``--mjx N``: also the MJX env (``MJXTrackEnv``, test body by default) as one jitted
``lax.scan`` of ``--steps`` vmapped steps over N envs on JAX's default device: its compile
time and control steps per second (no host round-trip inside the scan).

    python benchmarks/vector_env.py --body rodent --num-envs 16 --mjx 256
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
    p.add_argument("--mjx", type=int, default=0, metavar="N", help="MJX envs (0: skip)")
    p.add_argument("--mjx-body", default="test")
    args = p.parse_args()

    kw = dict(body=args.body)
    vec = gym.make_vec("NCSSM-Track-v0", num_envs=args.num_envs, backend="cpu", **kw)
    sync = gym.make_vec("NCSSM-Track-v0", num_envs=args.num_envs, vectorization_mode="sync", **kw)
    nu = vec.single_action_space.shape[0]
    actions = np.random.default_rng(0).uniform(
        -args.amp, args.amp, (args.steps, args.num_envs, nu)).astype(np.float32)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; body {args.body}, "
          f"N {args.num_envs}, {args.steps} steps x {args.repeats} repeats (medians)")
    r_sync = rate(sync, actions, args.repeats)
    r_vec = rate(vec, actions, args.repeats)
    print(f"SyncVectorEnv(TrackEnv)   {r_sync:10.0f} env steps/s")
    print(f"TrackVectorEnv (cpu)      {r_vec:10.0f} env steps/s")
    print(f"ratio                     {r_vec / r_sync:10.2f}x")
    vec.close()
    sync.close()
    if args.mjx:
        mjx_rate(args.mjx_body, args.mjx, args.steps, args.repeats, args.amp)


def mjx_rate(body: str, n: int, steps: int, repeats: int, amp: float) -> None:
    import jax

    from ncssm_env.mjx_env import MJXTrackEnv

    env = MJXTrackEnv(body=body)

    @jax.jit
    def run(keys, actions):
        state = jax.vmap(env.reset)(keys)
        step = jax.vmap(env.step)
        return jax.lax.scan(lambda s, a: (step(s, a), None), state, actions)[0].reward

    keys = jax.random.split(jax.random.PRNGKey(0), n)
    actions = jax.random.uniform(jax.random.PRNGKey(1), (steps, n, env.action_size),
                                 minval=-amp, maxval=amp)
    t = time.perf_counter()
    jax.block_until_ready(run.lower(keys, actions).compile()(keys, actions))
    compile_s = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(run(keys, actions))
        runs.append(n * steps / (time.perf_counter() - t))
    print(f"MJX {body}, N {n} on {jax.devices()[0].platform}: compile {compile_s:.1f} s, "
          f"{np.median(runs):.0f} control steps/s (median of {repeats}, reset included)")


if __name__ == "__main__":
    main()
