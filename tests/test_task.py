"""The task math: reward terms, each termination threshold, the layout, and its geometry."""

import dataclasses

import mujoco
import numpy as np
import pytest

from ncssm_env import task
from ncssm_env.body import BODIES, body_index, build_model
from ncssm_env.reference import clip_kinematics


@pytest.fixture(scope="module", params=sorted(BODIES))
def setup(request):
    """A body, its index and the kinematics of a few of its own frames (fields (T, ...))."""
    body = request.param
    m = build_model(body)
    idx = body_index(m, body)
    rng = np.random.default_rng(0)
    qpos = np.tile(m.qpos0, (6, 1))
    qpos[:, 7:] += rng.uniform(-0.2, 0.2, (6, m.nq - 7))
    qpos[:, 0] += np.linspace(0, 0.05, 6)
    ref = clip_kinematics(m, idx, qpos, np.zeros((6, m.nv)))
    return body, m, idx, ref


def _replace(k: task.Kin, **kw) -> task.Kin:
    return k._replace(**kw)


def test_on_reference_every_term_is_one(setup):
    body, m, idx, ref = setup
    cur = task.take(np, ref, 2)
    err = task.errors(np, cur, cur, idx.n_end_effectors)
    assert all(v == 0.0 for v in err.values())
    a = np.zeros(m.nu)
    cfg = task.TaskConfig()
    r, terms = task.reward(np, cfg, err, a, a)
    for name in task.REWARD_TERMS:
        assert terms[name] == 1.0
    assert r == pytest.approx(sum(cfg.weights))
    terminated, causes = task.termination(np, cfg, err, cur, BODIES[body].healthy_z, True)
    assert not terminated and not any(causes.values())


def _rotated(quat, angle):
    """``quat`` turned by ``angle`` about the world x axis, with its matrix."""
    q = np.zeros(4)
    mujoco.mju_mulQuat(q, np.array([np.cos(angle / 2), np.sin(angle / 2), 0, 0]), quat)
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, q)
    return q, mat.reshape(3, 3)


@pytest.mark.parametrize("cause", task.TERMINATIONS)
def test_each_termination_threshold(setup, cause):
    """Just inside a threshold nothing terminates; just past it, exactly that cause fires."""
    body, m, idx, ref = setup
    cfg = task.TaskConfig()
    ref_t = task.take(np, ref, 3)
    lo, hi = BODIES[body].healthy_z

    def perturbed(over: bool) -> task.Kin:
        f = 1.01 if over else 0.99
        if cause == "too_far":
            pts = ref_t.points + np.array([f * cfg.max_root_pos, 0, 0])  # the whole body moves
            return _replace(ref_t, points=pts)
        if cause == "bad_pose":
            return _replace(ref_t, joints=ref_t.joints + f * cfg.max_joints)
        if cause == "bad_orientation":
            q, mat = _rotated(ref_t.root_quat, f * cfg.max_root_rot)
            return _replace(ref_t, root_quat=q, root_mat=mat)
        if cause == "bad_height":
            return _replace(ref_t, torso_z=np.float64(lo * (2 - f)))
        return ref_t

    for over in (False, True):
        cur = perturbed(over)
        finite = not (cause == "nan" and over)
        err = task.errors(np, cur, ref_t, idx.n_end_effectors)
        terminated, causes = task.termination(np, cfg, err, cur, (lo, hi), finite)
        fired = [k for k, v in causes.items() if v]
        assert fired == ([cause] if over else []), (over, fired, err)
        assert bool(terminated) == over


def test_too_high_terminates(setup):
    body, m, idx, ref = setup
    cfg = task.TaskConfig()
    cur = _replace(task.take(np, ref, 0), torso_z=np.float64(BODIES[body].healthy_z[1] + 0.01))
    err = task.errors(np, cur, cur, idx.n_end_effectors)
    _, causes = task.termination(np, cfg, err, cur, BODIES[body].healthy_z, True)
    assert causes["bad_height"]


def test_root_rot_error_is_the_rotation_angle(setup):
    _, _, idx, ref = setup
    ref_t = task.take(np, ref, 0)
    q, mat = _rotated(ref_t.root_quat, 0.3)
    err = task.errors(np, _replace(ref_t, root_quat=q, root_mat=mat), ref_t, idx.n_end_effectors)
    assert err["root_rot"] == pytest.approx(0.3, abs=1e-9)


def test_reward_falls_with_error_and_costs():
    cfg = task.TaskConfig()
    err = {"root_pos": 0.03, "root_rot": 0.0, "joints": 0.0, "end_effectors": 0.0, "bodies": 0.0}
    a, b = np.full(4, 0.5), np.zeros(4)
    r, terms = task.reward(np, cfg, err, a, b)
    assert terms["root_pos"] == pytest.approx(np.exp(-1.0))
    assert terms["ctrl_cost"] == pytest.approx(cfg.ctrl_cost * 0.25)
    assert terms["smooth_cost"] == pytest.approx(cfg.smooth_cost * 0.25)
    assert r == pytest.approx(3 + np.exp(-1.0) - terms["ctrl_cost"] - terms["smooth_cost"])


def test_quat_mul_matches_mujoco():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 4))
    want = np.zeros(4)
    mujoco.mju_mulQuat(want, a, b)
    np.testing.assert_allclose(task.quat_mul(np, a, b), want, atol=1e-12)


def test_layout_is_contiguous_and_named(setup):
    _, m, idx, ref = setup
    K = 3
    layout = task.obs_layout(K, idx)
    parts = [layout[n] for n in task.REF_PARTS + task.PROPRIO_PARTS]
    assert parts[0][0] == 0 and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert layout["ref"] == (0, layout["ref_joints"][1])
    assert layout["qpos_local"][1] - layout["qpos_local"][0] == m.nq - 7
    win = task.take(np, ref, task.window(np, 6, 1, K))
    obs = task.observation(np, task.take(np, ref, 1), win, np.zeros(m.nu), idx.n_end_effectors)
    assert obs.shape == (parts[-1][1],)
    np.testing.assert_array_equal(obs[slice(*layout["qpos_local"])], ref.joints[1])
    ref_joints = obs[slice(*layout["ref_joints"])].reshape(K, -1)
    np.testing.assert_allclose(ref_joints, ref.joints[2:5] - ref.joints[1])


def test_observation_broadcasts_over_frames(setup):
    """The batched form (all frames at once, as the clip writer uses) equals frame by frame."""
    _, m, idx, ref = setup
    T, K = 6, 2
    prev = np.random.default_rng(2).normal(size=(T, m.nu))
    batched = task.observation(np, ref, task.take(np, ref, task.window(np, T, np.arange(T), K)),
                               prev, idx.n_end_effectors)
    for t in range(T):
        one = task.observation(np, task.take(np, ref, t),
                               task.take(np, ref, task.window(np, T, t, K)), prev[t],
                               idx.n_end_effectors)
        np.testing.assert_allclose(batched[t], one, atol=1e-12)


def test_body_frame_features_are_in_the_body_frame(setup):
    """Turning the whole scene about z leaves every body-frame feature unchanged."""
    _, m, idx, ref = setup
    K = 2
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    qz = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])

    def turned(k: task.Kin) -> task.Kin:
        q = np.stack([_mul(qz, x) for x in k.root_quat.reshape(-1, 4)]).reshape(k.root_quat.shape)
        return k._replace(points=k.points @ turn.T, root_quat=q, root_mat=turn @ k.root_mat,
                          torso_up=k.torso_up @ turn.T)

    def obs(k):
        return task.observation(np, task.take(np, k, 0),
                                task.take(np, k, task.window(np, 6, 0, K)), np.zeros(m.nu),
                                idx.n_end_effectors)

    layout = task.obs_layout(K, idx)
    a, b = obs(ref), obs(turned(ref))
    for name in ("ref_root_pos", "ref_end_effectors", "ref_bodies", "ref_root_quat",
                 "end_effectors"):
        np.testing.assert_allclose(a[slice(*layout[name])], b[slice(*layout[name])], atol=1e-12)


def _mul(a, b):
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, a, b)
    return out


def test_config_from_dict():
    cfg = task.TaskConfig.from_dict({"max_joints": 0.3, "healthy_z": [0.01, 0.5]})
    assert cfg.max_joints == 0.3 and cfg.healthy_z == (0.01, 0.5)
    assert dataclasses.replace(cfg, max_joints=0.4).max_joints == 0.4
    with pytest.raises(ValueError, match="Unknown task config key 'max_joint'"):
        task.TaskConfig.from_dict({"max_joint": 1.0})
