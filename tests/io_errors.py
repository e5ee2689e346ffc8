"""Real write failures for the project's writers: a full disk (ENOSPC) and a read-only folder.

    unshare --user --map-root-user --mount python tests/io_errors.py DIR

Inside its own user and mount namespaces (no privilege needed on the host), this mounts two small
tmpfs under DIR, writes the old complete outputs into both, then fills the first to the last byte
and remounts the second read-only. It then runs each writer over its old output in both and
prints one JSON object: for each (place, writer), the exception's type and message, and whether
every file is unchanged and no temp file remains.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np


def digests(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return out


def fill(root: Path) -> None:
    """Take every free byte of ``root``'s file system."""
    with open(root / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def main() -> None:
    from ncssm_data.clips import atomic_write_text, write_clip
    from ncssm_env.body import build_model
    from ncssm_policies.checkpoint import Checkpoints
    from ncssm_policies.config import TrainConfig
    from ncssm_policies.data_cli import main as data_main
    from ncssm_policies.rollout_io import render_episode, save_rollouts

    model = build_model("test")
    T = 40
    qpos = np.tile(model.qpos0, (T, 1)) + np.linspace(0, 0.2, T)[:, None]
    episode = {"qpos": qpos, "ref_qpos": qpos, "ctrl": np.zeros((T, model.nu)),
               "reward": np.ones(T), "clip": 0, "start": 0, "length": T, "cause": "end"}
    clip = {"qpos": qpos, "qvel": np.zeros((T, model.nv))}
    params = {"w": np.ones((64, 64), np.float32)}

    def writers(root: Path, version: int):
        ckpts = Checkpoints(root / "run" / "checkpoints", keep_ckpts=2)
        return {
            "clip file": lambda: write_clip(root / "clips" / "clip_0.h5",
                                            {k: v + version for k, v in clip.items()},
                                            obs_layout=None, body="test", control_dt=0.02,
                                            generator="io_errors"),
            "rollouts file": lambda: save_rollouts(root / "out" / "rollouts.h5",
                                                   [episode] * (1 + 20 * version), {}),
            "video": lambda: render_episode(root / "out" / "episode.mp4", "test",
                                            qpos + version, width=32 + 32 * version, height=32),
            "summary": lambda: atomic_write_text(root / "out" / "summary.json",
                                                 json.dumps({"v": version, "pad": "x" * 9000})),
            "checkpoint": lambda: ckpts.save("periodic", 1 + version, params, params, TrainConfig(),
                                             None, {}),
            "ncssm-data generate": lambda: data_main(
                ["generate", "--body", "test", "--clips", "2", "--frames", "30",
                 "--out", str(root / "clips")]),
        }

    base = Path(sys.argv[1])
    result = {}
    for place, how in (("full", "fill"), ("read-only", "remount,ro")):
        root = base / place
        root.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], check=True)
        for d in ("clips", "out", "run"):
            (root / d).mkdir()
        old = writers(root, 0)
        for name, write in old.items():
            if name != "ncssm-data generate":
                write()
        new = writers(root, 1)
        if how == "fill":
            fill(root)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        before = digests(root)
        for name, write in new.items():
            err_text = ""
            r, w = os.pipe()  # the CLI's stderr
            saved = os.dup(2)
            os.dup2(w, 2)
            try:
                code = write()
                outcome = {"raised": None, "returned": code if isinstance(code, int) else None}
            except Exception as e:  # noqa: BLE001 - what the writer raised is the result
                outcome = {"raised": type(e).__name__, "message": str(e),
                           "mro": [c.__name__ for c in type(e).__mro__],
                           "traceback": traceback.format_exc()[-1500:]}
            finally:
                os.dup2(saved, 2)
                os.close(w)
                err_text = os.read(r, 1 << 16).decode()
                os.close(r)
            after = digests(root)
            outcome.update(stderr=err_text, unchanged=after == before,
                           changed=sorted(k for k in set(before) | set(after)
                                          if before.get(k) != after.get(k)))
            result[f"{place}/{name}"] = outcome
    print(json.dumps(result))


if __name__ == "__main__":
    main()
