"""Open-loop scoring of trained prediction models (pure_state, pure_intention, state_intention)."""

import numpy as np
import pytest

from ncssm_data import ClipStore, get_mode, write_clip
from ncssm_data.modes import read_source
from ncssm_policies.checkpoint import load_policy
from ncssm_policies.openloop import held_out_clips, score_open_loop

MODES = ("pure_state", "pure_intention", "state_intention")


@pytest.fixture(scope="module")
def policies(tiny_run):
    return {m: load_policy(tiny_run(m)) for m in MODES}  # (conftest's runs, shared)


def parallel_outputs(pol, clip_dir, res, context):
    """The parallel-form outputs at the H scored frames, over the true context inputs followed
    by what the rollout fed: its own predictions (pure modes) or the true inputs."""
    import jax.numpy as jnp

    mode, norm = get_mode(pol.config.mmode), pol.normalizer
    pred = res.episodes["pred"]
    H = pred.shape[1]
    with ClipStore(clip_dir) as store:
        x = np.stack([read_source(store, int(c), mode.x_in[0], int(s), int(s) + context + H - 1)
                      for c, s in zip(res.episodes["clip"], res.episodes["start"])])
    x = np.asarray(norm.normalize(x.astype(np.float32)))  # (B, C + H - 1, D)
    if mode.x_in[0] == mode.x_tgt:  # autoregressive: the inputs after the context are fed back
        x[:, context:] = norm.normalize(norm.denormalize_tgt(pred[:, :-1]))
    y = pol.model.apply({"params": pol.params}, jnp.asarray(x))  # (B, C + H - 1, D_tgt)
    return np.asarray(y)[:, context - 1:]


def narrow_clips(tmp_path):
    """A folder of one clip whose qpos_local is 3 wide (the test body's is 4)."""
    rng = np.random.default_rng(0)
    write_clip(tmp_path / "clip_0.h5", {"obs": rng.standard_normal((40, 5)),
                                        "ctrl": rng.standard_normal((40, 2))},
               obs_layout={"qpos_local": (0, 3)}, body="narrow", control_dt=0.02,
               generator="test")
    return tmp_path


@pytest.mark.parametrize("mode", MODES)
def test_scores_match_the_parallel_form(policies, test_clips, mode):
    pol = policies[mode]
    res = score_open_loop(pol, clips=[0, 1, 2], context=20, horizon=12, windows=5, seed=3)
    s = res.summary
    assert (s["mode"], s["context"], s["horizon"], s["windows"]) == (mode, 20, 12, 5)
    assert {"mse@1", "r2@1", "mse@5", "r2@5", "mse@10", "r2@10", "mse@12", "r2@12"} <= set(s)
    assert "mse@25" not in s
    assert all(np.isfinite(v).all() for k, v in s.items() if "@" in k for v in v.values())
    eps = res.episodes
    assert eps["pred"].shape == eps["true"].shape == (5, 12, pol.dims["x_tgt"])
    assert ((eps["start"] >= 0) & (eps["start"] + 32 <= 80)).all()
    np.testing.assert_allclose(eps["mse"], ((eps["pred"] - eps["true"]) ** 2).mean((1, 2)),
                               rtol=1e-5)
    first = ((eps["pred"][:, 0] - eps["true"][:, 0]) ** 2).mean()
    np.testing.assert_allclose(s["mse@1"]["mean"], first, rtol=1e-5)
    # Every step equals the parallel form over the same inputs (step 1: teacher-forced output).
    np.testing.assert_allclose(eps["pred"], parallel_outputs(pol, test_clips, res, 20),
                               atol=1e-4, rtol=1e-4)


def test_targets_are_the_next_frames(policies, test_clips):
    pol = policies["pure_state"]
    res = score_open_loop(pol, context=5, horizon=3, windows=2, seed=0)
    with ClipStore(test_clips) as store:
        for b, (c, s) in enumerate(zip(res.episodes["clip"], res.episodes["start"])):
            raw = read_source(store, int(c), "qpos_local", int(s) + 5, int(s) + 8)
            np.testing.assert_allclose(res.episodes["true"][b], pol.normalizer.normalize_tgt(raw),
                                       rtol=1e-6)


def test_same_seed_same_result(policies):
    pol = policies["pure_intention"]
    a, b = (score_open_loop(pol, context=10, horizon=6, windows=4, seed=7) for _ in range(2))
    assert a.summary == b.summary
    for k in a.episodes:
        np.testing.assert_array_equal(a.episodes[k], b.episodes[k])
    c = score_open_loop(pol, context=10, horizon=6, windows=4, seed=8)
    assert not np.array_equal(a.episodes["start"], c.episodes["start"])


def test_held_out_clips_are_the_val_split(policies):
    ids = held_out_clips(policies["pure_state"])
    assert ids.size == 1 and 0 <= ids[0] < 3  # round(0.8 * 3) = 2 clips train, 1 val
    res = score_open_loop(policies["pure_state"], clips=ids, context=5, horizon=5, windows=3)
    assert (res.episodes["clip"] == ids[0]).all()
    one = score_open_loop(policies["pure_state"], context=3, horizon=1, windows=2)
    assert one.episodes["pred"].shape[1] == 1 and {"mse@1", "r2@1"} <= set(one.summary)


def test_bad_input(policies, test_clips, tmp_path):
    pol = policies["pure_state"]
    with pytest.raises(ValueError, match="context \\+ horizon = 81 frames"):
        score_open_loop(pol, context=50, horizon=31)
    with pytest.raises(ValueError, match=f"No chosen clip in {test_clips}"):
        score_open_loop(pol, context=80, horizon=1)
    with pytest.raises(ValueError, match="context must be an int >= 1, got 0"):
        score_open_loop(pol, context=0)
    with pytest.raises(ValueError, match="horizon must be an int >= 1, got -2"):
        score_open_loop(pol, horizon=-2)
    with pytest.raises(ValueError, match="windows must be an int >= 1, got 0"):
        score_open_loop(pol, windows=0)
    with pytest.raises(ValueError, match="Clip index 3 is out of range for the 3 clips"):
        score_open_loop(pol, clips=[0, 3], context=5, horizon=5)
    with pytest.raises(ValueError, match=r"takes inputs \[4\] and predicts 4 dims, but the "
                                         r"pure_state clips in .* give inputs \[3\]"):
        score_open_loop(pol, clip_dir=narrow_clips(tmp_path), context=5, horizon=5)


def test_control_mode_rejected(tiny_run):
    pol = load_policy(tiny_run("state_action"))
    with pytest.raises(ValueError, match="acts rather than predicts; score it in closed loop"):
        score_open_loop(pol)
