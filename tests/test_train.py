"""ncssm-train: configs, the training loop, checkpoints and exact resume, logging, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from ncssm_data import ClipError
from ncssm_data.modes import get_mode
from ncssm_policies.checkpoint import CheckpointError, load_policy
from ncssm_policies.config import ConfigError, TrainConfig, from_dict, load_config, parse_overrides
from ncssm_policies.train import TrainingError, main, train

REPO = Path(__file__).resolve().parents[1]
NOT_TRAINING = ("rollout.yaml", "segment.yaml", "sweep.yaml", "keypoints_rodent.yaml")
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name not in NOT_TRAINING)


@pytest.fixture()
def tiny(test_clips, tmp_path):
    """A small, fast config on the test body's clips, writing under tmp_path."""
    return TrainConfig(clip_dir=str(test_clips), seg_len=30, batch_size=4, epochs=2,
                       iters_per_epoch=3, val_steps=1, d_model=16, ssm_size=8, blocks=2,
                       n_layers=1, warmup=2, runs_dir=str(tmp_path / "runs"), eval_episodes=2,
                       eval_envs=2)


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def test_quickstart_yaml_is_the_defaults():
    assert load_config(REPO / "configs" / "quickstart.yaml") == TrainConfig()
    assert load_config(None) == TrainConfig()


def test_shipped_configs_cover_the_modes():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "s5_sa", "s5_si", "s5_sic", "s5_ssi", "s5_ps", "mamba"} <= names


# s5_sic_dart trains here with DART off (DART on the built-in clips: test_dart.py), which
# leaves s5_sic_dagger's model, mode and optimizer (test_dart_config_is_the_dagger_config_but_
# for_its_method): its two steps are slow, s5_sic_dagger's run covers them.
@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem == "s5_sic_dart" else [])
    for p in CONFIGS])
def test_every_config_trains_two_steps(path, test_clips, tmp_path):
    small = [f"clip_dir={test_clips}", "epochs=1", "iters_per_epoch=2", "val_steps=1",
             "batch_size=2", "seg_len=20", f"runs_dir={tmp_path}", "eval_episodes=2",
             "eval_envs=2", "dart_noise=null"]  # (DART on the built-in clips: test_dart.py)
    if load_config(path).dagger is not None:  # one round of two episodes after epoch 1
        small += ["epochs=2", "iters_per_epoch=1", "dagger={rounds: 1, episodes: 2}"]
    cfg = load_config(path, small)
    result = train(cfg, progress=False, plots=False)
    assert result.step == 2 and np.isfinite(result.val_loss)
    assert load_policy(result.run_dir).config == cfg
    summary = json.loads((result.run_dir / "summary.json").read_text())
    if get_mode(cfg.mmode).acts:  # the run ends with a short closed-loop evaluation
        assert summary["closed_loop"]["episodes"] == 2 == result.closed_loop["episodes"]
        assert 0 < summary["closed_loop"]["fraction"]["mean"] <= 1
    else:
        assert "closed_loop" not in summary and result.closed_loop is None


def test_dart_config_is_the_dagger_config_but_for_its_method():
    """configs/s5_sic_dart.yaml loads, and but for the keys of its method (DART's; DAgger's,
    select and eval_every in s5_sic_dagger.yaml) and its name it is s5_sic_dagger's config."""
    dart, dagger = (load_config(REPO / "configs" / f"{name}.yaml").to_dict()
                    for name in ("s5_sic_dart", "s5_sic_dagger"))
    assert dart["dart_noise"] == 0.1 and dart["dagger"] is None and dagger["dagger"]
    method = {"dart_noise", "dart_copies", "dart_expert", "dagger", "select", "eval_every", "name"}
    assert ({k: v for k, v in dart.items() if k not in method}
            == {k: v for k, v in dagger.items() if k not in method})


def test_overrides_are_typed():
    cfg = load_config(None, ["epochs=3", "learning_rate=1e-3", "conj_sym=false", "name=run7",
                             "tags=[a, b]", "clip_dir=null", "ssm_lr=1", "in_dim=67",
                             "model_kwargs={glu: full_glu}"])
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.learning_rate == 1e-3 and cfg.ssm_lr == 1.0 and isinstance(cfg.ssm_lr, float)
    assert cfg.conj_sym is False and cfg.name == "run7" and cfg.tags == ["a", "b"]
    assert cfg.clip_dir is None and cfg.in_dim == [67] and cfg.model_kwargs == {"glu": "full_glu"}
    assert parse_overrides(["name=123"]) == {"name": 123}
    with pytest.raises(ConfigError, match="'name' must be a string"):
        load_config(None, ["name=123"])


def test_syllable_key_is_a_plain_dataset_name():
    assert load_config(None, ["syllable_key=syllables_arhmm"]).syllable_key == "syllables_arhmm"
    for bad in ("", "a/b", "/syllables"):
        with pytest.raises(ConfigError, match="'syllable_key' must be a plain dataset name"):
            TrainConfig(syllable_key=bad)
    # a config saved before the key existed loads with the default
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "syllable_key"}
    assert from_dict(old).syllable_key == "syllables"


def test_written_dims_are_checked_against_the_data(tiny):
    with pytest.raises(ConfigError, match=r"'out_dim' is 5, but the state_action target .* has width 4"):
        train(tiny.replace(out_dim=5), progress=False)
    with pytest.raises(ConfigError, match=r"'in_dim' is \[3\], but the state_action inputs"):
        train(tiny.replace(in_dim=[3]), progress=False)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def test_ssm_parameters_get_their_own_group():
    from ncssm_policies.models import SequencePolicy
    from ncssm_policies.train import param_labels

    model = SequencePolicy(out_dim=3, layer="s5", d_model=8, n_layers=1,
                           layer_kwargs={"state_dim": 4})
    # The labels read only names and shapes: the params' shapes, with nothing computed
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 2, 5), np.float32))
    params = params["params"]
    labels = {"/".join(str(getattr(k, "key", k)) for k in path): v
              for path, v in jax.tree_util.tree_leaves_with_path(param_labels(params))}
    ssm = {k.rsplit("/", 1)[1] for k, v in labels.items() if v == "ssm"}
    assert ssm == {"Lambda_re", "Lambda_im", "B", "log_step"}
    assert labels["encoder/kernel"] == "decay" and labels["encoder/bias"] == "no_decay"
    assert {v for k, v in labels.items() if k.endswith("/C")} == {"decay"}


def test_run_folder_holds_what_the_readme_lists(tiny, capsys):
    result = train(tiny, progress=False)
    names = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "learning_curve.png",
            "pred_vs_true.png", "summary.json"} <= names
    assert result.run_dir.name.startswith("quickstart-")
    assert load_config(result.run_dir / "config.yaml") == tiny
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["target"] == "ctrl" and len(summary["val_r2"]["per_dim"]) == 4
    assert [m["step"] for m in metrics(result.run_dir) if "val_loss" in m] == [3, 6]

    # scripts/linear_baseline.py scores the run on the frames of each ridge fit (run here as
    # its own __main__, like test_rollout's expert_compare.py: no second interpreter to start)
    import runpy

    script = REPO / "scripts" / "linear_baseline.py"
    argv, sys.argv = sys.argv, [str(script), "--root-dir", tiny.clip_dir, "--lags", "1", "3",
                                "--policy", str(result.run_dir)]
    capsys.readouterr()
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if "on the frames of ridge K = 1 / 3" in x]
    assert len(line) == 1 and "checkpoints/best/" in line[0]
    values = [float(v) for v in line[0].split("val R2 ")[1].split(" (")[0].split(" / ")]
    assert len(values) == 2 and all(np.isfinite(v) and v <= 1 for v in values)


def test_syllable_mode_trains_and_evaluates_on_arhmm_labels(tiny, test_clips, tmp_path):
    """syllable_key picks the label dataset in training and in the closed-loop evaluation; the
    clips here have no /syllables at all, so reading it anywhere would fail."""
    root = tmp_path / "segmented"
    shutil.copytree(test_clips, root)
    n_labels = 0
    for path in sorted(root.glob("clip_*.h5")):
        with h5py.File(path, "r+") as f:
            own = f["syllables"][()]
            labels = 2 * own + np.arange(len(own)) // 20 % 2 + 1  # other labels, another count
            f.create_dataset("syllables_arhmm", data=labels)
            del f["syllables"]
            n_labels = max(n_labels, 1 + int(labels.max()))
    cfg = tiny.replace(clip_dir=str(root), mmode="syllable_state_intention",
                       syllable_key="syllables_arhmm", epochs=1)
    result = train(cfg, progress=False, plots=False)
    assert np.isfinite(result.val_loss) and result.closed_loop["episodes"] == 2
    loaded = load_policy(result.run_dir)
    assert loaded.config.syllable_key == "syllables_arhmm"
    assert loaded.dims["n_syllables"] == n_labels and loaded.dims["x_in"][0] == n_labels
    with pytest.raises(ClipError, match="needs the dataset /syllables, which the clips in"):
        train(cfg.replace(syllable_key="syllables"), progress=False, plots=False)


def test_test_batch_overfits_one_clip(tiny):
    cfg = tiny.replace(test_batch=True, clip_idx=1, epochs=1, iters_per_epoch=300, dropout=0.0,
                       learning_rate=0.01, ssm_lr=0.005, warmup=20, d_model=32, ssm_size=16,
                       n_layers=2)
    result = train(cfg, progress=False, plots=False)
    losses = [m["train_loss"] for m in metrics(result.run_dir) if "train_loss" in m]
    assert losses[0] / losses[-1] > 100, losses


def test_checkpoints_kept_as_configured(tiny):
    cfg = tiny.replace(epochs=5, ckpt_freq=2, keep_ckpts=2)
    result = train(cfg, progress=False, plots=False)
    root = result.run_dir / "checkpoints"
    assert sorted(int(p.name) for p in (root / "periodic").iterdir()) == [12, 15]
    val = {m["step"]: m["val_loss"] for m in metrics(result.run_dir) if "val_loss" in m}
    assert [int(p.name) for p in (root / "best").iterdir()] == [min(val, key=val.get)]
    assert load_policy(result.run_dir).step == min(val, key=val.get)
    assert load_policy(result.run_dir, which="latest").step == 15


def test_load_policy_round_trips(tiny):
    from ncssm_data import ClipDataset

    result = train(tiny.replace(mmode="state_intention_controller"), progress=False, plots=False)
    loaded = load_policy(result.run_dir / "checkpoints", which="latest")
    assert loaded.config.mmode == "state_intention_controller" and loaded.step == 6
    val = ClipDataset(tiny.clip_dir, batch_size=4, split="val", seg_len=30,
                      mmode="state_intention_controller", normalizer=loaded.normalizer)
    x_in, x_tgt = next(val)
    y = loaded.model.apply({"params": loaded.params}, x_in)
    mse = float(np.mean((np.asarray(y) - x_tgt) ** 2))
    assert mse == pytest.approx(metrics(result.run_dir)[-1]["val_loss"], rel=1e-5)
    # The one-step form runs from the loaded params too.
    carry = loaded.model.initialize_carry(4)
    carry, y0 = loaded.model.apply({"params": loaded.params}, carry,
                                   tuple(x[:, 0] for x in x_in), method="step")
    np.testing.assert_allclose(y0, np.asarray(y)[:, 0], rtol=1e-4, atol=1e-5)


RESUME_CFG = dict(seg_len=30, batch_size=4, epochs=8, iters_per_epoch=4, val_steps=1,
                  d_model=16, ssm_size=8, blocks=2, n_layers=1, warmup=3, dropout=0.1,
                  noise_std=0.05, eval_episodes=0)


def test_exact_resume_after_sigkill(test_clips, tmp_path, capsys):
    cfg = TrainConfig(clip_dir=str(test_clips), runs_dir=str(tmp_path), **RESUME_CFG)
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_json())  # JSON is YAML
    run = tmp_path / "killed"
    argv = ["--config", str(path), "--run-dir", str(run), "--no-progress"]
    cmd = [sys.executable, "-m", "ncssm_policies.train", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = [m for m in metrics(run) if "val_loss" in m] if (run / "metrics.jsonl").exists() else []
        if len(done) >= 3 or proc.poll() is not None:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len([m for m in metrics(run) if "val_loss" in m])
    assert killed_at < cfg.epochs

    # The same command again, resumed here (the killed process is gone; a fresh process would
    # only add its start-up: imports and first compiles).
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "resumed at step" in out

    straight = train(cfg, run_dir=tmp_path / "straight", progress=False, plots=False)
    a = load_policy(run, which="latest")
    b = load_policy(straight.run_dir, which="latest")
    assert a.step == b.step == 32
    for x, y in zip(leaves(a.params), leaves(b.params)):
        assert np.array_equal(x, y)


# 1 process x 2 devices against 1 x 1 (and 2 processes): tests/test_distributed.py


def test_two_devices_need_a_divisible_batch(test_clips, tmp_path):
    code = ("from ncssm_policies.config import TrainConfig; from ncssm_policies.train import train; "
            f"train(TrainConfig(clip_dir={str(test_clips)!r}, batch_size=3, seg_len=20, "
            f"runs_dir={str(tmp_path)!r}), progress=False)")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert "batch_size' is 3, which the 2 devices cannot split evenly" in out.stderr


def test_tensorboard_logger(tiny):
    pytest.importorskip("tensorboardX")
    result = train(tiny.replace(logger="tensorboard", epochs=1), progress=False, plots=False)
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_logger_offline(tiny, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = train(tiny.replace(logger="wandb", epochs=1), progress=False, plots=False)
    assert list((result.run_dir / "wandb").glob("offline-run-*"))


def test_cli_lists_policies(capsys):
    assert main(["--list-policies"]) == 0
    out = capsys.readouterr().out
    assert "s5" in out and "mamba" in out


def test_cli_trains_and_prints_the_summary(tiny, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(tiny.to_json())
    assert main(["--config", str(path), "--override", "epochs=1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "target 'ctrl': val loss" in out and "R2" in out and "learning curve:" in out


def test_cli_resume_goes_on_from_the_newest_checkpoint(tiny, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(tiny.replace(epochs=1).to_json())
    run = tmp_path / "run"
    assert main(["--config", str(path), "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["--resume", str(run), "--override", "epochs=2", "--no-progress"]) == 0
    assert "resumed at step 3" in capsys.readouterr().out
    assert [m["step"] for m in metrics(run) if "val_loss" in m] == [3, 6]
    assert load_config(run / "config.yaml").epochs == 2
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.yaml").write_text(tiny.to_json())
    assert main(["--resume", str(tmp_path / "fresh")]) == 2
    assert "the run folder has no checkpoints yet" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match=r"Cannot read config .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nmodel_type: [s5\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML at line \d+"):
        load_config(path)


def test_unknown_key_suggests_the_nearest(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'lerning_rate'; did you mean 'learning_rate'"):
        load_config(path)
    with pytest.raises(ConfigError, match="Override: unknown key 'epoch'; did you mean 'epochs'"):
        load_config(None, ["epoch=3"])


def test_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "type.yaml"
    path.write_text("epochs: ten\n")
    with pytest.raises(ConfigError, match="key 'epochs' must be an int, got 'ten'"):
        load_config(path)
    with pytest.raises(ConfigError, match="key 'conj_sym' must be true/false"):
        load_config(None, ["conj_sym=1"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="Override 'epochs' must be written key=value"):
        load_config(None, ["epochs"])


def test_malicious_override_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    cfg = load_config(None, [f"project={payload}"])
    assert cfg.project == payload  # a plain string
    with pytest.raises(ConfigError, match="unknown key 'x'"):
        load_config(None, [f"x={payload}"])
    assert not marker.exists()


def test_unknown_model_type_and_mode(tiny):
    with pytest.raises(ConfigError, match="'model_type' is 'lstm'.*known: .*s5"):
        train(tiny.replace(model_type="lstm"), progress=False)
    with pytest.raises(ConfigError, match="'mmode' is 'state_acton'; expected one of"):
        load_config(None, ["mmode=state_acton"])


def test_data_folder_without_clips(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"Data folder .*empty \(clip_dir\) holds no clip_<i>\.h5"):
        train(tiny.replace(clip_dir=str(tmp_path / "empty")), progress=False)


def test_checkpoint_of_another_model(tiny, tmp_path):
    train(tiny.replace(epochs=1), run_dir=tmp_path / "run", progress=False, plots=False)
    with pytest.raises(CheckpointError, match=r"another model; mismatched keys .*d_model: 16 -> 32"):
        train(tiny.replace(d_model=32), run_dir=tmp_path / "run", progress=False)


def test_missing_or_empty_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint folder at"):
        load_policy(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        load_policy(tmp_path / "empty")
    (tmp_path / "corrupt" / "periodic" / "5" / "config").mkdir(parents=True)
    (tmp_path / "corrupt" / "periodic" / "5" / "config" / "metadata").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"periodic/5 has no readable 'config' item"):
        load_policy(tmp_path / "corrupt")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    run = tmp_path / "run"
    train(tiny.replace(epochs=1), run_dir=run, progress=False, plots=False)
    before = load_policy(run, which="latest")
    with pytest.raises(TrainingError, match=r"loss became (nan|inf).*last good checkpoint .* is intact"):
        train(tiny.replace(epochs=3, learning_rate=1e30, ssm_lr=1e30, grad_clip=0.0, warmup=0),
              run_dir=run, progress=False, plots=False)
    after = load_policy(run, which="latest")
    assert after.step == before.step == 3
    for x, y in zip(leaves(before.params), leaves(after.params)):
        assert np.array_equal(x, y)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ncssm-train: error: Cannot read config") and "\n" not in err


def test_select_closed_loop_keeps_the_best_scoring_checkpoint(test_clips, tmp_path):
    """``select: closed_loop``: the best checkpoint is the epoch whose closed-loop return score
    (logged) was highest, not the one of the lowest val loss; a mode that does not act is
    refused in one sentence."""
    cfg = TrainConfig(clip_dir=str(test_clips), seg_len=30, batch_size=4, epochs=3,
                      iters_per_epoch=3, val_steps=1, d_model=16, ssm_size=8, blocks=2,
                      n_layers=1, runs_dir=str(tmp_path), eval_episodes=3, eval_envs=3,
                      select="closed_loop", eval_every=1, learning_rate=0.05)
    result = train(cfg, progress=False, plots=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    scores = {r["step"]: r["closed_loop_score"] for r in rows if "closed_loop_score" in r}
    assert sorted(scores) == [3, 6, 9]
    best = max(scores, key=scores.get)
    assert load_policy(result.run_dir).step == best
    with pytest.raises(ConfigError, match="mode 'pure_state' does not act"):
        TrainConfig(mmode="pure_state", select="closed_loop")
