"""``ncssm-data``: make clip files.

    ncssm-data generate --body rodent --clips 32 --frames 600 --seed 0 --out DIR
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ncssm-data", description="Make ncssm clip files.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="roll the built-in behaviour program out in a body")
    gen.add_argument("--body", default="rodent")
    gen.add_argument("--clips", type=int, default=32, help="number of clips")
    gen.add_argument("--frames", type=int, default=600, help="frames per clip (50 Hz)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, help="folder for clip_<i>.h5")
    args = parser.parse_args(argv)

    from ncssm_env.synthetic import generate

    try:
        upright = generate(args.out, body=args.body, n_clips=args.clips, n_frames=args.frames,
                           seed=args.seed)
    except ValueError as err:
        print(f"ncssm-data: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.clips} clips of {args.frames} frames to {args.out}; torso upright in "
          f"{100 * np.mean(upright):.1f}% of frames (worst clip {100 * np.min(upright):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
