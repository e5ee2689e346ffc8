"""Closed-loop evaluation of trained checkpoints on the CPU vector env."""

import numpy as np
import pytest

from ncssm_policies.config import TrainConfig
from ncssm_policies.rollout import CONTROL_MODES, evaluate
from ncssm_policies.train import train


def tiny_run(test_clips, tmp_path, mode):
    cfg = TrainConfig(root_dir=str(test_clips), seg_len=30, batch_size=4, epochs=1,
                      iters_per_epoch=3, val_steps=1, d_model=16, ssm_size=8, blocks=2,
                      n_layers=1, runs_dir=str(tmp_path), mmode=mode)
    return train(cfg, progress=False, plots=False).run_dir


@pytest.mark.parametrize("mode", CONTROL_MODES)
def test_evaluate_runs_every_control_mode(test_clips, tmp_path, mode):
    res = evaluate(tiny_run(test_clips, tmp_path, mode), num_envs=3, episodes=5, seed=1)
    eps = res.episodes
    assert len(eps["length"]) == 5 and (eps["length"] >= 1).all()
    assert ((eps["fraction"] > 0) & (eps["fraction"] <= 1)).all()
    assert set(eps["cause"]) <= {"end", "too_far", "bad_pose", "bad_orientation", "bad_height", "nan"}
    assert {"err_root_pos", "err_joints", "rew_joints"} <= set(res.summary)
    assert sum(res.summary["causes"].values()) == 5
    assert all(np.isfinite(eps[k]).all() for k in eps if k.startswith(("err_", "rew_")))


def test_evaluate_bad_input(test_clips, tmp_path, rodent_clips):
    run = tiny_run(test_clips, tmp_path, "state_action")
    with pytest.raises(ValueError, match="num_envs must be an int >= 1"):
        evaluate(run, num_envs=0)
    with pytest.raises(ValueError, match="Unknown backend 'tpu'"):
        evaluate(run, backend="tpu")
    with pytest.raises(ValueError, match=r"takes inputs \[4\] and gives 4 actions, but body 'rodent'"):
        evaluate(run, clip_dir=rodent_clips)
    world = tiny_run(test_clips, tmp_path / "w", "pure_state")
    with pytest.raises(ValueError, match="'pure_state' model, which predicts rather than acts"):
        evaluate(world)
