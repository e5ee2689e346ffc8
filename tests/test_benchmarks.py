"""Every script in ``benchmarks/`` runs at a smoke size and passes its own checks.

Each runs as its own process, as a user runs it, on the session's small clip folder of the
test body (conftest's ``test_clips``) where it reads clips. Only exit codes and the scripts'
own identity / parity lines are checked, never their timings.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIPS = "{clips}"  # replaced by the session's small clip folder

# script -> (arguments, a pattern its output must match)
SMOKE = {
    "data_loading": (
        ["--clips", CLIPS, "--batches", "2", "--batch-size", "4", "--seg-len", "20",
         "--repeats", "1"],
        r"streaming, preload and seed-style loaders give identical batches[\s\S]*"
        r"streaming / seed style: [\d.]+x",
    ),
    "env_step": (
        ["--body", "test", "--steps", "5", "--clip-dir", CLIPS],
        r"ratio env / raw: [\d.]+",
    ),
    "solver_drift": (
        ["--body", "test", "--clips", "2", "--steps", "5", "--clip-dir", CLIPS],
        r"cg 5/5: .*x the arena's speed",
    ),
    "vector_env": (  # the CPU sides, then the MJX env (compiled: about 15 s on a CPU)
        ["--body", "test", "--num-envs", "2", "--steps", "5", "--repeats", "1",
         "--clip-dir", CLIPS, "--mjx", "2", "--mjx-body", "test", "--impl", "jax"],
        r"ratio +[\d.]+x[\s\S]*env only: +compile .* control steps/s[\s\S]*MuJoCo C, "
        r"TrackVectorEnv",
    ),
    "mamba_memory": (
        ["--batch", "2", "--length", "16", "--d-model", "8", "--d-state", "4", "--chunk", "8"],
        r"ours \(sequential\) .*\n[\s\S]*max relative difference (?P<diff>\S+)",
    ),
    "policy_step": (
        ["--layers", "1", "--d-model", "8", "--state-dim", "4", "--d-state", "4",
         "--in-dim", "5", "--out-dim", "3", "--window", "4", "--batches", "1", "--steps", "2",
         "--scan-steps", "2", "--repeats", "1"],
        r"mamba +1 +in scan .*x",  # the last row; each row's step/window answers are checked first
    ),
    "s5_train": (
        ["--batch", "2", "--time", "8", "--d-model", "8", "--state-dim", "4", "--layers", "1",
         "--in-dim", "5", "--out-dim", "3", "--repeats", "1", "--warmup", "0"],
        r"reference \(complex\) +[\d.]+ +[\d.]+ +[\d.]+ +1\.00x",  # after the step-0 loss check
    ),
    "segment": (
        ["--clips", "2", "--held-out", "1", "--frames", "20", "--states", "2", "--kappas",
         "1,10", "--width", "3", "--dim", "2", "--iters", "1", "--sizes", "2x20"],
        r"ratio \(before / after\): [\d.]+x(.|\n)* +2 +20 +40 +[\d.]+ +[\d.]+",
    ),
    "compile_cache": (["--parts", "train"], r"train +compile cold .* ratio +[\d.]+x"),
    "keypoint_fit": (  # built-in keypoints (no shared data); 4 frames: about 5 s
        ["--synthetic", "--frames", "4", "--repeats", "1"],
        r"IK only \(rounds=0, map offsets\) +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+\n"
        r"ratio IK only / default: [\d.]+x frames/s",
    ),
    "distributed": (  # 1 then 2 processes (jax.distributed on localhost), then a 1-trial sweep
        ["--clips", CLIPS, "--epochs", "2", "--iters", "2", "--batch", "4", "--seg-len", "20",
         "--d-model", "8", "--trials", "1", "--repeats", "1"],
        r"ratio 2 / 1: [\d.]+x[\s\S]*ratio bookkeeping / training: [\d.]+",
    ),
}
SLOW: set = set()  # none: compile_cache's smoke run compiles only the train step (vector_env's
# compiles the env scan it would time)


def test_every_benchmark_has_a_smoke_run():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts == set(SMOKE)
    assert SLOW <= scripts


def run_benchmark(script: str, args: list[str], pattern: str, clips: Path) -> re.Match:
    cmd = [sys.executable, f"benchmarks/{script}.py",
           *(str(clips) if a == CLIPS else a for a in args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-4000:]}"
    match = re.search(pattern, proc.stdout)
    assert match, f"{' '.join(cmd)}: no line matching {pattern!r} in:\n{proc.stdout[-4000:]}"
    return match


@pytest.mark.parametrize(
    "script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in sorted(SMOKE)])
def test_benchmark_smoke(script, test_clips):
    args, pattern = SMOKE[script]
    match = run_benchmark(script, args, pattern, test_clips)
    if "diff" in match.groupdict():  # mamba_memory: its small-size check of both scans
        assert float(match["diff"]) < 1e-3
