"""Nothing lost: every writer SIGKILLed at many points leaves each visible file old-and-complete
or new-and-complete, and running it again finishes the job with no temp file left.

The kills come from ``tests/fault_inject.py`` (one process, a forked child per kill point, each
killed at its k-th I/O event). The ``torn`` writer writes in place, as a writer must not: the
same checks must catch it, or they prove nothing.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WRITERS = ["generate", "labels", "rollouts", "dagger", "checkpoints"]
POINTS = 5  # kill points per writer in the default run; 20 in the slow run
SLOW_POINTS = 20


def run_campaign(work: Path, writers: list[str], points: int) -> dict:
    """Kill each writer at ``points`` points. In RAM (/dev/shm) where there is room (the slow
    run keeps ~50 MB of copies): a SIGKILL does the same there, and fsync costs nothing."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 512 << 20:
        work = Path(tempfile.mkdtemp(prefix="ncssm-faults-", dir="/dev/shm"))
    try:
        return _run(work, writers, points)
    finally:
        if str(work).startswith("/dev/shm/"):
            shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, writers: list[str], points: int) -> dict:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(HERE / "fault_inject.py"), str(work), *writers,
                           "--points", str(points)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {c["writer"]: c for c in json.loads(proc.stdout)}


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory):
    return run_campaign(tmp_path_factory.mktemp("faults"), ["torn", *WRITERS], POINTS)


def check_writer(c: dict, points: int) -> None:
    P = c["points"]
    assert len({p["kill_at"] for p in P}) == points and all(p["killed"] for p in P)
    assert c["new_temps"] == [] and c["old"] != c["new"]
    for p in P:
        assert p["torn"] == {}, f"kill at event {p['kill_at']} of {c['events']}: {p}"
        assert p["finished"] and p["temps_after_rerun"] == [], p
        assert not p["rerun_killed"]


@pytest.mark.parametrize("writer", WRITERS)
def test_a_killed_writer_leaves_old_or_new_files_and_a_rerun_finishes(campaigns, writer):
    check_writer(campaigns[writer], POINTS)


@pytest.mark.slow  # the same writers and checks as the default run, at 20 kill points each
def test_every_writer_at_twenty_kill_points(tmp_path):
    found = run_campaign(tmp_path, WRITERS, SLOW_POINTS)
    for writer in WRITERS:
        c = found[writer]
        check_writer(c, SLOW_POINTS)
        # The kills landed mid-write: some left a temp file, some a mix of new and old files.
        assert any(p["temps_after_kill"] for p in c["points"]), writer
        if len(c["new"]) > 1:
            assert any(p["new_files"] and set(p["new_files"]) != set(c["new"])
                       for p in c["points"]), writer


def test_the_harness_catches_a_writer_that_writes_in_place(campaigns):
    torn = campaigns["torn"]
    assert sum(bool(p["torn"]) for p in torn["points"]) >= 2
    assert all(p["finished"] for p in torn["points"])


# ---------------------------------------------------------------------------------------------
# Locks: one writer per folder, and a lock that dies with its holder
# ---------------------------------------------------------------------------------------------

HOLD = ("import sys, time; from ncssm_data.locks import writing\n"
        "with writing(sys.argv[1], what=sys.argv[2]):\n"
        "    print('held', flush=True); time.sleep(600)\n")


@pytest.fixture()
def holder():
    """Start a process holding the write lock of a folder as ``what``; SIGKILLed at the end."""
    procs = []

    def start(folder: Path, what: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), what],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline() == "held\n"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_ncssm_train_on_a_run_folder_is_refused_naming_the_first(
        holder, tmp_path, test_clips, capsys):
    from ncssm_data.locks import writing
    from ncssm_policies.train import main

    run = tmp_path / "run"
    first = holder(run, "ncssm-train --run-dir run")
    before = sorted(run.iterdir())
    assert main(["--run-dir", str(run), "--override", f"clip_dir={test_clips}", "epochs=1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ncssm-train: error: {run.resolve()} is in "
                                                   f"use by ncssm-train --run-dir run (pid "
                                                   f"{first.pid} on ")
    assert sorted(run.iterdir()) == before  # nothing written
    first.kill()  # SIGKILL: the kernel drops the lock with its holder
    first.wait()
    with writing(run):
        pass


@pytest.mark.parametrize("command", ["import", "segment"])
def test_a_second_writer_to_a_clip_folder_is_refused(holder, tmp_path, test_clips, capsys,
                                                     command):
    import shutil

    import numpy as np

    from ncssm_policies.data_cli import main

    clips = tmp_path / "clips"
    shutil.copytree(test_clips, clips)
    first = holder(clips, "ncssm-data segment")
    before = {p.name: p.read_bytes() for p in clips.glob("*.h5")}
    if command == "import":
        np.savez(tmp_path / "q.npz", qpos=np.zeros((10, 8)))
        argv = ["import", "--qpos", str(tmp_path / "q.npz"), "--body", "test", "--out",
                str(clips), "--overwrite"]
    else:
        argv = ["segment", "--override", f"clip_dir={clips}", f"out_dir={tmp_path / 'seg'}",
                "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"ncssm-data: error: {clips.resolve()} is in use by ncssm-data segment "
                   f"(pid {first.pid} on {err.split(' on ')[1].split(',')[0]}, since "
                   f"{err.split('since ')[1].split(')')[0]}); wait for it to finish or use "
                   f"another folder.\n")
    assert {p.name: p.read_bytes() for p in clips.glob("*.h5")} == before


# ---------------------------------------------------------------------------------------------
# I/O errors: a full disk and a read-only folder, for real (tmpfs in a user namespace)
# ---------------------------------------------------------------------------------------------


def test_a_full_disk_and_a_read_only_folder_get_one_sentence_and_change_nothing(tmp_path):
    import shutil as sh

    if sh.which("unshare") is None or subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"]).returncode != 0:
        pytest.skip("this machine allows no user namespace (unshare), so no private tmpfs")
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable,
                           str(HERE / "io_errors.py"), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    writers = ["clip file", "rollouts file", "video", "summary", "checkpoint"]
    why = {"full": "the disk is full (errno 28)",
           "read-only": "the file system is read-only (errno 30)"}
    assert len(found) == 12
    for place in ("full", "read-only"):
        for writer in writers:
            got = found[f"{place}/{writer}"]
            assert got["raised"] == "WriteError" and "OSError" in got["mro"], got
            assert got["message"].startswith("Could not write the ") and \
                f"{tmp_path}/{place}/" in got["message"] and why[place] in got["message"], got
            assert "\n" not in got["message"] and got["stderr"] == "", got
            assert got["unchanged"], got  # nothing partial, no temp file, the old file intact
        cli = found[f"{place}/ncssm-data generate"]
        assert cli["returned"] == 2 and cli["unchanged"], cli
        assert cli["stderr"] == (f"ncssm-data: error: Could not write the folder "
                                 f"{tmp_path}/{place}/clips: {why[place]}; nothing of it was "
                                 f"written and what was there is unchanged.\n")