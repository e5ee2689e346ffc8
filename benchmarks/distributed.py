"""Scaling out on this machine: training throughput of 2 processes against 1, and a sweep's
overhead per trial.

1. **Training.** The same config trained by ``ncssm_policies.train.train`` as 1 process (1 CPU
   device) and as 2 processes (``jax.distributed`` on localhost, 1 CPU device each, the global
   batch split between them). Throughput is segments per second over the epochs after the first
   (the first holds the compile), timed on process 0 through ``train``'s ``on_epoch`` callback.
   The sides alternate for ``--repeats`` rounds; medians are printed, then their ratio.
2. **Sweep.** ``--trials`` trials of an Optuna sweep (``ncssm_policies.sweep``) on SQLite, one
   worker; per trial, the seconds in training against the sweep's bookkeeping (popping the trial,
   sampling, attributes, epoch reports and prune checks), as medians.

    python benchmarks/distributed.py                      # built-in rodent clips
    python benchmarks/distributed.py --clips DIR --epochs 4 --iters 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def config(args, runs: Path) -> dict:
    return dict(clip_dir=args.clips, seg_len=args.seg_len, batch_size=args.batch,
                epochs=args.epochs, iters_per_epoch=args.iters, val_steps=1, d_model=args.d_model,
                ssm_size=args.d_model, n_layers=2, warmup=2, eval_episodes=0, keep_ckpts=1,
                runs_dir=str(runs))


def worker(index: int, count: int, port: int, config_path: str, run_dir: str) -> None:
    """One process of a timed run: print the epoch end times (process 0)."""
    from ncssm_policies import distributed
    from ncssm_policies.config import load_config
    from ncssm_policies.train import train

    if count > 1:
        distributed.initialize(f"localhost:{port}", count, index)
    ends: list[float] = []
    train(load_config(config_path), run_dir=run_dir, progress=False, plots=False,
          on_epoch=lambda *_: ends.append(time.perf_counter()))
    if distributed.is_main():
        print(json.dumps(ends))


def timed_run(processes: int, config_path: Path, run_dir: Path, segments: int) -> float:
    """Segments per second of one run of ``processes`` processes after its first epoch."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(i), str(processes),
                               str(port), str(config_path), str(run_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(processes)]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            sys.exit(f"a {processes}-process run failed:\n{err[-3000:]}")
    ends = json.loads(outs[0][0].strip().splitlines()[-1])
    return segments / (ends[-1] - ends[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", default=None, help="clip folder (default: the built-in rodent's)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is untimed")
    p.add_argument("--iters", type=int, default=20, help="steps per epoch")
    p.add_argument("--batch", type=int, default=16, help="global batch B")
    p.add_argument("--seg-len", type=int, default=200)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="rounds of 1 then 2 processes")
    p.add_argument("--trials", type=int, default=4, help="sweep trials")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        i, n, port, path, run = args.worker
        return worker(int(i), int(n), int(port), path, run)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is not timed)")

    from ncssm_policies.config import TrainConfig
    from ncssm_policies.sweep import run_sweep, trial_overheads
    from ncssm_policies.train import train

    tmp = Path(tempfile.mkdtemp(prefix="ncssm-bench-distributed-"))
    cfg = config(args, tmp / "runs")
    path = tmp / "config.yaml"
    path.write_text(TrainConfig(**cfg).to_json())
    segments = (args.epochs - 1) * args.iters * args.batch
    print(f"{platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
          f"; config: B {args.batch}, T {args.seg_len}, d_model {args.d_model}, "
          f"{args.epochs - 1} timed epochs of {args.iters} steps")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.repeats):
        for n in (1, 2):
            rates[n].append(timed_run(n, path, tmp / f"run-{n}-{r}", segments))
            print(f"  round {r + 1}: {n} process(es) {rates[n][-1]:8.1f} segments/s", flush=True)
    one, two = (statistics.median(rates[n]) for n in (1, 2))
    print(f"training, median of {args.repeats}: 1 process {one:.1f} segments/s, 2 processes "
          f"{two:.1f} segments/s; ratio 2 / 1: {two / one:.2f}x")

    sweep = tmp / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "bench", "config": str(path), "n_trials": args.trials, "plots": False,
        "runs_dir": str(tmp / "sweeps"), "space": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}))
    o = trial_overheads(run_sweep(sweep, train)[1])
    print(f"sweep, median of {o['trials']} trials: {o['median_train_s']:.2f} s training, "
          f"{o['median_overhead_s']:.3f} s bookkeeping per trial; ratio bookkeeping / training: "
          f"{o['median_overhead_s'] / o['median_train_s']:.4f}")


if __name__ == "__main__":
    main()
