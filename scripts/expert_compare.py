"""Which expert tracks best from any state? Replay against the feedback expert, side by side.

For each action-noise size, every candidate runs the same episodes (one plan, as in
``evaluate``) on built-in clips of the rodent, beside zero action, on the CPU env:

    python scripts/expert_compare.py                      # 12 clips, 64 episodes, noise 0 0.1 0.3
    python scripts/expert_compare.py --gains 0.25 0.5 1 --damping 0 0.02 --noise 0.1

It prints survival, joint error and the joint score of each: (e_zero - e) / (e_zero - e_replay),
both baselines at the same noise (1 is replay, above 1 beats it).
"""

from __future__ import annotations

import argparse
import functools
import time

from ncssm_env.expert import feedback
from ncssm_env.synthetic import clips_or_builtin
from ncssm_policies.hookspecs import ExpertSpec
from ncssm_policies.rollout import evaluate


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body", default="rodent")
    p.add_argument("--clip-dir", default=None, help="default: the built-in clips of --body")
    p.add_argument("--clips", type=int, default=12, help="the first N clips")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    p.add_argument("--gains", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--damping", type=float, nargs="+", default=[0.0])
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    clip_dir = args.clip_dir or clips_or_builtin(None, args.body)
    candidates = [ExpertSpec(f"feedback G {g:g}" + (f" D {d:g}" if d else ""),
                             functools.partial(feedback, gain=g, damping=d))
                  for g in args.gains for d in args.damping]
    print(f"{args.body}, clips 0-{args.clips - 1} of {clip_dir}, {args.episodes} episodes of at "
          f"most {args.max_steps} steps on {args.num_envs} CPU envs per candidate, seed "
          f"{args.seed}, reset noise of the task")
    print(f"{'noise':>5}  {'expert':<22} {'survival':>8} {'joint err':>9} {'score':>6}")
    for sigma in args.noise:
        t0 = time.perf_counter()
        res = evaluate("replay", baselines=["zero", *candidates], clip_dir=clip_dir,
                       clips=list(range(args.clips)), num_envs=args.num_envs,
                       episodes=args.episodes, seed=args.seed, max_steps=args.max_steps,
                       action_noise=sigma, behaviour=False)
        rows = {"replay": res.summary, **{k: r.summary for k, r in res.baselines.items()}}
        e_zero, e_replay = (rows[k]["err_joints"]["mean"] for k in ("zero", "replay"))
        for name, s in rows.items():
            e = s["err_joints"]["mean"]
            print(f"{sigma:>5.2f}  {name:<22} {100 * s['survival']:>7.1f}% {e:>9.4f} "
                  f"{(e_zero - e) / (e_zero - e_replay):>6.2f}")
        print(f"       ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
