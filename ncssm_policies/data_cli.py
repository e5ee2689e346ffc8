"""``ncssm-data``: make clip files, and label them with behavioural syllables.

It sits at the top of the house (its ``segment`` fits an AR-HMM, a model), so that
``ncssm_data`` and ``ncssm_env`` import nothing above them.

    ncssm-data generate --body rodent --clips 32 --frames 600 --seed 0 --out DIR
    ncssm-data segment --config configs/segment.yaml [--override key=value ...] [--sweep]
    ncssm-data import --qpos FILE [--key qpos] [--fps 50] [--names KEY] --body rodent --out DIR
    ncssm-data dart --clip-dir DIR --noise 0.1 [--copies 1] [--expert replay] [--seed 0]
    ncssm-data export-minari CLIP_DIR --id ncssm/rodent-builtin-v0 [--root DIR] [--overwrite]
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
    gen.add_argument("--dart", type=float, metavar="NOISE",
                     help="also write DART rollouts: the expert tracking each clip while "
                          "executing its control plus Gaussian noise of this std (see "
                          "ncssm_env.dart)")
    gen.add_argument("--dart-copies", type=int, default=1, help="DART rollouts per clip")
    gen.add_argument("--expert", default="replay", help="the registered expert of the DART "
                                                        "rollouts (replay, feedback, a plugin's)")
    dart = sub.add_parser("dart", help="write DART rollouts of every clip of a folder into it "
                                       "(see ncssm_env.dart)")
    dart.add_argument("--clip-dir", required=True, dest="out", help="the clip folder")
    dart.add_argument("--noise", type=float, required=True, dest="dart",
                      help="std of the Gaussian noise on the executed controls")
    dart.add_argument("--copies", type=int, default=1, dest="dart_copies")
    dart.add_argument("--expert", default="replay")
    dart.add_argument("--seed", type=int, default=0)
    seg = sub.add_parser("segment", help="fit a sticky AR-HMM to clips and write its syllables "
                                         "into them (see ncssm_policies.arhmm)")
    seg.add_argument("--config", help="a YAML config (default: configs/segment.yaml's values)")
    seg.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                     help="config values, each read as a YAML scalar")
    seg.add_argument("--sweep", action="store_true",
                     help="fit the grid of sweep_num_states x sweep_kappa (x sweep_n_pcs) and "
                          "print the table instead")
    seg.add_argument("--overwrite", action="store_true", help="replace an existing out_key")
    seg.add_argument("--no-progress", action="store_true", help="no progress bars")
    imp = sub.add_parser("import", help="write reference-only clips from qpos arrays (.npz or "
                                        ".h5), resampled to 50 Hz (see ncssm_env.importer)")
    imp.add_argument("--qpos", required=True, help="the .npz / .h5 file holding qpos (T, nq)")
    imp.add_argument("--key", default="qpos", help="the array (or per-clip group dataset) to read")
    imp.add_argument("--fps", type=float, default=50.0, help="frames per second of the file")
    imp.add_argument("--names", help="the array naming each column's joint (default: the "
                                     "model's qpos order)")
    imp.add_argument("--body", default="rodent")
    imp.add_argument("--out", required=True, help="folder for clip_<i>.h5")
    imp.add_argument("--overwrite", action="store_true", help="replace clip files in --out")
    imp.add_argument("--z-offset", default="0", metavar="METRES|floor",
                     help="lift the root by this much, or 'floor': so the lowest paw of each "
                          "clip's deepest frame just touches the floor (for fits made against "
                          "another floor height)")
    fit = sub.add_parser("fit-keypoints", help="fit the body to recorded 3D keypoints (NWB with "
                         "ndx-pose, DANNCE .mat, SLEAP) and write reference-only clips")
    fit.add_argument("--keypoints", required=True, metavar="FILE",
                     help="the recording (.nwb, .mat, .h5 SLEAP analysis, .slp)")
    fit.add_argument("--body", help="the body (default: the config's)")
    fit.add_argument("--out", required=True, help="folder for clip_<i>.h5 and the fit's report")
    fit.add_argument("--config", help="the keypoint map and fit settings (default: "
                     "configs/keypoints_rodent.yaml of the source tree)")
    fit.add_argument("--units", choices=["m", "cm", "mm"],
                     help="the recording's length unit (default: detected from bone lengths)")
    fit.add_argument("--format",
                     help="the file's format (default: from its extension)")
    fit.add_argument("--animal", help="the animal (PoseEstimation group or track) of a file "
                     "holding several")
    fit.add_argument("--fps", type=float, help="the frame rate, for files that state none (.mat)")
    fit.add_argument("--clip-len", type=float, metavar="SECONDS", help="cut clips this long")
    fit.add_argument("--max-gap", type=float, default=0.5, metavar="SECONDS",
                     help="split where more than this many seconds in a row had too few "
                     "keypoints (shorter gaps are interpolated and marked)")
    fit.add_argument("--frames", type=int, help="fit only the first N frames")
    fit.add_argument("--z-offset", default="floor", metavar="METRES|floor",
                     help="lift the fit (default: its lowest paw onto the floor)")
    fit.add_argument("--no-video", action="store_true", help="skip fit.mp4")
    fit.add_argument("--overwrite", action="store_true", help="replace clip files in --out")
    mnr = sub.add_parser("export-minari", help="replay clips through NCSSM-Track-v0 into a "
                                               "Minari dataset (see ncssm_env.minari_export)")
    mnr.add_argument("clip_dir", metavar="CLIP_DIR", help="a folder of clip_<i>.h5 with /ctrl")
    mnr.add_argument("--id", required=True, dest="dataset_id", metavar="ID",
                     help="the dataset id, (namespace/)name-v(version)")
    mnr.add_argument("--root", metavar="DIR",
                     help="Minari's datasets folder (default: $MINARI_DATASETS_PATH, else "
                          "~/.minari/datasets)")
    mnr.add_argument("--overwrite", action="store_true", help="replace a dataset of that id")
    mnr.add_argument("--author")
    mnr.add_argument("--author-email")
    mnr.add_argument("--code-permalink")
    args = parser.parse_args(argv)
    if args.command == "export-minari":
        return _export_minari(args)
    if args.command == "segment":
        return _segment(args)
    if args.command == "import":
        return _import(args)
    if args.command == "fit-keypoints":
        return _fit_keypoints(args)
    if args.command == "dart":
        return _dart(args)

    from ncssm_data.locks import writing
    from ncssm_env.synthetic import generate

    try:
        with writing(args.out):
            upright = generate(args.out, body=args.body, n_clips=args.clips,
                               n_frames=args.frames, seed=args.seed)
    except (ValueError, OSError) as err:
        print(f"ncssm-data: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.clips} clips of {args.frames} frames to {args.out}; torso upright in "
          f"{100 * np.mean(upright):.1f}% of frames (worst clip {100 * np.min(upright):.1f}%)")
    if args.dart is not None:
        return _dart(args)
    return 0


def _dart(args) -> int:
    from ncssm_data.errors import ClipError
    from ncssm_data.locks import writing
    from ncssm_env.body import build_model
    from ncssm_env.dart import generate_dart
    from ncssm_policies.registry import PluginError, registry

    try:
        body = getattr(args, "body", None)
        if body is None:
            from ncssm_data import ClipStore

            with ClipStore(args.out) as store:
                body = store.body or "rodent"
        expert = registry().get_expert(args.expert).make(build_model(body))
        with writing(args.out):
            counts = generate_dart(args.out, expert, args.dart, copies=args.dart_copies,
                                   seed=args.seed, expert_name=args.expert)
    except (ValueError, ClipError, PluginError, OSError) as err:  # (UnknownPolicyError too)
        print(f"ncssm-data: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {counts['written']} DART rollouts ({counts['frames']} frames; expert "
          f"{args.expert}, noise {args.dart:g}) to {args.out}; {counts['short']} fell within "
          f"K + 2 frames and were not written")
    return 0


def _z_offset(text: str):
    if text == "floor":
        return text
    try:
        return float(text)
    except ValueError:
        return text  # import_qpos refuses it in one sentence


def _import(args) -> int:
    from ncssm_data.clips import ClipStore
    from ncssm_data.locks import writing
    from ncssm_env.importer import import_qpos

    try:
        with writing(args.out):
            paths = import_qpos(args.qpos, args.out, body=args.body, key=args.key,
                                fps=args.fps, names_key=args.names, overwrite=args.overwrite,
                                z_offset=_z_offset(args.z_offset))
        with ClipStore(args.out) as store:
            lengths, rate = store.lengths, 1 / store.control_dt
    except (ValueError, OSError) as err:  # ClipError is a ValueError
        print(f"ncssm-data: error: {err}", file=sys.stderr)
        return 2
    if len(set(lengths.tolist())) == 1:
        frames = f"{lengths[0]} frames" + (" each" if len(paths) > 1 else "")
    else:
        frames = f"{', '.join(map(str, lengths))} frames"
    print(f"ncssm-data import: wrote {len(paths)} clip{'s' * (len(paths) != 1)} of {frames} "
          f"({args.fps:g} fps -> {rate:g} Hz) to {args.out}")
    return 0


def _fit_keypoints(args) -> int:
    from ncssm_data.locks import writing
    from ncssm_policies.fit_keypoints import fit_recording

    try:
        with writing(args.out):
            report = fit_recording(
                args.keypoints, args.out, body=args.body, config=args.config, units=args.units,
                format=args.format, animal=args.animal, fps=args.fps, clip_len_s=args.clip_len,
                max_gap_s=args.max_gap, z_offset=_z_offset(args.z_offset), frames=args.frames,
                overwrite=args.overwrite, video=not args.no_video)
    except (ValueError, OSError) as err:  # ClipError is a ValueError
        print(f"ncssm-data: error: {err}", file=sys.stderr)
        return 2
    res, clips = report["residual_mm"], report["clips"]
    worst = max(report["residual_per_keypoint"].items(),
                key=lambda kv: -1 if kv[1]["median_mm"] is None else kv[1]["median_mm"])
    print(f"ncssm-data fit-keypoints: {report['frames']} frames at {report['fps']:g} fps in "
          f"{report['units']} ({'detected' if args.units is None else 'given'}; the file says "
          f"{report['units_stated_by_file']}), the animal {report['size_vs_body']:g} times the "
          f"body; residual median {res['median']:g} mm, p95 {res['p95']:g} mm (worst keypoint "
          f"{worst[0]}, median {worst[1]['median_mm']} mm); {report['limit_hits_per_frame']:g} "
          f"of {report['hinges']} hinges at a limit per frame, "
          f"{len(report['hinges_determined'])} determined by the keypoints; "
          f"{report['interpolated_frames']} frames interpolated; "
          f"{1000 * report['seconds_per_frame']:.1f} ms per frame per pass")
    print(f"wrote {len(clips)} clip{'s' * (len(clips) != 1)} "
          f"({', '.join(str(c['frames']) for c in clips)} frames at 50 Hz) and fit_report.json, "
          f"fit_residuals.png{'' if args.no_video else ', fit.mp4'} to {args.out}")
    return 0


def _export_minari(args) -> int:
    from ncssm_env.minari_export import MinariMissingError, export_minari

    try:
        s = export_minari(args.clip_dir, args.dataset_id, root=args.root,
                          overwrite=args.overwrite, author=args.author,
                          author_email=args.author_email, code_permalink=args.code_permalink)
    except (MinariMissingError, ValueError, OSError) as err:  # ClipError is a ValueError
        print(f"ncssm-data: error: {err}", file=sys.stderr)
        return 2
    ended = f"; {len(s['terminated'])} terminated early (clips {s['terminated']})" \
        if s["terminated"] else ""
    print(f"ncssm-data export-minari: wrote {args.dataset_id} ({s['episodes']} episodes, "
          f"{s['steps']} steps{ended}) to {s['path']}")
    return 0


def _segment(args) -> int:
    from ncssm_data.errors import ClipError
    from ncssm_policies.arhmm import SegmentConfig, segment, sweep, sweep_table
    from ncssm_policies.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.override + (["overwrite=true"] if args.overwrite
                                                         else []), cls=SegmentConfig)
        if args.sweep:
            rows, best = sweep(cfg, progress=not args.no_progress)
            rule = "held-out log-likelihood" if cfg.select == "loglik" else \
                f"median duration nearest {cfg.target_duration} s"
            print(f"ncssm-data segment --sweep: {len(rows)} fits, sorted by held-out "
                  f"log-likelihood per frame; * marks the best by {rule}")
            print(sweep_table(rows, best))
            print(f"  table: {cfg.out_dir}/sweep.json")
            return 0
        s = segment(cfg, progress=not args.no_progress)
    except (ConfigError, ClipError, ValueError, OSError, FloatingPointError) as err:
        print(f"ncssm-data: error: {err}", file=sys.stderr)
        return 2
    keys = ("clips", "feature", "num_states", "kappa", "num_lags", "n_pcs", "heldout_ll",
            "ll_per_frame", "restart", "restart_ll_spread",
            "states_in_use", "median_duration_frames", "median_duration_s", "ari", "nmi",
            "ari_held_out", "nmi_held_out", "fit_s", "model", "labels")
    print("ncssm-data segment:")
    for k in keys:
        if k in s:
            v = s[k]
            print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    for k, v in s["plots"].items():
        print(f"  {k}: {v}")
    print(f"  summary: {cfg.out_dir}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
