"""Several processes, one run: ``jax.distributed`` on localhost with CPU collectives (gloo)."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from ncssm_policies.checkpoint import load_policy
from ncssm_policies.config import TrainConfig
from ncssm_policies.train import main, train

REPO = Path(__file__).resolve().parents[1]

# Dropout and input noise on: both must come out the same however the batch is split.
CFG = dict(seg_len=24, batch_size=4, epochs=2, iters_per_epoch=3, val_steps=1, d_model=16,
           ssm_size=8, blocks=2, n_layers=1, warmup=2, dropout=0.1, noise_std=0.05,
           eval_episodes=0, keep_ckpts=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(config: Path, run_dir: Path, devices: int = 1, process: tuple[int, int] | None = None,
           port: int | None = None) -> subprocess.Popen:
    """``ncssm-train`` as a subprocess on ``devices`` host devices, as process ``(i, n)``."""
    cmd = [sys.executable, "-m", "ncssm_policies.train", "--config", str(config), "--run-dir",
           str(run_dir), "--no-progress"]
    if process is not None:
        cmd += ["--coordinator", f"localhost:{port}", "--process-id", str(process[0]),
                "--num-processes", str(process[1])]
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def assert_same(a, b):
    for x, y in zip(leaves(a.params), leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_two_processes_match_two_devices_and_one_and_resume_on_one(test_clips, tmp_path):
    assert jax.process_count() == 1 and jax.device_count() == 1  # this process: 1 x 1
    cfg = TrainConfig(clip_dir=str(test_clips), runs_dir=str(tmp_path), **CFG)
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.to_json())  # JSON is YAML
    port = free_port()
    procs = {"2 devices": [launch(config, tmp_path / "d2", devices=2)],
             "2 processes": [launch(config, tmp_path / "p2", process=(i, 2), port=port)
                             for i in range(2)]}
    one = train(cfg, run_dir=tmp_path / "d1", progress=False, plots=False)
    results = {k: [finish(p) for p in ps] for k, ps in procs.items()}
    for name, outs in results.items():
        for code, _, err in outs:
            assert code == 0, f"{name}: {err[-3000:]}"
    (_, out0, _), (_, out1, _) = results["2 processes"]
    assert "ncssm-train quickstart" in out0 and "ncssm-train" not in out1  # process 0 reports
    p2 = tmp_path / "p2"
    assert (p2 / "metrics.jsonl").is_file() and (p2 / "summary.json").is_file()

    single = load_policy(one.run_dir, "latest")
    for run in ("d2", "p2"):
        other = load_policy(tmp_path / run, "latest")
        assert other.step == single.step == 6
        assert_same(other, single)

    # A run saved by 2 processes resumes on 1: drop its last checkpoint, train on from step 3.
    resumed = tmp_path / "resumed"
    shutil.copytree(p2, resumed)
    for kind in ("periodic", "best"):
        shutil.rmtree(resumed / "checkpoints" / kind / "6", ignore_errors=True)
    again = train(cfg, run_dir=resumed, progress=False, plots=False)
    assert again.resumed_from == 3
    assert_same(load_policy(resumed, "latest"), single)


FAKE_SRUN = """#!/bin/bash
# srun of a 2-task step on this one node: what SLURM sets for each task, then the command.
pids=()
for i in 0 1; do
  SLURM_STEP_NODELIST=localhost SLURM_NTASKS=2 SLURM_PROCID=$i SLURM_LOCALID=0 "$@" &
  pids+=($!)
done
code=0
for p in "${pids[@]}"; do wait "$p" || code=$?; done
exit $code
"""


def test_slurm_script_joins_two_tasks_and_refuses_a_batch_they_cannot_split(test_clips,
                                                                             tmp_path):
    """slurm/train.sbatch under a fake 2-task srun: jax.distributed reads SLURM's variables,
    the 2 processes join, and each refuses batch_size 3 in one sentence."""
    cfg = TrainConfig(clip_dir=str(test_clips), runs_dir=str(tmp_path), **{**CFG, "batch_size": 3})
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.to_json())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    job = next(j for j in range(1000, 5096) if _port_free(j % 4096 + 61440))  # jax's port rule
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NCSSM_VENV": sys.prefix,
           "SLURM_JOB_ID": str(job), "RUN_DIR": str(tmp_path / "run"), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch"), "--config", str(config)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("ncssm-train")]
    assert lines == 2 * [
        "ncssm-train: error: Config key 'batch_size' is 3, which the 2 devices of the 2 "
        "processes cannot split evenly; use a multiple of 2."], out.stderr[-3000:]
    assert not (tmp_path / "run").exists()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("localhost", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("flags, slurm, message", [
    (["--num-processes", "2", "--process-id", "0"], None,
     "--coordinator, --num-processes and --process-id go together"),
    (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"], None,
     "--process-id is 2; expected 0 to 1 for --num-processes 2."),
    (["--coordinator", "localhost:1", "--num-processes", "3", "--process-id", "0"], 2,
     "--num-processes is 3, but this SLURM step runs 2 tasks (SLURM_NTASKS); they must match."),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], None,
     "--coordinator is 'localhost'; expected HOST:PORT."),
])
def test_bad_process_flags_get_one_sentence(flags, slurm, message, monkeypatch, capsys):
    if slurm:
        for key, value in {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node1",
                           "SLURM_NTASKS": str(slurm), "SLURM_PROCID": "0",
                           "SLURM_LOCALID": "0"}.items():
            monkeypatch.setenv(key, value)
    assert main(flags + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
