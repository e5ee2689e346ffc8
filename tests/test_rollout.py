"""Closed-loop evaluation of trained checkpoints: CPU and MJX backends, recording, bad input."""

import jax
import numpy as np
import pytest

from ncssm_env.body import build_model
from ncssm_policies.checkpoint import CheckpointError, load_policy
from ncssm_data.modes import MODES, get_mode
from ncssm_policies.rollout import evaluate

CONTROL_MODES = [name for name, mode in MODES.items() if mode.acts]

CAUSES = {"end", "too_far", "bad_pose", "bad_orientation", "bad_height", "nan"}


@pytest.fixture(scope="module")
def sa_run(tiny_run):
    return tiny_run("state_action")  # conftest's tiny runs, shared by the session: read-only


def sa_run_clips(run_dir):
    return load_policy(run_dir).config.clip_dir


def check_result(res, episodes, record=False):
    eps = res.episodes
    assert len(eps["length"]) == episodes and (eps["length"] >= 1).all()
    assert ((eps["fraction"] > 0) & (eps["fraction"] <= 1)).all()
    assert set(eps["cause"]) <= CAUSES
    assert {"err_root_pos", "err_joints", "rew_joints", "return"} <= set(res.summary)
    assert sum(res.summary["causes"].values()) == episodes
    assert all(np.isfinite(eps[k]).all() for k in eps if k.startswith(("err_", "rew_")))
    if record:
        m = build_model("test")
        assert len(res.rollouts) == episodes
        for ep, T, ret in zip(res.rollouts, eps["length"], eps["return"]):
            assert ep["qpos"].shape == ep["ref_qpos"].shape == (T, m.nq)
            assert ep["ctrl"].shape == (T, m.nu) and ep["reward"].shape == ep["err_joints"].shape == (T,)
            assert np.abs(ep["ctrl"]).max() <= 1.0
            # The episode starts on its reference frame (reset noise touches only the joints).
            np.testing.assert_allclose(ep["qpos"][0, :7], ep["ref_qpos"][0, :7], atol=1e-6)
            assert np.isclose(ep["reward"].sum(), ret) and ep["length"] == T


@pytest.mark.parametrize("mode", CONTROL_MODES)
def test_evaluate_runs_every_control_mode(tiny_run, mode):
    res = evaluate(tiny_run(mode), num_envs=3, episodes=5, seed=1,
                   clips=[0, 1, 2])
    check_result(res, 5)
    assert res.summary["mode"] == mode and res.summary["backend"] == "cpu"


def test_evaluate_records_and_is_reproducible(sa_run):
    a = evaluate(sa_run, num_envs=2, episodes=3, seed=2, record=True)
    check_result(a, 3, record=True)
    b = evaluate(sa_run, num_envs=2, episodes=3, seed=2)
    for k in a.episodes:
        np.testing.assert_array_equal(a.episodes[k], b.episodes[k])
    assert b.rollouts is None
    # The default clips are the run's held-out (val) clips.
    from ncssm_policies.openloop import held_out_clips

    val = held_out_clips(load_policy(sa_run))
    assert set(a.episodes["clip"]) <= set(val)


@pytest.mark.parametrize("impl, solver", [("jax", {}), ("warp", {"iterations": 5, "ls_iterations": 5})])
def test_evaluate_mjx_in_one_scan(sa_run, jax_cache, impl, solver, monkeypatch):
    short = {}
    if impl == "warp":
        # MJX-Warp on a CPU steps slowly, and one scan is MJX_CHUNK (200) steps of all 12 envs:
        # episodes of at most 20 steps in scans of 15 (3 scans; episodes run on across them).
        monkeypatch.setattr("ncssm_policies.rollout.MJX_CHUNK", 15)
        short = {"max_steps": 20}
    res = evaluate(sa_run, num_envs=4, episodes=6, backend="mjx", seed=3, record=True,
                   clips=[0, 1, 2], impl=impl, **solver, **short)
    check_result(res, 6, record=True)
    if short:
        assert res.episodes["length"].max() <= 20
    assert res.summary["backend"] == "mjx" and res.summary["impl"] == impl
    assert {k: res.summary[k] for k in solver} == solver
    # The baselines ran the policy's episodes in the same scan; the plan is the CPU's too.
    for b in res.baselines.values():
        for k in ("episode", "clip", "start"):
            np.testing.assert_array_equal(b.episodes[k], res.episodes[k])
    if impl == "jax":
        cpu = evaluate("zero", num_envs=2, episodes=6, seed=3, clip_dir=sa_run_clips(sa_run),
                       clips=[0, 1, 2], baselines=())
        mjx_zero = res.baselines["zero"].episodes
        for k in ("clip", "start", "length"):
            np.testing.assert_array_equal(cpu.episodes[k], mjx_zero[k])
        np.testing.assert_allclose(cpu.episodes["err_joints"], mjx_zero["err_joints"], atol=1e-3)


def test_nan_actions_end_their_episodes(sa_run):
    pol = load_policy(sa_run)
    pol.params = jax.tree.map(lambda x: x * np.nan, pol.params)
    res = evaluate(pol, num_envs=3, episodes=4, seed=0)
    assert set(res.episodes["cause"]) == {"nan"} and (res.episodes["length"] == 1).all()


def test_evaluate_bad_input(sa_run, test_clips, tmp_path, rodent_clips):
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        evaluate(sa_run, num_envs=0)
    with pytest.raises(ValueError, match="episodes must be an int >= 1"):
        evaluate(sa_run, episodes=0)
    with pytest.raises(ValueError, match="Unknown backend 'tpu'"):
        evaluate(sa_run, backend="tpu")
    with pytest.raises(ValueError, match=r"takes inputs \[4\] and gives 4 actions, but body 'rodent'"):
        evaluate(sa_run, clip_dir=rodent_clips)
    with pytest.raises(ValueError, match="are for body 'rodent', not 'test'"):
        evaluate(sa_run, clip_dir=rodent_clips, body="test")
    with pytest.raises(CheckpointError, match="No checkpoint folder at"):
        evaluate(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        evaluate(tmp_path / "empty")


def test_evaluate_corrupt_checkpoint(sa_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sa_run, copy)
    files = [p for p in (copy / "checkpoints" / "best").rglob("*")
             if p.is_file() and "params" in p.parts and p.stat().st_size > 0]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot be restored"):
        evaluate(copy)


def test_mjx_refuses_a_body_it_cannot_take(rodent_clips):
    from ncssm_env.mjx_env import MJXTrackEnv

    with pytest.raises(ValueError, match=r"MJX \(jax\) cannot take body 'rodent' with contacts 'all'"):
        MJXTrackEnv(body="rodent", clip_dir=rodent_clips, clips=[0], contacts="all", impl="jax")
    # MuJoCo Warp collides ellipsoids with boxes: its buffers are sized 4 contacts a pair.
    env = MJXTrackEnv(body="rodent", clip_dir=rodent_clips, clips=[0], contacts="all", impl="warp")
    assert env.impl == "warp" and env.nconmax > 156


@pytest.mark.parametrize("mode", ["pure_state", "pure_intention", "state_intention"])
def test_evaluate_scores_predictors_open_loop(tiny_run, mode):
    res = evaluate(tiny_run(mode), episodes=4, context=20, horizon=10)
    assert res.summary["mode"] == mode and res.summary["windows"] == 4
    assert {"mse@1", "mse@5", "mse@10", "r2@10"} <= set(res.summary)
    assert np.isfinite(res.summary["mse@10"]["mean"]) and res.rollouts is None


def test_ncssm_rollout_cli(sa_run, tmp_path, capsys):
    import json

    import imageio

    from ncssm_policies.rollout import main
    from ncssm_policies.rollout_io import load_rollouts

    out = tmp_path / "out"
    cfg = tmp_path / "rollout.yaml"
    cfg.write_text(f"checkpoint: {sa_run.parent}/*\nnum_envs: 2\nepisodes: 3\nwidth: 64\n"
                   f"height: 48\nout_dir: {out}\n")
    assert main(["--config", str(cfg), "--override", "seed=4", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "3 episodes on cpu" in text and "err_joints" in text and "episode ends:" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["episodes"] == 3 and summary["config"]["seed"] == 4
    # The baselines ran the very same episodes, and their summaries have the policy's keys.
    base = summary["summary"]["baselines"]
    assert set(base) == {"zero", "expert"}
    for name in base:
        assert set(base[name]) == {k for k in summary["summary"] if k.startswith(
            ("err_", "rew_", "score_", "survival", "causes", "episodes", "length", "fraction",
             "return"))}
        for k in ("clip", "start"):
            assert summary["baseline_episodes"][name][k] == summary["episodes"][k]
    assert "policy" in text and "zero mean" in text and "expert mean" in text
    episodes, meta = load_rollouts(out / "rollouts.h5")
    assert len(episodes) == 3 and meta["summary"]["body"] == "test"
    assert [e["length"] for e in episodes] == summary["episodes"]["length"]
    assert all(e["qpos"].shape[0] == e["length"] for e in episodes)
    reader = imageio.get_reader(out / "episode.mp4", format="FFMPEG")
    frames = list(reader.iter_data())
    reader.close()
    assert len(frames) == episodes[0]["length"] and frames[0].shape == (48, 128, 3)


def test_ncssm_rollout_cli_bad_input(tmp_path, capsys):
    from ncssm_policies.rollout import main

    assert main(["--override", f"checkpoint={tmp_path}/nothing-*"]) == 2
    assert "No folder matches checkpoint" in capsys.readouterr().err
    assert main(["--override", f"checkpoint={tmp_path}", "backend=tpu"]) == 2
    assert main(["--override", "episode=3"]) == 2
    assert "unknown key 'episode'; did you mean 'episodes'?" in capsys.readouterr().err
    assert main(["--override", "checkpoint=null"]) == 2
    assert "Config key 'checkpoint' is required" in capsys.readouterr().err


def test_rollout_yaml_is_the_default():
    from pathlib import Path

    from ncssm_policies.config import load_config
    from ncssm_policies.rollout import RolloutConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "rollout.yaml"
    assert load_config(path, cls=RolloutConfig) == RolloutConfig()


def test_syllable_table_reads_the_syllable_key(test_clips, tmp_path):
    import shutil

    import h5py

    from ncssm_data import ClipStore
    from ncssm_policies.rollout import _syllable_table

    root = tmp_path / "segmented"
    shutil.copytree(test_clips, root)
    for path in root.glob("clip_*.h5"):
        with h5py.File(path, "r+") as f:
            f.create_dataset("syllables_arhmm", data=(7 - f["syllables"][()]).astype(np.int64))
    with ClipStore(root) as store:
        lengths = store.lengths[[2, 0]]
        ssi = get_mode("syllable_state_intention")
        own = _syllable_table(store, ssi, [2, 0], lengths)
        np.testing.assert_array_equal(own, np.stack([store.read(c, "syllables") for c in (2, 0)]))
        table = _syllable_table(store, ssi, [2, 0], lengths, "syllables_arhmm")
        np.testing.assert_array_equal(table, 7 - own)
        assert table.dtype == np.int32


def test_baselines_run_the_policys_episodes(sa_run, test_clips):
    """The policy, zero action and the expert run one plan: the same clips, starts and reset
    noise, episode by episode. Run alone in a batch of another size, zero action gives
    exactly the numbers it gave beside the policy, so nothing depends on who else ran."""
    res = evaluate(sa_run, num_envs=2, episodes=5, seed=4, clips=[0, 1, 2])
    zero, expert = res.baselines["zero"], res.baselines["expert"]
    for b in (zero, expert):
        for k in ("episode", "clip", "start"):
            np.testing.assert_array_equal(b.episodes[k], res.episodes[k])
    alone = evaluate("zero", num_envs=3, episodes=5, seed=4, clip_dir=test_clips, clips=[0, 1, 2],
                     baselines=())
    for k in alone.episodes:
        np.testing.assert_array_equal(alone.episodes[k], zero.episodes[k])
    # Scores: 1 is the expert, 0 doing nothing; the replay tracks far better than nothing.
    s, z, x = res.summary, zero.summary, expert.summary
    assert z["score_joints"] == 0 and x["score_joints"] == 1
    assert x["err_joints"]["mean"] < 0.2 * z["err_joints"]["mean"]
    want = (z["err_joints"]["mean"] - s["err_joints"]["mean"]) / (
        z["err_joints"]["mean"] - x["err_joints"]["mean"])
    assert np.isclose(s["score_joints"], want)
    assert s["survival"] == np.mean(res.episodes["cause"] == "end")
    assert s["baselines"]["zero"] is z and "score_root_pos" in s


def test_reference_only_clips_are_tracked(test_clips, tmp_path, jax_cache):
    """Clips of qpos alone (no obs, no ctrl): every env tracks them, evaluate skips the expert
    with a note, and training modes refuse them naming what is missing."""
    from ncssm_data import ClipDataset, ClipStore, write_clip
    from ncssm_data.errors import ClipError
    from ncssm_env.gym_env import TrackEnv
    from ncssm_env.vector import TrackVectorEnv

    ref = tmp_path / "ref_only"
    ref.mkdir()
    with ClipStore(test_clips) as store:
        for i in range(len(store)):
            write_clip(ref / f"clip_{i}.h5", {k: store.read(i, k) for k in ("qpos", "qvel")},
                       obs_layout=None, body="test", control_dt=store.control_dt,
                       generator="test")
    env = TrackEnv(body="test", clip_dir=ref, task={"reset_noise": 0})
    obs, _ = env.reset(seed=0, options={"clip": 1, "start": 10})
    assert not env.has_ctrl and np.isfinite(obs).all()
    full = TrackEnv(body="test", clip_dir=test_clips, task={"reset_noise": 0})
    obs_full, _ = full.reset(seed=0, options={"clip": 1, "start": 10})
    layout = env.obs_layout  # the same pose and reference; only prev_action differs
    a, b = layout["prev_action"]
    np.testing.assert_allclose(np.delete(obs, np.s_[a:b]), np.delete(obs_full, np.s_[a:b]),
                               atol=1e-5)
    obs, rew, *_ = env.step(np.zeros(env.model.nu, np.float32))
    assert np.isfinite(rew) and 0 < rew
    venv = TrackVectorEnv(2, body="test", clip_dir=ref)
    obs, _ = venv.reset(seed=0)
    obs, rew, *_ = venv.step(np.zeros((2, venv.model.nu), np.float32))
    assert obs.shape == (2, len(obs_full)) and np.isfinite(rew).all()
    venv.close()
    for backend, impl in (("cpu", "auto"), ("mjx", "jax")):
        res = evaluate("zero", num_envs=2, episodes=2, seed=0, clip_dir=ref, backend=backend,
                       impl=impl, baselines=("expert",))
        assert res.summary["episodes"] == 2 and np.isfinite(res.episodes["err_joints"]).all()
    with pytest.raises(ValueError, match="hold no /ctrl"):
        evaluate("expert", clip_dir=ref)
    for mode, missing in (("state_action", "/ctrl"), ("state_intention", "/latent_mean"),
                          ("syllable_state_intention", "/syllables"),
                          ("state_intention_controller", "/ctrl"),
                          ("pure_state", "/obs")):
        with pytest.raises(ClipError, match=missing):
            ClipDataset(ref, batch_size=1, seg_len=10, mmode=mode)


def test_evaluate_refuses_unknown_baselines_and_arhmm_features(sa_run, tmp_path):
    with pytest.raises(ValueError, match="Unknown baseline .random.; expected zero, expert or a registered"):
        evaluate(sa_run, baselines=("zero", "random"))
    from ncssm_policies import arhmm

    x = [np.random.default_rng(0).normal(size=(60, 2))]
    feats = arhmm.Features.fit("latent_mean", x, None)
    path = arhmm.fit(feats, x, num_states=2, kappa=1.0, num_lags=1, num_iters=1,
                     seed=0).save(tmp_path / "latent.npz")
    with pytest.raises(ValueError, match="fitted on feature 'latent_mean'; rollouts give only"):
        evaluate(sa_run, num_envs=1, episodes=1, behaviour=True, arhmm=str(path))


def test_expert_is_skipped_with_a_note_on_reference_only_clips(sa_run, test_clips, tmp_path):
    from ncssm_data import ClipStore, write_clip

    ref = tmp_path / "ref_only"
    ref.mkdir()
    with ClipStore(test_clips) as store:
        for i in range(len(store)):
            write_clip(ref / f"clip_{i}.h5", {"qpos": store.read(i, "qpos")}, obs_layout=None,
                       body="test", control_dt=store.control_dt, generator="test")
    res = evaluate(sa_run, num_envs=2, episodes=2, clip_dir=ref)
    assert set(res.summary["baselines"]) == {"zero"} and "score_joints" not in res.summary
    assert any("expert baseline skipped" in n for n in res.summary["notes"])


def test_experts_hold_their_clips_from_reset_noise(test_clips):
    """Replay and the feedback expert, run by name without a policy on the test body, hold
    every clip from the reset noise to its end and track it far closer than zero action; with
    action noise they still hold, and the noise is really executed."""
    res = evaluate("replay", baselines=("zero", "feedback"), clip_dir=test_clips, num_envs=3,
                   episodes=6, seed=0)
    zero, fb = res.baselines["zero"].summary, res.baselines["feedback"].summary
    for s in (res.summary, fb):
        assert s["survival"] == 1.0
        assert s["err_joints"]["mean"] < 0.1 * zero["err_joints"]["mean"]
    noisy = evaluate("replay", baselines=("feedback",), clip_dir=test_clips, num_envs=3,
                     episodes=6, seed=0, action_noise=0.1)
    assert noisy.summary["survival"] == noisy.baselines["feedback"].summary["survival"] == 1.0
    assert noisy.summary["err_joints"]["mean"] > 3 * res.summary["err_joints"]["mean"]
    with pytest.raises(ValueError, match="Unknown expert 'oracle': no expert named 'oracle'"):
        evaluate("zero", clip_dir=test_clips, expert="oracle")
    with pytest.raises(ValueError, match="action_noise is applied on the CPU backend only"):
        evaluate("zero", clip_dir=test_clips, backend="mjx", action_noise=0.1)


def test_feedback_expert_maps_joint_errors_through_the_servos():
    """The correction moves each servo's target by the joint error: on the test body (joint
    servos, gear 1), ctrl - ref_ctrl = gain * (kp / g) * (q_ref - q) exactly; numpy and
    jax.numpy agree."""
    import jax.numpy as jnp

    from ncssm_env.expert import feedback

    m = build_model("test")
    rng = np.random.default_rng(0)
    q, ref = rng.normal(size=(2, m.nq)), rng.normal(size=(2, 3, m.nq))
    ctrl = rng.normal(size=(2, m.nu))
    u = feedback(m, gain=0.7)(np, q, np.zeros((2, m.nv)), ref, ctrl, np.zeros(2, int))
    kp_over_g = -m.actuator_biasprm[:, 1] / m.actuator_gainprm[:, 0]
    joints = m.jnt_qposadr[m.actuator_trnid[:, 0]]
    want = ctrl + 0.7 * kp_over_g * (ref[:, 0, joints] - q[:, joints])
    np.testing.assert_allclose(u, want, rtol=1e-5)
    uj = feedback(m, gain=0.7)(jnp, jnp.asarray(q), jnp.zeros((2, m.nv)), jnp.asarray(ref),
                               jnp.asarray(ctrl), jnp.zeros(2, int))
    np.testing.assert_allclose(np.asarray(uj), u, rtol=1e-5)


def test_expert_compare_script_runs(test_clips, capsys):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "expert_compare.py"
    argv = sys.argv
    sys.argv = [str(script), "--body", "test", "--clip-dir", str(test_clips), "--clips", "3",
                "--episodes", "3", "--num-envs", "3", "--noise", "0", "--gains", "0.5",
                "--max-steps", "20"]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "replay" in out and "feedback G 0.5" in out and "zero" in out


def test_mjx_evaluation_shards_its_envs_over_local_devices(test_clips, tmp_path):
    """On 2 host devices the MJX scan's envs are split over both (jax.sharding), and every
    episode matches the 1-device run."""
    import json
    import os
    import subprocess
    import sys

    kw = dict(clip_dir=str(test_clips), backend="mjx", impl="jax", num_envs=2, episodes=4,
              seed=3, clips=[0, 1], baselines=("expert",))
    code = (f"import json, sys; from ncssm_policies.rollout import evaluate; "
            f"r = evaluate('zero', **json.loads(sys.argv[1])); "
            f"print(json.dumps({{'devices': r.summary['devices'], 'episodes': "
            f"{{k: v.tolist() for k, v in r.episodes.items()}}, 'expert': "
            f"{{k: v.tolist() for k, v in r.baselines['expert'].episodes.items()}}}}))")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(kw)], env=env, text=True,
                         capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    two = json.loads(out.stdout.strip().splitlines()[-1])
    one = evaluate("zero", **kw)
    assert two["devices"] == 2 and one.summary["devices"] == 1
    for got, want in ((two["episodes"], one.episodes),
                      (two["expert"], one.baselines["expert"].episodes)):
        for k in ("clip", "start", "length"):
            np.testing.assert_array_equal(got[k], want[k])
        np.testing.assert_allclose(got["err_joints"], want["err_joints"], rtol=1e-5, atol=1e-6)
