"""TrackEnv.step against 10 raw ``mj_step`` calls on the same model, from the same states.

Each round saves the physics state, times one ``env.step(a)``, restores the state and times
10 ``mujoco.mj_step`` calls, so both sides integrate exactly the same physics. It prints the
median of each side over ``--steps`` rounds and the ratio of medians (the goal is <= 1.25).

    python benchmarks/env_step.py --body rodent --steps 2000
    python benchmarks/env_step.py --body test --steps 5 --clip-dir CLIP_DIR    # smoke
"""

from __future__ import annotations

import argparse
import platform
import time

import gymnasium as gym
import mujoco
import numpy as np

import ncssm_env  # noqa: F401  (registers NCSSM-Track-v0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body", default="rodent")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-dir", default=None, help="clips of --body (default: the built-in ones)")
    args = p.parse_args()

    env = gym.make("NCSSM-Track-v0", body=args.body, clip_dir=args.clip_dir).unwrapped
    model, data = env.model, env.data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    rng = np.random.default_rng(args.seed)
    _, info = env.reset(seed=args.seed)

    t_env, t_raw = [], []
    for _ in range(args.steps):
        # The clip's own next control keeps the body on a plausible path.
        clip = env.clip(info["clip"])
        a = clip.ctrl[info["t"] + 1] + 0.05 * rng.standard_normal(model.nu)
        mujoco.mj_getState(model, data, state, spec)
        t0 = time.perf_counter()
        _, _, terminated, truncated, info = env.step(a)
        t1 = time.perf_counter()
        mujoco.mj_setState(model, data, state, spec)
        data.ctrl[:] = a
        t2 = time.perf_counter()
        for _ in range(env.n_substeps):
            mujoco.mj_step(model, data)
        t3 = time.perf_counter()
        t_env.append(t1 - t0)
        t_raw.append(t3 - t2)
        if terminated or truncated:
            _, info = env.reset()

    env_us, raw_us = np.median(t_env) * 1e6, np.median(t_raw) * 1e6
    print(f"machine: {platform.processor() or platform.machine()}, mujoco {mujoco.__version__}, "
          f"body {args.body} (nq {model.nq}, nu {model.nu}), {args.steps} rounds")
    print(f"{'side':34s} {'median us/step':>15s}")
    print(f"{'TrackEnv.step (10 substeps + task)':34s} {env_us:15.1f}")
    print(f"{'10 x mujoco.mj_step':34s} {raw_us:15.1f}")
    print(f"ratio env / raw: {env_us / raw_us:.3f} (goal <= 1.25)")


if __name__ == "__main__":
    main()
