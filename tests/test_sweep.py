"""ncssm-train --sweep: Optuna sweeps on several workers, a worker killed mid-trial, the end
report and its best config, submitit's job array (local executor), and bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ncssm_policies import sweep
from ncssm_policies.config import ConfigError, load_config
from ncssm_policies.train import main, train

REPO = Path(__file__).resolve().parents[1]
# A tiny model: every trial compiles the same shapes, so JAX's persistent cache serves them all.
BASE = dict(seg_len=30, batch_size=4, epochs=2, iters_per_epoch=3, val_steps=1, d_model=16,
            ssm_size=8, blocks=2, n_layers=1, warmup=2, eval_episodes=0)
# Cheap hyper-parameters only (no shape changes).
SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "dropout": {"type": "float", "low": 0.0, "high": 0.3},
         "weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}


def write_sweep(folder: Path, clip_dir, base=None, **keys) -> Path:
    """A base config and a sweep YAML over it in ``folder``; the sweep's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(
        {**BASE, "clip_dir": str(clip_dir), **(base or {})}))
    spec = {"name": "sw", "config": "base.yaml", "runs_dir": str(folder / "runs"), "plots": False,
            "space": SPACE, **keys}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def study_of(path):
    spec = sweep.load_spec(path)
    return spec, sweep.open_study(spec, sweep.storage_url(spec), create=False)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def six(test_clips, tmp_path_factory):
    """A finished 6-trial sweep on 2 worker processes: (sweep path, spec, study)."""
    path = write_sweep(tmp_path_factory.mktemp("six"), test_clips, n_trials=6)
    assert main(["--sweep", str(path), "--workers", "2"]) == 0
    return (path, *study_of(path))


def test_two_workers_run_exactly_n_trials(six):
    path, spec, study = six
    trials = study.get_trials()
    assert len(trials) == 6 and len({t.number for t in trials}) == 6
    assert set(states(study)) <= {"COMPLETE", "PRUNED"}
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert run_dirs == {str(spec.folder / "trials" / str(n)) for n in range(6)}
    assert all((Path(d) / "metrics.jsonl").is_file() for d in run_dirs)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6  # no two drew the same
    for name in ("trials.md", "best.yaml", "optimization_history.png", "param_importances.png"):
        assert (spec.folder / name).is_file(), name
    table = (spec.folder / "trials.md").read_text()
    assert all(f"| {n} |" in table for n in range(6))
    assert all(t.user_attrs["train_s"] > 0 and t.user_attrs["overhead_s"] >= 0 for t in trials)
    assert sweep.trial_overheads(study)["trials"] == 6


def test_report_alone_runs_nothing(six, capsys):
    path, spec, study = six
    (spec.folder / "trials.md").unlink()
    assert main(["--sweep", str(path), "--report"]) == 0
    out = capsys.readouterr().out
    assert "Best: trial" in out and (spec.folder / "trials.md").is_file()
    assert len(study.get_trials()) == 6


def test_best_config_reloads_and_trains(six, tmp_path):
    path, spec, study = six
    cfg = load_config(spec.folder / "best.yaml")
    best = min((t for t in study.get_trials() if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert cfg.name == "sw-best" and cfg.learning_rate == best.params["learning_rate"]
    assert cfg.dropout == best.params["dropout"] and cfg.d_model == 16
    result = train(cfg.replace(epochs=1, iters_per_epoch=2), run_dir=tmp_path / "best",
                   progress=False, plots=False)
    assert result.step == 2 and np.isfinite(result.val_loss)


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def test_a_killed_worker_leaves_the_study_consistent(test_clips, tmp_path):
    path = write_sweep(tmp_path, test_clips, n_trials=3, heartbeat_s=1, pruner="none",
                       base={"epochs": 3})
    launcher = subprocess.Popen([sys.executable, "-m", "ncssm_policies.train", "--sweep",
                                 str(path), "--workers", "2"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        spec, victim, pid = None, None, None
        deadline = time.monotonic() + 90
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.5)
            if not (tmp_path / "runs" / "sw" / "study.db").is_file():
                continue
            try:
                spec, study = study_of(path)
            except ConfigError:  # the study is not made yet
                continue
            for t in study.get_trials(deepcopy=False):
                if (t.state.name == "RUNNING" and "worker" in t.user_attrs
                        and (Path(t.user_attrs["run_dir"]) / "metrics.jsonl").is_file()):
                    victim, pid = t.number, int(t.user_attrs["worker"].split(":")[1].split()[0])
                    break
        if victim is None:
            launcher.kill()
            trials = [] if spec is None else [(t.number, t.state.name, t.user_attrs.get("error"))
                                              for t in study.get_trials(deepcopy=False)]
            pytest.fail(f"no trial was seen training; trials {trials}; the launcher printed:\n"
                        f"{launcher.communicate()[0]}")
        assert pid in _children(launcher.pid)
        os.kill(pid, signal.SIGKILL)
        out, _ = launcher.communicate(timeout=150)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, out
    assert f"(pid {pid}) killed by SIGKILL" in out
    spec, study = study_of(path)
    trials = {t.number: t for t in study.get_trials()}
    assert len(trials) == 3
    assert trials[victim].state.name == "FAIL"
    assert all(t.state.name in ("COMPLETE", "PRUNED") for n, t in trials.items() if n != victim)
    assert "RUNNING" not in out.split("Sweep sw: 3 trials\n")[-1]  # the final table


def test_submitit_local_job_array(tmp_path):
    # Each trial fails at once (no clips there), so this is the job array's plumbing alone.
    empty = tmp_path / "no_clips"
    empty.mkdir()
    path = write_sweep(tmp_path, empty, n_trials=2, slurm={"cluster": "local", "timeout_min": 5})
    proc = subprocess.run([sys.executable, "-m", "ncssm_policies.train", "--sweep", str(path),
                           "--workers", "2", "--slurm"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Submitted 2 local worker job(s)" in proc.stdout
    spec, study = study_of(path)
    assert states(study) == ["FAIL", "FAIL"]
    assert all(t.user_attrs["error"] for t in study.get_trials())
    assert "No trial completed" in proc.stdout


def test_slurm_needs_sbatch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch there
    path = write_sweep(tmp_path, tmp_path, n_trials=1)
    assert main(["--sweep", str(path), "--slurm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ncssm-train: error: --slurm submits with sbatch, which is not on PATH")
    assert err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# The search space
# ----------------------------------------------------------------------------------------------


def test_conditional_keys_follow_their_condition():
    import optuna

    spec_space = {"model_type": {"type": "categorical", "choices": ["s5", "mamba"]},
                  "ssm_lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                             "when": {"model_type": "s5"}},
                  "d_state": {"type": "int", "low": 4, "high": 16, "step": 4,
                              "when": {"model_type": ["mamba"]}}}
    from ncssm_policies.config import TrainConfig

    space = sweep.parse_space(spec_space, TrainConfig(), "Sweep x.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        params = sweep.sample(study.ask(), space)
        expected = {"model_type", "ssm_lr" if params["model_type"] == "s5" else "d_state"}
        assert set(params) == expected
        seen.add(params["model_type"])
    assert seen == {"s5", "mamba"}


# ----------------------------------------------------------------------------------------------
# Bad input: one sentence each
# ----------------------------------------------------------------------------------------------


def bad_sweep(tmp_path, **keys) -> Path:
    spec = {"name": "bad", "runs_dir": str(tmp_path / "runs"), "space": SPACE, **keys}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def one_sentence(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("ncssm-train: error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    return captured.err.removeprefix("ncssm-train: error: ").strip()


def test_unknown_keys_are_named(tmp_path, capsys):
    path = bad_sweep(tmp_path, space={"learnig_rate": SPACE["learning_rate"]})
    err = one_sentence(capsys, ["--sweep", str(path), "--report"])
    assert "space: unknown key 'learnig_rate'; did you mean 'learning_rate'?" in err
    path = bad_sweep(tmp_path, n_trails=3)
    err = one_sentence(capsys, ["--sweep", str(path)])
    assert f"Sweep {path}: unknown key 'n_trails'; did you mean 'n_trials'?" == err


F = {"type": "float", "low": 0.0001, "high": 0.01}
C = {"type": "categorical", "choices": ["s5", "mamba"]}


@pytest.mark.parametrize("space, expected", [
    ({"learning_rate": {**F, "type": "normal"}},
     "space key 'learning_rate' has type 'normal'; expected one of ['float', 'int', 'categorical']"),
    ({"learning_rate": {**F, "low": 0.1}}, "space key 'learning_rate' needs low < high"),
    ({"learning_rate": {**F, "low": 0.0, "log": True}},
     "space key 'learning_rate' has log: true, which needs low > 0"),
    ({"learning_rate": {"type": "float", "low": 0.1}},
     "space key 'learning_rate' (type float) lacks 'high'"),
    ({"learning_rate": {**F, "choices": [1]}},
     "space key 'learning_rate' (type float) has the unknown field 'choices'"),
    ({"n_layers": {"type": "int", "low": 1.5, "high": 3}},
     "space key 'n_layers' (type int) needs integer low, high"),
    ({"model_type": {**C, "choices": []}}, "space key 'model_type': 'choices' must be a non-empty"),
    ({"ssm_lr": {**F, "when": {"model_type": "s5"}}},
     "space key 'ssm_lr': 'when' names 'model_type', which is not a space key defined before it"),
    ({"model_type": C, "ssm_lr": {**F, "when": {"model_type": "s4"}}},
     "space key 'ssm_lr': 'when' asks for model_type='s4', which is not among its choices"),
    ({"dropout": {"type": "float", "low": 0.0, "high": 1.0}},
     "space key 'dropout' can take 1.0, which the training config refuses"),
    ({"name": C}, "space key 'name' is set by the sweep itself"),
])
def test_bad_distributions_are_one_sentence(tmp_path, capsys, space, expected):
    err = one_sentence(capsys, ["--sweep", str(bad_sweep(tmp_path, space=space))])
    assert expected in err and err.startswith(f"Sweep {tmp_path / 'sweep.yaml'}:")
    assert not (tmp_path / "runs").exists()  # refused before any study or trial


@pytest.mark.parametrize("url, cause", [
    ("postgresql://nobody@127.0.0.1:1/x", ""),
    ("sqlite:////proc/no/such/place/study.db", "unable to open database file"),
    ("nosuchdialect://x/y", "nosuchdialect"),
])
def test_storage_that_cannot_be_opened(tmp_path, capsys, url, cause):
    err = one_sentence(capsys, ["--sweep", str(bad_sweep(tmp_path)), "--storage", url])
    assert err.startswith(f"Sweep storage '{url}' cannot be opened: ") and cause in err
    assert err.endswith(".")


def test_one_database_one_study(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = sweep.load_spec(bad_sweep(tmp_path / "a", name="first"), url)
    sweep.open_study(first, url)
    err = one_sentence(capsys, ["--sweep", str(bad_sweep(tmp_path / "b", name="second")),
                                "--storage", url])
    assert err.startswith(f"Sweep storage '{url}' already holds study 'first', so it cannot "
                          f"also take study 'second'")
    # the same name with another space is refused too
    other = bad_sweep(tmp_path / "c", name="first", space={"dropout": SPACE["dropout"]})
    err = one_sentence(capsys, ["--sweep", str(other), "--storage", url])
    assert "Sweep study 'first'" in err and "was made with another search space" in err


def test_processes_opening_a_new_database_at_once(tmp_path):
    # The launcher makes the database while a worker, a --report or a second launcher opens
    # it: both would insert SQLite's schema version, and one failed (IntegrityError).
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = sweep.load_spec(bad_sweep(tmp_path), url)
    script = ("import sys; from ncssm_policies import sweep; "
              "spec = sweep.load_spec(sys.argv[1], sys.argv[2]); "
              "sweep.open_study(spec, sys.argv[2]); print('ok')")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(spec.path), url],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sweep.open_study(spec, url, create=False).get_trials() == []


def test_report_before_any_run(tmp_path, capsys):
    err = one_sentence(capsys, ["--sweep", str(bad_sweep(tmp_path)), "--report"])
    assert "has no database at" in err and "run the sweep first" in err


def test_shipped_sweep_config_loads():
    spec = sweep.load_spec(REPO / "configs" / "sweep.yaml")
    assert spec.name == "s5-sweep" and spec.n_trials == 20 and spec.base.epochs == 4
    assert spec.space["ssm_lr"].when == {"model_type": ["s5"]}
