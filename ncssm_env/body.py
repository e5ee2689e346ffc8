"""Build the MjModel: the arena in ``ncssm_env/xml/arena.xml`` plus a body looked up by name.

Two bodies are known:

- ``"rodent"``: dm-control's ``locomotion/walkers/assets/rodent.xml`` (found through
  ``importlib.resources``; the repository holds no copy) with a free root joint added:
  nq 74, nv 73, 38 filter-activated position servos (na 38).
- ``"test"``: ``ncssm_env/xml/test_body.xml``, a small quadruped (free root, 4 hinges) that compiles and
  steps in seconds under MJX; the tests use it where the rodent would be too slow.

Contacts. ``contacts="body"`` (the default) lets every collision geom touch the floor but never
another geom of the body (contype 1, conaffinity 0; the floor has conaffinity 1): a fallen body
lies on the floor, and ``mjx.put_model`` accepts it because no ellipsoid-box pair can collide.
``contacts="paws"`` keeps only the paw geoms, which is faster under MJX but lets a fallen body
sink through the floor. ``contacts="all"`` also lets the body's collision geoms touch each
other (MuJoCo still skips parent-child pairs); MJX refuses it for the rodent, whose ellipsoids
could then meet its boxes.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from typing import Callable

import mujoco
import numpy as np

from ncssm_data.errors import check_count

CONTACTS = ("body", "paws", "all")
SOLVERS = {"newton": mujoco.mjtSolver.mjSOL_NEWTON, "cg": mujoco.mjtSolver.mjSOL_CG}
PREFIX = "walker/"  # every name from the body's MJCF gets this prefix in the model


def _xml_path(name: str) -> str:
    return str(importlib.resources.files("ncssm_env") / "xml" / name)


def _rodent_spec() -> mujoco.MjSpec:
    path = importlib.resources.files("dm_control") / "locomotion/walkers/assets/rodent.xml"
    spec = mujoco.MjSpec.from_file(str(path))
    spec.njmax = spec.nconmax = -1  # sizes are the arena's to set
    return spec


def _test_spec() -> mujoco.MjSpec:
    return mujoco.MjSpec.from_file(_xml_path("test_body.xml"))


@dataclass(frozen=True)
class BodyDef:
    """What the task and the behaviour program need to know about a body, by name.

    ``end_effectors`` and ``bodies`` are body names whose world positions are tracked;
    ``healthy_z`` is the torso height range (m) outside which an episode terminates;
    ``actuator_groups`` maps a group ("hind", "fore", ...) to actuator-name prefixes.
    """

    name: str
    load: Callable[[], mujoco.MjSpec]
    root: str
    torso: str
    end_effectors: tuple[str, ...]
    bodies: tuple[str, ...]
    healthy_z: tuple[float, float]
    is_collision: Callable[[mujoco.MjsGeom], bool]
    is_paw: Callable[[mujoco.MjsGeom], bool]
    actuator_groups: dict[str, tuple[str, ...]]


BODIES: dict[str, BodyDef] = {
    "rodent": BodyDef(
        name="rodent",
        load=_rodent_spec,
        root="torso",
        torso="torso",
        end_effectors=("hand_L", "hand_R", "foot_L", "foot_R", "skull"),
        bodies=(
            "pelvis", "upper_leg_L", "upper_leg_R", "lower_leg_L", "lower_leg_R",
            "upper_arm_L", "upper_arm_R", "lower_arm_L", "lower_arm_R", "vertebra_cervical_5",
        ),
        healthy_z=(0.0275, 0.2),
        # The 81 ``collision*`` geoms; the 19 ``nonself_collision_primitive`` tail geoms stay out.
        is_collision=lambda g: g.classname.name.startswith("collision"),
        is_paw=lambda g: g.classname.name == "collision_primitive_paw",
        actuator_groups={
            "hind": ("hip_", "knee_", "ankle_", "toe_"),
            "fore": ("scapula_", "shoulder_", "elbow_", "wrist_", "finger_"),
            "head": ("cervical_", "atlas", "mandible"),
            "spine": ("lumbar_", "caudal_"),
        },
    ),
    "test": BodyDef(
        name="test",
        load=_test_spec,
        root="torso",
        torso="torso",
        end_effectors=("foot_FL", "foot_FR", "foot_HL", "foot_HR"),
        bodies=("leg_FL", "leg_HR"),
        healthy_z=(0.03, 0.3),
        is_collision=lambda g: True,
        is_paw=lambda g: g.name.startswith("foot_"),
        actuator_groups={"fore": ("hip_F",), "hind": ("hip_H",)},
    ),
}


def body_def(body: str) -> BodyDef:
    """The :class:`BodyDef` named ``body``; an unknown name lists the known ones."""
    try:
        return BODIES[body]
    except KeyError:
        raise ValueError(
            f"Unknown body {body!r}; expected one of {sorted(BODIES)}."
        ) from None


def build_model(
    body: str = "rodent",
    *,
    contacts: str = "body",
    timestep: float = 0.002,
    solver: str | None = None,
    iterations: int | None = None,
    ls_iterations: int | None = None,
    sites: dict[str, tuple[str, tuple[float, float, float]]] | None = None,
) -> mujoco.MjModel:
    """Compile the arena with ``body`` attached at the origin under a free root joint.

    ``sites`` adds a site per entry, ``{name: (body, pos)}`` with ``pos`` in the body's frame,
    metres (keypoint fitting marks its keypoints so); they are named ``"walker/<name>"``.

    Names inside the body get the prefix ``"walker/"`` (``"walker/torso"``, ``"walker/hand_L"``),
    as dm-control does; the free joint is ``"walker/root"``. ``timestep`` is the physics step in seconds; the control step is
    ``timestep * n_substeps`` and belongs to the env.

    Constraint solver: ``solver`` (``"newton"`` or ``"cg"``), ``iterations`` and
    ``ls_iterations`` (line search); ``None`` keeps the arena's (Newton, 50 and 20, which the
    built-in clips were made with; Newton stops on its tolerance long before either cap).
    GPU users cap them (5 and 5 is common) for speed; the README says how far that drifts.
    """
    bdef = body_def(body)
    if contacts not in CONTACTS:
        raise ValueError(f"Unknown contacts {contacts!r}; expected one of {list(CONTACTS)}.")
    if not timestep > 0:
        raise ValueError(f"timestep must be > 0 seconds, got {timestep!r}.")
    if solver is not None and solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; expected one of {list(SOLVERS)} or None "
                         f"(the arena's, newton).")
    for name, n in (("iterations", iterations), ("ls_iterations", ls_iterations)):
        if n is not None:
            check_count(name, n)
    arena = mujoco.MjSpec.from_file(_xml_path("arena.xml"))
    arena.option.timestep = timestep
    if solver is not None:
        arena.option.solver = SOLVERS[solver]
    if iterations is not None:
        arena.option.iterations = int(iterations)
    if ls_iterations is not None:
        arena.option.ls_iterations = int(ls_iterations)
    spec = bdef.load()
    keep = bdef.is_paw if contacts == "paws" else bdef.is_collision
    for geom in spec.geoms:
        touches_floor = bdef.is_collision(geom) and keep(geom)
        geom.contype = 1 if touches_floor else 0
        geom.conaffinity = 1 if touches_floor and contacts == "all" else 0
    for name, (parent, pos) in (sites or {}).items():
        if spec.body(parent) is None:
            raise ValueError(f"Site {name!r} is on body {parent!r}, which {body!r} does not have.")
        spec.body(parent).add_site(name=name, pos=[float(p) for p in pos], size=[0.004] * 3,
                                   group=3, rgba=[0.9, 0.1, 0.1, 1.0])
    root = spec.body(bdef.root)
    root.add_freejoint(name="root")
    arena.worldbody.add_frame().attach_body(root, PREFIX, "")
    arena.camera("track").targetbody = PREFIX + bdef.root
    return arena.compile()


@dataclass(frozen=True)
class BodyIndex:
    """Integer ids into an ``MjModel`` for the task math (numpy arrays, usable under jit).

    ``points`` are the tracked bodies in the task's order: the root, then the
    ``n_end_effectors`` end effectors, then the ``n_bodies`` other bodies.
    """

    root: int
    torso: int
    points: np.ndarray  # (1 + n_end_effectors + n_bodies,) body ids
    n_end_effectors: int
    n_bodies: int
    nq: int
    nv: int
    nu: int
    na: int


def body_index(model: mujoco.MjModel, body: str) -> BodyIndex:
    """Look up the ids the task needs; every name must exist in ``model``."""
    bdef = body_def(body)

    points = (bdef.root, *bdef.end_effectors, *bdef.bodies)
    return BodyIndex(
        root=model.body(PREFIX + bdef.root).id,
        torso=model.body(PREFIX + bdef.torso).id,
        points=np.array([model.body(PREFIX + n).id for n in points], dtype=np.int32),
        n_end_effectors=len(bdef.end_effectors),
        n_bodies=len(bdef.bodies),
        nq=model.nq,
        nv=model.nv,
        nu=model.nu,
        na=model.na,
    )
