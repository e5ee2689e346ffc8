"""``ncssm-data fit-keypoints``: a recording of 3D keypoints in, reference-only clips out.

The steps (issue 19):

1. Read the recording (:func:`ncssm_data.keypoints.read_keypoints`; NWB, DANNCE ``.mat`` or SLEAP)
   and the keypoint config (the map, and the ``fit:`` settings). A keypoint whose confidence is
   below ``fit.min_confidence`` counts as missing.
2. Find its units from bone lengths (:func:`~ncssm_env.keypoint_fit.detect_units`) unless given.
3. Fit the body (:func:`~ncssm_env.keypoint_fit.fit_keypoints`).
4. Split the recording where its timestamps jump, where more than ``max_gap_s`` of frames in a
   row were interpolated (too few keypoints), and every ``clip_len_s`` seconds. Interpolated
   frames at a clip's ends are dropped; shorter runs inside a clip stay and are marked.
5. Resample each piece to the control rate and write it with the importer's writer, with its
   ``source``, ``source_start_s`` and ``interpolated`` frames. ``z_offset="floor"`` (the
   default) lifts the whole fit so that the lowest paw of its deepest frame rests on the floor
   (the recording's floor is not the model's).
6. The quality report beside the clips: ``fit_report.json`` (units, per-keypoint residual median
   and 95th percentile in mm, joint-limit hits, the clips), ``fit_residuals.png`` (residuals
   over time) and ``fit.mp4`` (the fitted body with the recorded keypoints drawn on it).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ncssm_data.errors import ClipError

CONTROL_DT = 0.02
RECORDED_RGBA = (0.9, 0.1, 0.1, 1.0)  # the recording's keypoints in the video
FITTED_RGBA = (0.1, 0.4, 1.0, 1.0)  # the keypoints on the fitted body


def default_config() -> Path:
    """``configs/keypoints_rodent.yaml`` of the source tree (there in an editable install)."""
    return Path(__file__).resolve().parents[1] / "configs" / "keypoints_rodent.yaml"


def split_clips(times: np.ndarray, interpolated: np.ndarray, *, max_gap_s: float,
                clip_len_s: float | None) -> list[tuple[int, int]]:
    """The [start, stop) source-frame ranges of the clips: ``times`` (T,) seconds, cut where
    a step exceeds 1.5 median steps, around runs of ``interpolated`` (T,) frames longer than
    ``max_gap_s`` or at either end of a piece (dropped), then every ``clip_len_s`` seconds."""
    T = len(times)
    dt = float(np.median(np.diff(times))) if T > 1 else 1.0
    cuts = [0, *(np.flatnonzero(np.diff(times) > 1.5 * dt) + 1).tolist(), T]
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        drop = np.zeros(b - a, bool)
        for s, e in _runs(interpolated[a:b]):
            if s == 0 or e == b - a or (e - s) * dt > max_gap_s:
                drop[s:e] = True
        for s, e in _runs(~drop):
            step = e - s if clip_len_s is None else max(int(round(clip_len_s / dt)), 1)
            out.extend((a + x, a + min(x + step, e)) for x in range(s, e, step))
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [start, stop) runs of True in ``mask`` (n,)."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def fit_recording(keypoints: str | Path, out_dir: str | Path, *, body: str | None = None,
                  config: str | Path | None = None, units: str | None = None,
                  format: str | None = None, animal: str | None = None, fps: float | None = None,
                  clip_len_s: float | None = None, max_gap_s: float = 0.5,
                  z_offset: float | str = "floor", frames: int | None = None,
                  overwrite: bool = False, video: bool = True, K: int = 5) -> dict:
    """Fit ``body`` to the recording ``keypoints`` and write its clips and report into
    ``out_dir`` (see the module docstring); return the report. ``body`` defaults to the
    config's (else ``"rodent"``) and must agree with it. ``frames`` keeps the first that
    many frames. Every problem with the input is one sentence (:class:`ClipError`), raised
    before any clip is written; the report, the figure and the video follow the clips."""
    import mujoco

    from ncssm_data.keypoints import read_keypoints
    from ncssm_env.body import build_model
    from ncssm_env.importer import (ReferenceClip, floor_distance, old_clips, resample,
                                    write_reference_clips)
    from ncssm_env.keypoint_fit import (UNITS, detect_units, fit_keypoints, load_fit_config,
                                        load_keypoint_map, read_keypoint_config)

    keypoints, out_dir = Path(keypoints), Path(out_dir)
    config = default_config() if config is None else Path(config)
    if not config.is_file():
        raise ClipError(f"Keypoint config {config} does not exist; give --config (the rodent's is "
                        f"configs/keypoints_rodent.yaml in the source tree).")
    for name, value in (("clip_len_s", clip_len_s), ("max_gap_s", max_gap_s)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                      and value > 0):
            raise ClipError(f"{name} is {value!r}, expected a positive number of seconds.")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)
                               or frames < 1):
        raise ClipError(f"frames is {frames!r}, expected a positive number of frames.")
    if units is not None and units not in UNITS:
        raise ClipError(f"units is {units!r}, expected one of {', '.join(UNITS)}.")
    mapped = read_keypoint_config(config).get("body")
    if body is not None and mapped is not None and body != mapped:
        raise ClipError(f"Keypoint config {config} maps keypoints onto body {mapped!r}, not "
                        f"{body!r}; give a config for {body!r}.")
    body = body or mapped or "rodent"
    old = old_clips(out_dir, overwrite)
    model = build_model(body)
    fit_cfg = load_fit_config(config)
    names = list(load_keypoint_map(config, model).names)
    rec = read_keypoints(keypoints, format, animal=animal, fps=fps, names=names)
    if frames is not None:
        rec = replace(rec, xyz=rec.xyz[:frames], times=rec.times[:frames],
                      confidence=None if rec.confidence is None else rec.confidence[:frames])
    kmap = load_keypoint_map(config, model, rec)
    index = [rec.names.index(n) for n in kmap.names]
    xyz = rec.xyz[:, index].copy()  # (T, K, 3), the map's order
    if rec.confidence is not None and fit_cfg.min_confidence > 0:
        xyz[rec.confidence[:, index] < fit_cfg.min_confidence] = np.nan
    if not np.isfinite(xyz).all(axis=2).any():
        low = " or below min_confidence" if fit_cfg.min_confidence > 0 else ""
        raise ClipError(f"Keypoint file {keypoints} has no keypoint present in any of its "
                        f"{len(xyz)} frames (all NaN{low}).")
    detected, ratio = detect_units(replace(rec, xyz=xyz, names=kmap.names), model, kmap)
    unit = units or detected
    fit = fit_keypoints(xyz / UNITS[unit], body, kmap, fit_cfg)

    pieces = split_clips(rec.times, fit.interpolated, max_gap_s=max_gap_s, clip_len_s=clip_len_s)
    qpos = fit.qpos.copy()
    if isinstance(z_offset, str) and z_offset == "floor":
        lift = -floor_distance(build_model(body, contacts="paws"), qpos[~fit.interpolated])
    elif isinstance(z_offset, (int, float)) and math.isfinite(z_offset):
        lift = float(z_offset)
    else:
        raise ClipError(f"z_offset is {z_offset!r}, expected metres or 'floor'.")
    qpos[:, 2] += lift
    free = model.jnt_qposadr[model.jnt_type == mujoco.mjtJoint.mjJNT_FREE] + 3
    quats = [slice(int(i), int(i) + 4) for i in free]
    clips, kept, dropped = [], [], []
    for a, b in pieces:
        rate = 1.0 / float(np.median(np.diff(rec.times[a:b]))) if b - a > 1 else rec.fps
        q = resample(qpos[a:b], rate, CONTROL_DT, quats)
        if len(q) < K + 2:
            dropped.append((a, b))
            continue
        src = np.arange(len(q)) * CONTROL_DT * rate  # each control frame, in source frames
        lo = np.minimum(np.floor(src + 1e-6).astype(int), b - a - 1)
        hi = np.minimum(lo + 1, b - a - 1)
        w = src - lo  # a control frame is marked when a frame it draws on was interpolated
        interp = fit.interpolated[a:b]
        marked = np.flatnonzero(interp[lo] & (w < 1 - 1e-6) | interp[hi] & (w > 1e-6))
        who = f" animal {rec.animal}" if rec.animal else ""
        clips.append(ReferenceClip(
            q, f"ncssm-data fit-keypoints {keypoints.name}{who} frames {a}-{b - 1} "
               f"({rate:g} fps -> {1 / CONTROL_DT:g} Hz)",
            str(keypoints.resolve()), float(rec.times[a]), marked))
        kept.append((a, b))
    if not clips:
        raise ClipError(f"Keypoint file {keypoints} gives no clip of at least K+2 = {K + 2} frames "
                        f"at {1 / CONTROL_DT:g} Hz once split at gaps of more than {max_gap_s:g} s "
                        f"({len(pieces)} piece(s), {int(fit.interpolated.sum())} of "
                        f"{len(xyz)} frames interpolated).")
    paths = write_reference_clips(out_dir, clips, model, body, CONTROL_DT, old)

    report = _report(rec, kmap, fit, body, model, unit, detected, ratio, fit_cfg, keypoints, config,
                     lift, list(zip(paths, clips, kept)), dropped)
    _write_json(out_dir / "fit_report.json", report)
    plot_residuals(out_dir / "fit_residuals.png", rec.times, fit.residual, kmap.names,
                   fit.interpolated)
    if video:
        from ncssm_policies.rollout_io import render_episode

        shown = np.where(np.isfinite(xyz), xyz / UNITS[unit], np.nan)
        lifted = [(shown + [0, 0, lift], RECORDED_RGBA, 0.005),  # larger: seen round the body's
                  (fit.site_xyz + [0, 0, lift], FITTED_RGBA, 0.003)]
        render_episode(out_dir / "fit.mp4", body, qpos, fps=rec.fps, markers=lifted)
    return report


def _report(rec, kmap, fit, body, model, unit, detected, ratio, fit_cfg, keypoints, config, lift,
            written, dropped) -> dict:
    """What ``fit_report.json`` holds (see :func:`fit_recording`)."""
    import mujoco

    from ncssm_env.keypoint_fit import determined_joints, fitting_model

    res_mm = fit.residual * 1000.0
    per_kp = {}
    for k, name in enumerate(kmap.names):
        r = res_mm[~fit.interpolated, k]
        r = r[np.isfinite(r)]
        per_kp[name] = {"median_mm": _round(np.median(r)) if r.size else None,
                        "p95_mm": _round(np.percentile(r, 95)) if r.size else None,
                        "frames": int(r.size)}
    everything = res_mm[~fit.interpolated]
    everything = everything[np.isfinite(everything)]
    hinge = np.flatnonzero(model.jnt_type == mujoco.mjtJoint.mjJNT_HINGE)
    rng = model.jnt_range[hinge]
    angle = fit.qpos[:, model.jnt_qposadr[hinge]]
    at = (angle <= rng[:, 0] + 1e-4) | (angle >= rng[:, 1] - 1e-4)
    names = {int(model.jnt_qposadr[j]): model.joint(j).name.split("/", 1)[-1] for j in hinge}
    joint_hits = {names[int(model.jnt_qposadr[j])]: int(n)
                  for j, n in zip(hinge, at.sum(axis=0)) if n}
    adr, score = determined_joints(*fitting_model(body, kmap, fit.offsets),
                                   fit.qpos[~fit.interpolated])
    return {
        "source": str(keypoints.resolve()),
        "animal": rec.animal,
        "config": str(config),
        "frames": int(len(rec.times)),
        "fps": _round(rec.fps),
        "units": unit,
        "units_detected": detected,
        "units_stated_by_file": rec.unit,
        "size_vs_body": _round(ratio),
        "fit": asdict(fit_cfg),
        "residual_mm": {"median": _round(np.median(everything)),
                        "p95": _round(np.percentile(everything, 95))},
        "residual_per_keypoint": per_kp,
        "offsets_m": {n: [_round(v, 5) for v in o] for n, o in zip(kmap.names, fit.offsets)},
        "interpolated_frames": int(fit.interpolated.sum()),
        "limit_hits_per_frame": _round(float(fit.limit_hits.mean())),
        "limit_hits_per_joint": dict(sorted(joint_hits.items(), key=lambda kv: -kv[1])),
        "hinges": int(len(hinge)),
        "hinges_determined": [names[int(a)] for a in adr[score >= 0.01]],
        "seconds_per_frame": _round(fit.seconds_per_frame, 5),
        "passes": fit_cfg.rounds + 1,
        "z_lift_m": _round(lift, 5),
        "clips": [{"file": p.name, "source_frames": [int(a), int(b)],
                   "source_start_s": _round(c.source_start_s, 6), "frames": int(len(c.qpos)),
                   "interpolated": int(len(c.interpolated))} for p, c, (a, b) in written],
        "dropped_pieces": [[int(a), int(b)] for a, b in dropped],
    }


def _round(x, digits: int = 3):
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def _write_json(path: Path, obj) -> None:
    from ncssm_data.clips import atomic_path

    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def plot_residuals(path: Path, times: np.ndarray, residual: np.ndarray, names, interpolated):
    """Residuals over time: each keypoint's (thin), their median (thick), interpolated frames
    shaded; ``residual`` (T, K) metres."""
    from ncssm_policies.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.5))
    mm = residual * 1000.0
    t = times - times[0]
    for k in range(mm.shape[1]):
        ax.plot(t, mm[:, k], lw=0.5, alpha=0.35)
    with warnings.catch_warnings():  # a frame with no keypoint has no median
        warnings.simplefilter("ignore", RuntimeWarning)
        ax.plot(t, np.nanmedian(mm, axis=1), "k", lw=1.5, label="median over keypoints")
    if interpolated.any():
        ax.fill_between(t, 0, 1, where=interpolated, transform=ax.get_xaxis_transform(),
                        color="0.85", label="interpolated")
    ax.set_xlabel("time in the recording (s)")
    ax.set_ylabel("keypoint residual (mm)")
    ax.set_title(f"Fit residuals, {len(names)} keypoints")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
