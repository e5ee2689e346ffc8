"""Distributional behaviour scores: each against a case with a known answer."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from sklearn.decomposition import PCA

from ncssm_data import ClipError, ClipStore
from ncssm_data.layout import LEGACY_LAYOUT
from ncssm_policies.behaviour import (
    PoseSpace,
    falls_per_minute,
    features_from_obs,
    features_from_qpos,
    frechet_distance,
    pose_features,
    usage_jsd,
)

# --- Fréchet distance ------------------------------------------------------------------------


def _exact_samples(rng, n, mu, cov):
    """n samples whose sample mean is exactly ``mu`` and sample covariance (ddof 1) ``cov``."""
    z = rng.normal(size=(n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mu


def _psd_sqrt(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _analytic(mu1, s1, mu2, s2):
    """W2² between N(mu1, s1) and N(mu2, s2) via the symmetric form (s1^½ s2 s1^½)^½."""
    r = _psd_sqrt(s1)
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * _psd_sqrt(r @ s2 @ r))


def test_frechet_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(300, 5)) @ np.diag([1, 2, 3, 0.5, 0.1])
    assert abs(frechet_distance(x, x)) < 1e-8


def test_frechet_matches_the_analytic_value_for_exact_moments():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)  # non-commuting
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    x, y = _exact_samples(rng, 500, mu1, s1), _exact_samples(rng, 700, mu2, s2)
    np.testing.assert_allclose(np.cov(x, rowvar=False), s1, atol=1e-10)
    expected = _analytic(mu1, s1, mu2, s2)
    assert expected > 1.0
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(y, x) == pytest.approx(frechet_distance(x, y), rel=1e-10)


def test_frechet_of_gaussian_draws_approaches_the_analytic_value():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, size=(200_000, 1))
    y = rng.normal(1.0, 2.0, size=(200_000, 1))
    # 1-D: (mu1 - mu2)^2 + (sigma1 - sigma2)^2 = 1 + 1
    assert frechet_distance(x, y) == pytest.approx(2.0, abs=0.03)


def test_frechet_translation_adds_the_squared_norm():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 3)), rng.normal(size=(300, 3)) * [1.0, 2.0, 0.5]
    v = np.array([0.3, -1.2, 2.0])
    assert frechet_distance(x, x + v) == pytest.approx(v @ v, rel=1e-8)
    # shifting one of two different sets: ||mx + v - my||^2 = ||mx - my||^2 + ||v||^2 + 2 v.(mx - my)
    dmu = x.mean(0) - y.mean(0)
    assert frechet_distance(x + v, y) == pytest.approx(frechet_distance(x, y) + v @ v + 2 * v @ dmu,
                                                       rel=1e-8)
    assert frechet_distance(x + v, y + v) == pytest.approx(frechet_distance(x, y), rel=1e-8)


@pytest.mark.parametrize("x, y", [(np.zeros((1, 3)), np.zeros((5, 3))),
                                  (np.zeros((5, 3)), np.zeros((5, 2)))])
def test_frechet_refuses_too_few_samples_or_mismatched_dims(x, y):
    with pytest.raises(ValueError, match="at least 2 samples of the same dimension"):
        frechet_distance(x, y)


# --- the pose space ----------------------------------------------------------------------


def _walks(seed, lengths, F=6):
    rng = np.random.default_rng(seed)
    return [np.cumsum(rng.normal(size=(T, F)), axis=0) * rng.uniform(0.1, 3, F) for T in lengths]


def test_pose_space_window_counts_and_short_sequences():
    space = PoseSpace(window=20, stride=5, n_components=4).fit(_walks(0, [200, 150]))
    lengths = [120, 77, 20, 19]
    emb = space.embed(_walks(1, lengths))
    assert emb.shape == (sum((T - 20) // 5 + 1 for T in lengths if T >= 20), 4)
    assert emb.shape == (21 + 12 + 1 + 0, 4)
    assert space.embed(_walks(2, [19, 5])).shape == (0, 4)


def test_pose_space_zscores_flattens_frame_major_and_is_a_pca():
    train = _walks(3, [200, 150])
    train[1][:, 2] = 7.0  # a feature constant in one clip only
    space = PoseSpace(window=10, stride=3, n_components=5).fit(train)
    frames = np.concatenate(train)
    np.testing.assert_allclose(space.mean, frames.mean(0))
    np.testing.assert_allclose(space.std, frames.std(0))
    X = space.windows(train)
    z0 = (train[0] - space.mean) / space.std
    np.testing.assert_allclose(X[0], z0[:10].ravel())  # frame-major
    np.testing.assert_allclose(X[1], z0[3:13].ravel())
    ref = PCA(n_components=5, svd_solver="full").fit_transform(X)
    emb = space.embed(train)
    np.testing.assert_allclose(np.abs(emb), np.abs(ref), atol=1e-8)
    const = PoseSpace(window=10, stride=3, n_components=5).fit([np.ones((100, 2))])
    assert np.all(const.std == 1e-6) and np.isfinite(const.embed([np.ones((30, 2))])).all()


def test_pose_space_fit_is_deterministic_and_self_frechet_is_zero(tmp_path):
    train, held_out = _walks(4, [300, 250, 200]), _walks(5, [180, 160])
    a = PoseSpace(window=25, stride=5, n_components=6).fit(train)
    b = PoseSpace(window=25, stride=5, n_components=6).fit([t.copy() for t in train])
    np.testing.assert_array_equal(a.components, b.components)
    np.testing.assert_array_equal(a.embed(held_out), b.embed(held_out))
    e = a.embed(held_out)
    assert abs(frechet_distance(e, e)) < 1e-8
    assert frechet_distance(e, a.embed(_walks(6, [180, 160]))) > 0.1
    a.save(tmp_path / "space.npz")
    np.testing.assert_array_equal(PoseSpace.load(tmp_path / "space.npz").embed(held_out), e)


def test_pose_space_refuses_too_few_windows_and_embedding_unfitted():
    with pytest.raises(ValueError, match="more than n_components=16"):
        PoseSpace().fit(_walks(7, [60, 49]))
    with pytest.raises(ValueError, match="call fit first"):
        PoseSpace().embed(_walks(7, [60]))


# --- falls -------------------------------------------------------------------------------


def test_falls_per_minute_counts_entries_into_the_fallen_state():
    lo, hi = 0.03, 0.3
    h1, up1 = np.full(300, 0.1), np.ones(300)
    h1[50:60] = 0.01        # fall 1 (too low)
    up1[100:110] = 0.2      # fall 2 (tipped over)...
    h1[110:120] = 0.01      # ...still fallen: no new fall
    h1[200:211] = 0.5       # fall 3 (too high)
    h1[250] = lo            # the bounds themselves are healthy
    up1[251] = 0.5
    h2, up2 = np.full(200, 0.1), np.ones(200)
    h2[:5] = 0.0            # fall 4: the sequence starts fallen
    # 4 falls in 500 frames of 20 ms = 10 s = 1/6 min
    assert falls_per_minute([h1, h2], [up1, up2], (lo, hi), 0.02) == pytest.approx(24.0)
    assert falls_per_minute([h1[:, None]], [up1], (lo, hi), 0.02) == pytest.approx(3 / 0.1)
    assert falls_per_minute([h2[5:]], [up2[5:]], (lo, hi), 0.02) == 0.0


# --- syllable usage ----------------------------------------------------------------------


def test_usage_jsd_known_cases():
    a = [np.array([0, 1, 2, 3]), np.array([3, 2])]
    assert usage_jsd(a, [np.array([3, 2, 1, 0, 2, 3])], 4) == pytest.approx(0.0, abs=1e-12)
    assert usage_jsd([np.array([0, 0, 1])], [np.array([2, 3, 3])], 4) == pytest.approx(1.0)
    # p = (1/2, 1/2, 0), q = (0, 1/2, 1/2), m = (1/4, 1/2, 1/4): each KL is 1/2 log2 2 = 1/2
    assert usage_jsd([np.array([0, 1])], [np.array([1, 2])], 3) == pytest.approx(0.5)
    # frames are pooled over sequences: p = (3/4, 1/4), q = (1/4, 3/4)
    p, q = [0.75, 0.25], [0.25, 0.75]
    got = usage_jsd([np.array([0, 0, 0]), np.array([1])], [np.array([1, 1, 1, 0])], 2)
    assert got == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    with pytest.raises(ValueError, match=r"ints in \[0, 3\)"):
        usage_jsd([np.array([0, 3])], [np.array([1])], 3)


# --- features: clips and rollouts agree ----------------------------------------------------


def test_pose_features_order_and_shapes():
    q, qd = np.arange(6.0).reshape(2, 3), -np.arange(6.0).reshape(2, 3)
    f = pose_features(q, qd, np.array([0.1, 0.2]), np.array([[0, 0, 1.0], [0, 1.0, 0]]))
    np.testing.assert_array_equal(f[1], [3, 4, 5, 0.2, 0, 1, 0, 3, 4, 5])
    assert pose_features(q, qd, np.array([[0.1], [0.2]]), np.zeros((2, 3))).shape == (2, 10)
    with pytest.raises(ClipError, match="no observation slice 'qvel_local'"):
        features_from_obs(np.zeros((2, 537)), LEGACY_LAYOUT)


def test_clip_features_equal_the_envs_observation_features(test_clips):
    from ncssm_env.gym_env import TrackEnv

    env = TrackEnv(body="test", clip_dir=test_clips, task={"reset_noise": 0.0})
    clip, t0 = env.clip(1), 10
    obs, _ = env.reset(options={"clip": 1, "start": t0})
    obs_l, qpos, qvel = [obs], [env.data.qpos.copy()], [env.data.qvel.copy()]
    np.testing.assert_array_equal(qpos[0], clip.qpos[t0])  # no reset noise: the clip's frame
    rng = np.random.default_rng(0)
    for t in range(t0 + 1, t0 + 25):  # off the clip: its controls plus noise
        a = np.clip(clip.ctrl[t] + rng.normal(0, 0.3, env.model.nu), env.action_space.low,
                    env.action_space.high)
        obs, *_ = env.step(a.astype(np.float32))
        obs_l.append(obs)
        qpos.append(env.data.qpos.copy())
        qvel.append(env.data.qvel.copy())
    from_obs = features_from_obs(np.array(obs_l), env.obs_layout)
    from_qpos = features_from_qpos(env.model, env.idx, np.array(qpos), np.array(qvel))
    nj = env.model.nq - 7
    assert from_obs.shape == from_qpos.shape == (25, 2 * nj + 4)
    assert np.abs(np.array(qpos)[1:] - clip.qpos[t0 + 1:t0 + 25]).max() > 1e-3
    np.testing.assert_allclose(from_qpos, from_obs, rtol=1e-5, atol=1e-5)
    # the clip's own stored observations agree with its qpos/qvel too
    with ClipStore(test_clips) as store:
        stored = features_from_obs(store.read(1, "obs"), store.obs_layout)
    np.testing.assert_allclose(features_from_qpos(env.model, env.idx, clip.qpos, clip.qvel),
                               stored, rtol=1e-5, atol=1e-5)
    env.close()


# --- wired into evaluation --------------------------------------------------------------------


def test_behaviour_scores_of_the_held_out_clips_themselves(tmp_path_factory):
    """``evaluate``'s behaviour scores, with the held-out clips' own motion standing in for a
    policy's episodes: Fréchet 0 against them, falls as in the clips, and (with an AR-HMM)
    the same syllable usage. The floor (training clips against held-out) is above 0."""
    from ncssm_env.synthetic import generate
    from ncssm_policies import arhmm
    from ncssm_policies.openloop import EvalResult
    from ncssm_policies.behaviour import pose_columns
    from ncssm_policies.rollout import behaviour_scores

    root = tmp_path_factory.mktemp("long_test_clips")
    generate(root, body="test", n_clips=5, n_frames=160, seed=3, progress=False)
    held = [3, 4]
    with ClipStore(root) as store:
        layout = store.obs_layout
        cols, _ = pose_columns(layout)
        poses = [store.read(i, "obs")[:, cols] for i in held]
        q = [store.obs(i, "qpos_local") for i in range(3)]
    feats = arhmm.Features.fit("qpos_local", q, None)
    model = arhmm.fit(feats, [feats(x) for x in q], num_states=3, kappa=10.0, num_lags=1,
                      num_iters=3, seed=0)
    path = model.save(tmp_path_factory.mktemp("arhmm") / "arhmm.npz")
    res = EvalResult({}, {}, poses=poses)
    out = behaviour_scores(res, None, None, root, held, "test", layout, arhmm=str(path))
    assert out["windows"] == out["windows_held_out"] == 2 * ((160 - 50) // 10 + 1)
    assert out["frechet"] < 1e-6 < out["frechet_floor"]
    assert out["falls_per_min"] == out["falls_per_min_clips"]
    assert out["syllable_jsd"] < 1e-6
