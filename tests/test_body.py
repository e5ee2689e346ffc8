"""The body builder: the rodent and the test body, contacts, and MJX acceptance."""

import subprocess
import sys
import zipfile

import mujoco
import numpy as np
import pytest

from ncssm_env.body import BODIES, PREFIX, body_index, build_model


def _floor_geoms(model):
    body_geoms = np.arange(model.ngeom)[model.geom_bodyid > 0]
    return body_geoms[model.geom_contype[body_geoms] > 0], body_geoms


def test_rodent_dimensions_and_contacts():
    m = build_model("rodent")
    assert (m.nq, m.nv, m.nu, m.na, m.njnt) == (74, 73, 38, 38, 68)
    assert m.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE
    floor, body_geoms = _floor_geoms(m)
    assert len(floor) == 81
    assert (m.geom_conaffinity[body_geoms] == 0).all()  # never each other
    assert m.geom_conaffinity[m.geom("floor").id] == 1
    assert m.opt.timestep == 0.002
    np.testing.assert_array_equal(m.actuator_ctrlrange, np.tile([-1.0, 1.0], (38, 1)))


def test_rodent_paw_contacts():
    floor, _ = _floor_geoms(build_model("rodent", contacts="paws"))
    assert len(floor) == 16


def test_fallen_rodent_lies_on_the_floor():
    """Dropped on its side, the rodent comes to rest on the floor, not under it."""
    m = build_model("rodent")
    d = mujoco.MjData(m)
    d.qpos[2] = 0.05
    d.qpos[3:7] = [np.cos(np.pi / 4), np.sin(np.pi / 4), 0, 0]  # rolled 90 degrees
    mujoco.mj_step(m, d, nstep=500)
    idx = body_index(m, "rodent")
    assert 0.005 < d.xpos[idx.torso, 2] < 0.05
    assert d.xmat[idx.torso, 8] < 0.5  # still on its side


def test_test_body_steps_stably():
    m = build_model("test")
    d = mujoco.MjData(m)
    for i in range(1000):
        d.ctrl[:] = np.sin(0.02 * i * np.arange(1, m.nu + 1))
        mujoco.mj_step(m, d)
    assert np.isfinite(d.qpos).all() and 0.02 < d.qpos[2] < 0.2


def test_names_are_prefixed():
    m = build_model("test")
    assert m.joint(0).name == PREFIX + "root"
    assert m.camera("track").id >= 0


def test_unknown_body_lists_known_names():
    with pytest.raises(ValueError, match=r"Unknown body 'mouse'.*'rodent'.*'test'"):
        build_model("mouse")


def test_unknown_contacts_option():
    with pytest.raises(ValueError, match="Unknown contacts 'none'"):
        build_model("test", contacts="none")


def test_all_contacts_let_the_body_touch_itself():
    import mujoco

    m = build_model("rodent", contacts="all")
    body = [g for g in range(m.ngeom) if m.geom_contype[g]]
    assert body and all(m.geom_conaffinity[g] == 1 for g in body)
    own = build_model("rodent")  # "body": the floor only
    assert not any(own.geom_conaffinity[g] for g in range(own.ngeom) if own.geom_contype[g])
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)  # compiles and runs with self-contacts


@pytest.mark.parametrize("body", sorted(BODIES))
def test_mjx_put_model_accepts_body(body, jax_cache):
    from mujoco import mjx

    m = mjx.put_model(build_model(body))
    assert m.nq == build_model(body).nq


def test_mjx_step_on_test_body_matches_mujoco(jax_cache):
    """Full ``mjx.step`` on the test body, 50 steps, against MuJoCo C from the same state."""
    import jax
    from mujoco import mjx

    m = build_model("test")
    d = mujoco.MjData(m)
    d.ctrl[:] = [0.5, -0.5, 0.3, -0.3]
    mx = mjx.put_model(m)
    dx = mjx.put_data(m, d)

    @jax.jit
    def run(dx):
        return jax.lax.fori_loop(0, 50, lambda _, x: mjx.step(mx, x), dx)

    dx = run(dx)
    mujoco.mj_step(m, d, nstep=50)
    qpos = np.asarray(dx.qpos)
    assert np.isfinite(qpos).all()
    np.testing.assert_allclose(qpos, d.qpos, atol=2e-3)


def test_xml_ships_in_the_wheel(tmp_path):
    """The MJCF files are package data, so an installed (non-editable) ncssm finds them."""
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        check=True,
    )
    (wheel,) = tmp_path.glob("ncssm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ncssm_env/xml/arena.xml" in names and "ncssm_env/xml/test_body.xml" in names


def test_solver_settings(test_clips):
    from ncssm_env.gym_env import TrackEnv

    default = build_model("test")
    assert (default.opt.solver, default.opt.iterations, default.opt.ls_iterations) == (
        mujoco.mjtSolver.mjSOL_NEWTON, 50, 20)  # the arena's, which the clips were made with
    m = build_model("test", solver="cg", iterations=5, ls_iterations=5)
    assert (m.opt.solver, m.opt.iterations, m.opt.ls_iterations) == (
        mujoco.mjtSolver.mjSOL_CG, 5, 5)
    env = TrackEnv(body="test", clip_dir=test_clips, solver="cg", iterations=5, ls_iterations=4)
    assert (env.model.opt.solver, env.model.opt.iterations, env.model.opt.ls_iterations) == (
        mujoco.mjtSolver.mjSOL_CG, 5, 4)
    with pytest.raises(ValueError, match="Unknown solver 'pgs'; expected one of"):
        build_model("test", solver="pgs")
    with pytest.raises(ValueError, match="iterations must be an int >= 1, got 0"):
        build_model("test", iterations=0)
    with pytest.raises(ValueError, match="ls_iterations must be an int >= 1, got 2.5"):
        build_model("test", ls_iterations=2.5)
