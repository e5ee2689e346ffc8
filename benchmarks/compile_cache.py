"""Compile time cold and warm: what JAX's persistent compilation cache saves a second run.

Runs this script twice as child processes that share one fresh cache folder
(``NCSSM_JAX_CACHE``, and a fresh Warp kernel cache in it), and prints each child's compile
times and the cold / warm ratio:

- **env**: the MJX env's jitted scan (reset, then ``--steps`` vmapped steps over
  ``--num-envs`` envs of ``--body`` under ``--impl``), as ``benchmarks/vector_env.py --mjx``
  compiles it; the cold child also builds Warp's kernels;
- **train**: ``ncssm-train``'s jitted training step for the quickstart (S5, state->action on
  the rodent's dims: batch 32, 490 frames).

Compile time here is trace, lower and compile (``jit(f).lower(...).compile()``); "to first
result" adds the first call, where Warp builds (or loads) its kernels.

    python benchmarks/compile_cache.py                                  # rodent, warp, 64 envs
    python benchmarks/compile_cache.py --parts train                    # smoke: the train step
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(args) -> dict:
    import jax

    from ncssm_env.jax_cache import enable_compilation_cache

    enable_compilation_cache()
    times = {}
    if "env" in args.parts:  # (imported here: MJX, brax and Warp take seconds to import)
        from ncssm_env.mjx_env import MJXTrackEnv
        from vector_env import env_scan

        env = MJXTrackEnv(body=args.body, clip_dir=args.clip_dir, impl=args.impl,
                          num_envs=args.num_envs)
        run, run_args = env_scan(env, args.num_envs, args.steps, 0.2)
        t = time.perf_counter()
        compiled = jax.jit(run).lower(*run_args).compile()
        times["env"] = time.perf_counter() - t
        jax.block_until_ready(compiled(*run_args))  # Warp builds its kernels at the first call
        times["env_first"] = time.perf_counter() - t
    if "train" in args.parts:
        times.update(train_times())
    times["device"] = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform})"
    return times


def train_times(body: str = "rodent") -> dict:
    """Compile and first-call seconds of the quickstart's training step on ``body``'s dims."""
    import jax
    import jax.numpy as jnp

    from ncssm_env.body import build_model as build_body
    from ncssm_policies.build import build_model, dummy_input
    from ncssm_policies.config import load_config
    from ncssm_policies.train import make_optimizer, make_steps

    cfg = load_config(None)
    m = build_body(body)
    dims = {"x_in": [m.nq - 7], "x_tgt": m.nu}  # state_action: qpos_local -> ctrl
    model = build_model(cfg, dims)
    tx, _ = make_optimizer(cfg, 100)
    # one jitted init (the warm child loads it from the cache), not one compile per operation
    params = jax.jit(model.init)(jax.random.PRNGKey(0), dummy_input(dims, 1, 2))["params"]
    x_in = jnp.zeros((cfg.batch_size, cfg.seg_len, m.nq - 7))
    x_tgt = jnp.zeros((cfg.batch_size, cfg.seg_len, m.nu))
    times = {}
    train_step, _ = make_steps(model, tx)
    t = time.perf_counter()
    step_args = (params, tx.init(params), jax.random.PRNGKey(0), 0, x_in, x_tgt)
    compiled = train_step.lower(*step_args).compile()
    times["train"] = time.perf_counter() - t
    jax.block_until_ready(compiled(*step_args))
    times["train_first"] = time.perf_counter() - t
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body", default="rodent")
    p.add_argument("--impl", default="warp", choices=("jax", "warp", "auto"))
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--clip-dir", default=None, help="clips of --body (default: the built-in ones)")
    p.add_argument("--parts", default="env,train", help="what to compile: env, train or both")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="ncssm-compile-cache-") as cache:
        env = {**os.environ, "NCSSM_JAX_CACHE": cache, "WARP_CACHE_PATH": os.path.join(cache, "warp")}
        runs = []
        for name in ("cold", "warm"):
            out = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env,
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[-1].items()
                                          if k != "device"), flush=True)
    cold, warm = runs
    print(f"{args.body}, impl {args.impl}, N {args.num_envs}, {args.steps} steps, on "
          f"{cold['device']}:")
    for k in [k for k in ("env", "train") if k in cold]:
        f = f"{k}_first"
        print(f"  {k:6s} compile cold {cold[k]:7.1f} s, warm {warm[k]:6.1f} s, ratio "
              f"{cold[k] / warm[k]:5.1f}x; to first result cold {cold[f]:7.1f} s, warm "
              f"{warm[f]:6.1f} s, ratio {cold[f] / warm[f]:5.1f}x")


if __name__ == "__main__":
    main()
