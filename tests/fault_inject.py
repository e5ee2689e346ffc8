"""Fault injection for the project's writers: SIGKILL at chosen points, then check the folder.

    python tests/fault_inject.py WORKDIR WRITER [WRITER ...] [--points N] [--seed S]

prints a JSON list, one object per writer (what ``tests/test_faults.py`` asserts on). For each
WRITER (see ``WRITERS``)
it prepares WORKDIR with the *old* complete output, runs the writer once to completion on a copy
to learn the *new* complete output, and counts the writer's I/O events: every call into the
modules that write (h5py, os, io, shutil, pathlib, imageio, orbax, ncssm_data, ...), Python
functions and C builtins alike, in every thread. Then, for each of N kill points k drawn
(seeded, one per stratum of the event count), a forked child runs the writer on WORKDIR and
SIGKILLs itself at its k-th I/O event. The parent keeps a copy of the folder as the kill left
it and reruns the writer to the end in another child. After the last fork it records, for each
kill point, every visible file's digest after the kill (the old one, the new one, or a tear),
the temp files left, and the folder after the rerun.

Children are forked from this process, which imports the writers' modules but never starts a
JAX backend (a forked JAX is unsafe); each child starts its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np

IO_ROOTS = {"h5py", "posix", "io", "_io", "shutil", "pathlib", "tempfile", "imageio",
            "imageio_ffmpeg", "orbax", "etils", "ncssm_data", "filelock", "json", "zipfile"}
SKIP = {".ncssm.lock", ".ncssm.lock.json"}


# ---------------------------------------------------------------------------- children


def _module_of(frame, event, arg) -> str:
    if event == "call":
        return frame.f_globals.get("__name__") or ""
    mod = getattr(arg, "__module__", None)
    if mod is None:
        owner = getattr(arg, "__self__", None)
        mod = type(owner).__module__ if owner is not None else ""
    return mod or ""


def _in_child(fn, kill_at: int | None = None) -> dict:
    """Run ``fn()`` in a forked child, SIGKILLed at its ``kill_at``-th I/O event (None: never).
    Returns {"killed": bool, "events": n, "result": fn's JSON-able result or None}."""
    from jax._src import xla_bridge

    assert not xla_bridge._backends, "no fork after JAX has started in this process"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        count = 0

        def profile(frame, event, arg):
            nonlocal count
            if event in ("call", "c_call") and \
                    _module_of(frame, event, arg).split(".")[0] in IO_ROOTS:
                count += 1
                if kill_at is not None and count >= kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        code = 0
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # the writers' output and progress bars
            os.dup2(devnull, 2)
            threading.setprofile(profile)
            sys.setprofile(profile)
            result = fn()
            sys.setprofile(None)
            threading.setprofile(None)
            os.write(w, json.dumps({"events": count, "result": result}).encode())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            sys.setprofile(None)
            os.write(w, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
            code = 1
        finally:
            os.close(w)
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    out = json.loads(b"".join(chunks) or b"{}")
    if "error" in out:
        raise RuntimeError(f"the child failed: {out['error']}")
    return {"killed": killed, "events": out.get("events"), "result": out.get("result")}


# ---------------------------------------------------------------------------- folder state


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def files_state(root: Path) -> tuple[dict[str, str], list[str]]:
    """({relative path: digest} of the visible files under ``root``, [temp files and folders])."""
    from ncssm_data.locks import is_temp

    state, temps = {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames):
            if is_temp(name):
                temps.append(os.path.relpath(os.path.join(dirpath, name), root))
                dirnames.remove(name)
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if name in SKIP:
                continue
            if is_temp(name) or name.startswith("."):
                temps.append(rel)
            else:
                state[rel] = sha(Path(dirpath) / name)
    return state, sorted(temps)


# ---------------------------------------------------------------------------- writers
# Each writer: prepare(work) makes the old complete output, run(work) is the command, and
# state(work) returns (visible {name: digest}, temps). prepare and run run in forked children;
# state runs here after the last fork.


class Generate:
    """``ncssm-data generate`` (the built-in behaviour program rolled out in the test body)."""

    argv = ["generate", "--body", "test", "--clips", "2", "--frames", "24", "--out"]

    def prepare(self, work: Path) -> None:
        from ncssm_policies.data_cli import main

        assert main([*self.argv, str(work / "clips"), "--seed", "1"]) == 0

    def run(self, work: Path):
        from ncssm_policies.data_cli import main

        code = main([*self.argv, str(work / "clips"), "--seed", "0"])
        assert code == 0, code

    def state(self, work: Path):
        return files_state(work)


class Labels:
    """The AR-HMM labels ``ncssm-data segment`` writes into every clip of a folder (with its
    lock, and the attrs that let the same command finish an interrupted write)."""

    def prepare(self, work: Path) -> None:
        from ncssm_env.synthetic import generate

        generate(work / "clips", body="test", n_clips=3, n_frames=24, seed=0, workers=1,
                 progress=False)

    def run(self, work: Path):
        from ncssm_data.clips import ClipStore
        from ncssm_data.locks import writing
        from ncssm_policies.arhmm import write_labels

        folder = work / "clips"
        with writing(folder):
            with ClipStore(folder) as store:
                paths, lengths = store.paths, store.lengths
            labels = [np.arange(n) % 3 for n in lengths]
            write_labels(paths, labels, "syllables_arhmm",
                         {"model": "arhmm.npz", "run": "0123456789abcdef", "num_states": 3})

    def state(self, work: Path):
        return files_state(work)


class Rollouts:
    """``ncssm-rollout``'s outputs: the episodes file, the video and the summary, written over
    an earlier rollout's."""

    def _write(self, out: Path, offset: float) -> None:
        from ncssm_data.clips import atomic_write_text
        from ncssm_data.locks import writing
        from ncssm_env.body import build_model
        from ncssm_policies.rollout_io import render_episode, save_rollouts

        model = build_model("test")
        T = 12
        qpos = np.tile(model.qpos0, (T, 1))
        qpos[:, 0] += offset + np.linspace(0, 0.1, T)
        ep = {"qpos": qpos, "ref_qpos": qpos[::-1].copy(), "ctrl": np.zeros((T, model.nu)),
              "reward": np.full(T, offset), "clip": 0, "start": 0, "length": T, "cause": "end"}
        with writing(out):
            save_rollouts(out / "rollouts.h5", [ep, ep], {"offset": offset})
            render_episode(out / "episode.mp4", "test", ep["qpos"], ep["ref_qpos"], width=48,
                           height=32)
            atomic_write_text(out / "summary.json", json.dumps({"offset": offset}))

    def prepare(self, work: Path) -> None:
        self._write(work / "rollout", 1.0)

    def run(self, work: Path):
        self._write(work / "rollout", 0.0)

    def state(self, work: Path):
        return files_state(work)


class Checkpoints:
    """``ncssm-train``'s checkpoints: a periodic one at step 3 beside steps 1 and 2 (keep 2,
    so step 1 goes), and a new best one. A checkpoint's digest is that of what it restores."""

    def _save(self, work: Path, steps) -> None:
        from ncssm_data.locks import writing
        from ncssm_policies.checkpoint import Checkpoints as Ckpts
        from ncssm_policies.config import TrainConfig

        with writing(work / "run"):
            m = Ckpts(work / "run" / "checkpoints", keep_ckpts=2)
            try:
                for s in steps:
                    tree = {"w": np.full((4, 3), s, np.float32), "b": np.arange(3.0) * s}
                    train = {"count": np.int32(s), "mu": {"w": np.full((4, 3), -s, np.float32)}}
                    for kind in ("periodic", "best"):
                        m.save(kind, s, tree, train, TrainConfig(), None, {"step": s})
            finally:
                m.close()

    def prepare(self, work: Path) -> None:
        self._save(work, [1, 2])

    def run(self, work: Path):
        self._save(work, [3])

    def _restored(self, work: Path):
        import orbax.checkpoint as ocp

        from ncssm_data.locks import is_temp
        from ncssm_policies.checkpoint import KINDS

        _, temps = files_state(work)
        state = {}
        for kind in KINDS:
            folder = work / "run" / "checkpoints" / kind
            if not folder.is_dir():
                continue
            for step_dir in sorted(p for p in folder.iterdir()
                                   if not p.name.startswith(".") and not is_temp(p.name)):
                try:
                    with ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(
                            create=False, read_only=True)) as m:
                        got = m.restore(int(step_dir.name), args=ocp.args.Composite(
                            params=ocp.args.StandardRestore(), train=ocp.args.StandardRestore(),
                            meta=ocp.args.JsonRestore()))
                    leaves = [np.asarray(x) for x in (got["params"]["w"], got["params"]["b"],
                                                      got["train"]["count"],
                                                      got["train"]["mu"]["w"])]
                    digest = hashlib.sha256(b"".join(x.tobytes() for x in leaves)
                                            + json.dumps(got["meta"]).encode()).hexdigest()[:16]
                except Exception as e:  # noqa: BLE001 - a torn checkpoint is what we look for
                    digest = f"unreadable: {type(e).__name__}"
                state[f"{kind}/{step_dir.name}"] = digest
        return state, temps

    def state(self, work: Path):
        return self._restored(work)


class Dagger:
    """A DAgger round's data appended to the run folder's ``dagger_clips/`` (its rollouts as
    clips, then the round's commit to ``rounds.json``) over a committed first round; as in
    ``ncssm-train``, the rerun (a resume) first drops what no committed round wrote."""

    def _round(self, work: Path, k: int) -> None:
        from ncssm_data.clips import ClipStore
        from ncssm_data.locks import writing
        from ncssm_env.dart import write_rollouts
        from ncssm_policies.dagger import Aggregate

        with writing(work / "run"):
            agg = Aggregate(work / "run", work / "clips")
            agg.prepare(done_epochs=k - 1)
            with ClipStore(agg.dir) as store:
                n, clip = len(store), store.read_clip(0)
            rollouts = [{key: v[:16] + (0.01 * (k + j) if v.dtype.kind == "f" else 0)
                         for key, v in clip.items()} for j in range(3)]
            counts = write_rollouts(agg.dir, rollouts, [0, 1, 0], f"DAgger round {k}",
                                    min_len=8, start=n)
            agg.commit({"round": k, "epoch": k, "step": 10 * k, "frames": counts["frames"],
                        "clips": [p.name for p in counts["paths"]]})

    def prepare(self, work: Path) -> None:
        from ncssm_env.synthetic import generate

        generate(work / "clips", body="test", n_clips=2, n_frames=24, seed=0, workers=1,
                 progress=False)
        self._round(work, 1)

    def run(self, work: Path):
        self._round(work, 2)

    def state(self, work: Path):
        return files_state(work)


class Torn:
    """A writer that is *not* atomic (the file written in place, in pieces): the harness's own
    check, which must catch its tears."""

    def prepare(self, work: Path) -> None:
        (work / "out").mkdir()
        (work / "out" / "data.bin").write_bytes(b"old" * 1000)

    def run(self, work: Path):
        with open(work / "out" / "data.bin", "wb") as f:
            for _ in range(30):
                f.write(b"new" * 100)
                f.flush()

    def state(self, work: Path):
        return files_state(work)


WRITERS = {"generate": Generate, "labels": Labels, "rollouts": Rollouts,
           "checkpoints": Checkpoints, "dagger": Dagger, "torn": Torn}


# ---------------------------------------------------------------------------- the campaign


PRELOAD = ["ncssm_policies.data_cli", "ncssm_policies.arhmm", "ncssm_policies.checkpoint",
           "ncssm_policies.dagger", "ncssm_env.dart",
           "ncssm_policies.rollout_io", "ncssm_env.synthetic", "ncssm_env.body"]


def campaign(name: str, work: Path, points: int, seed: int) -> dict:
    import importlib

    for module in PRELOAD:  # once here, not in every child (no JAX backend starts)
        importlib.import_module(module)
    assert threading.active_count() == 1, "fork needs a process with one thread"
    writer = WRITERS[name]()
    work.mkdir(parents=True, exist_ok=True)
    # Every run happens in the one folder ``trial`` (moved aside after), so that what a writer
    # records of its own paths (a manifest's source, say) is the same in every run.
    base, fresh, trial = work / "base", work / "fresh", work / "trial"
    trial.mkdir()
    _in_child(lambda: writer.prepare(trial))
    trial.rename(base)
    shutil.copytree(base, trial, symlinks=True)
    total = _in_child(lambda: writer.run(trial))["events"]
    trial.rename(fresh)
    rng = np.random.default_rng(seed)
    # One point in each of ``points`` equal strata of the events (all distinct).
    kill_points = [int(rng.integers(total * i // points, total * (i + 1) // points)) + 1
                   for i in range(points)]
    runs = []
    for k in kill_points:  # every fork first: the checks below may start JAX in this process
        rerun_dir, killed = work / f"k{k}", work / f"k{k}-killed"
        shutil.copytree(base, trial, symlinks=True)
        done = _in_child(lambda: writer.run(trial), kill_at=k)
        shutil.copytree(trial, killed, symlinks=True)  # the folder as the kill left it
        rerun = _in_child(lambda: writer.run(trial))
        trial.rename(rerun_dir)
        runs.append((k, done["killed"], rerun["killed"], killed, rerun_dir))
    old, _ = writer.state(base)
    new, new_temps = writer.state(fresh)
    records = []
    for k, was_killed, rerun_killed, killed, trial in runs:
        after_kill, temps = writer.state(killed)
        final, final_temps = writer.state(trial)
        torn = {f: d for f, d in after_kill.items() if d not in (old.get(f), new.get(f))}
        records.append({
            "kill_at": k, "killed": was_killed, "torn": torn,
            "new_files": sorted(f for f in after_kill if after_kill[f] == new.get(f)
                                and old.get(f) != new.get(f)),
            "temps_after_kill": temps, "rerun_killed": rerun_killed,
            "finished": final == new, "temps_after_rerun": final_temps})
    return {"writer": name, "events": total, "old": old, "new": new, "new_temps": new_temps,
            "points": records}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("work", type=Path, help="an empty folder to work in")
    p.add_argument("writers", nargs="+", choices=sorted(WRITERS))
    p.add_argument("--points", type=int, default=20, help="kill points per writer")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    # The checkpoint checks start JAX here, after which this process must not fork: last.
    writers = sorted(a.writers, key=lambda w: w == "checkpoints")
    print(json.dumps([campaign(w, a.work / w, a.points, a.seed) for w in writers]))


if __name__ == "__main__":
    main()
