"""Env steps per second: the CPU vector env against a gymnasium ``SyncVectorEnv`` of TrackEnv.

Both sides: the same body, clips, N, seed and action sequence (uniform in +-``--amp``, drawn
once), in this one process; each side is reset, warmed up for 10 steps, then timed over
``--steps`` vector steps, ``--repeats`` times. Prints the median steps/s (N x vector steps /
second) of each side and their ratio.

``--mjx N[,N...]``: also the MJX env (``MJXTrackEnv``, test body by default) as one jitted
``lax.scan`` of ``--steps`` vmapped steps over N envs on JAX's default device: its compile
time and control steps per second (no host round-trip inside the scan), for each N.
``--mjx-iterations I,L`` adds a run with the constraint solver capped at I iterations and L
line-search iterations (MuJoCo's defaults are 100 and 50). ``--no-cpu`` skips the CPU sides.

    python benchmarks/vector_env.py --body rodent --num-envs 16 --mjx 256
    python benchmarks/vector_env.py --no-cpu --mjx-body rodent --mjx 4096,16384   # on a GPU
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
    p.add_argument("--mjx-iterations", default="", metavar="I,L")
    p.add_argument("--clip-dir", default=None, help="clips (default: the built-in ones)")
    p.add_argument("--no-cpu", action="store_true")
    args = p.parse_args()
    if not args.no_cpu:
        cpu_rates(args)
    solvers = ([tuple(map(int, args.mjx_iterations.split(",")))]
               if args.mjx_iterations else []) + [None]
    for n in [int(x) for x in args.mjx.split(",") if x]:
        for solver in solvers:
            mjx_rate(args.mjx_body, n, args.steps, args.repeats, args.amp, args.clip_dir, solver)


def cpu_rates(args) -> None:

    kw = dict(body=args.body, clip_dir=args.clip_dir)
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


def mjx_rate(body: str, n: int, steps: int, repeats: int, amp: float, clip_dir=None,
             solver=None) -> None:
    import jax

    from ncssm_env.mjx_env import MJXTrackEnv

    env = MJXTrackEnv(body=body, clip_dir=clip_dir)
    opt = env.mjx_model.opt
    if solver is not None:
        opt = opt.replace(iterations=solver[0], ls_iterations=solver[1])
        env.mjx_model = env.mjx_model.replace(opt=opt)

    @jax.jit
    def run(keys, actions):
        state = jax.vmap(env.reset)(keys)
        step = jax.vmap(env.step)
        return jax.lax.scan(lambda s, a: (step(s, a), None), state, actions)[0].reward

    keys = jax.random.split(jax.random.PRNGKey(0), n)
    actions = jax.random.uniform(jax.random.PRNGKey(1), (steps, n, env.action_size),
                                 minval=-amp, maxval=amp)
    t = time.perf_counter()
    compiled = run.lower(keys, actions).compile()
    compile_s = time.perf_counter() - t
    print(f"  compiled in {compile_s:.1f} s", flush=True)
    t = time.perf_counter()
    jax.block_until_ready(compiled(keys, actions))
    print(f"  first run {time.perf_counter() - t:.1f} s", flush=True)
    run = compiled
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(run(keys, actions))
        runs.append(n * steps / (time.perf_counter() - t))
    print(f"MJX {body}, N {n} on {jax.devices()[0].device_kind}, solver iterations "
          f"{opt.iterations}/{opt.ls_iterations}: compile {compile_s:.1f} s, "
          f"{np.median(runs):.0f} control steps/s, {np.median(runs) * env.n_substeps:.0f} "
          f"physics steps/s (median of {repeats}, reset included)", flush=True)


if __name__ == "__main__":
    main()
