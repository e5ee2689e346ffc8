"""The built-in clips: a known behaviour program rolled out in the body.

The program has three levels, and every level is saved, so each modeling mode has ground truth:

1. **Syllables.** A sticky Markov chain over :data:`SYLLABLES` (stay with ``p_stay`` each
   frame, otherwise jump uniformly to another syllable).
2. **Intentions.** A 16-d process ``z`` made of 8 damped, noise-driven 2-d oscillators whose
   frequency, decay, noise and mean depend on the syllable:
   ``z_t = mu_s + rho_s * R(omega_s dt) (z_{t-1} - mu_s) + sqrt(1 - rho_s^2) * eps_t``.
3. **Controls.** A squashed motor-synergy map ``ctrl_t = amp_t * tanh(W z_t)``, with ``W``
   (nu, 16) drawn once from the seed and per-actuator amplitudes ``amp_t`` that follow the
   syllable's per-group amplitudes (hind limbs, fore limbs, head, spine) through a first-order
   filter, so switching syllables changes which groups move without jumps.

Physics gives the states. Alignment follows the clip convention: ``ctrl[t]``, ``latent_mean[t]``
and ``syllables[t]`` moved the body from frame ``t-1`` to frame ``t``; frame 0 comes after a
settle and a burn-in, so ``ctrl[0]`` is the control that really preceded it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np
from tqdm.auto import tqdm

from ncssm_data import obs_slice, write_clip
from ncssm_env import task
from ncssm_env.body import BodyIndex, body_def, body_index, build_model
from ncssm_env.reference import clip_kinematics

VERSION = 1  # bump when the program changes; it names the cache folder
SYLLABLES = ("rest", "groom", "rear", "explore", "dart")
CACHE_ENV = "NCSSM_CACHE"


@dataclass(frozen=True)
class Syllable:
    """One behaviour: per-group control amplitudes and intention dynamics.

    ``amp`` maps an actuator group to its amplitude (groups absent from a body are ignored);
    ``freq`` is the oscillators' frequency (Hz), ``rho`` their per-frame decay and
    ``mean_scale`` the size of the syllable's mean intention.
    """

    amp: dict[str, float]
    freq: float
    rho: float
    mean_scale: float


@dataclass(frozen=True)
class Program:
    """The behaviour program's parameters; the defaults make the built-in clips.

    The amplitudes keep the rodent upright: hind limbs and spine small, fore limbs and head
    larger (see shared/NOTES.md).
    """

    syllables: tuple[Syllable, ...] = (
        Syllable({"hind": 0.05, "fore": 0.1, "head": 0.1, "spine": 0.05}, 0.3, 0.995, 0.2),
        Syllable({"hind": 0.1, "fore": 0.8, "head": 0.5, "spine": 0.1}, 3.0, 0.98, 0.5),
        Syllable({"hind": 0.15, "fore": 0.4, "head": 0.6, "spine": 0.1}, 0.5, 0.99, 0.6),
        Syllable({"hind": 0.2, "fore": 0.6, "head": 1.0, "spine": 0.1}, 1.0, 0.98, 0.5),
        Syllable({"hind": 0.2, "fore": 0.8, "head": 0.3, "spine": 0.1}, 4.0, 0.97, 0.3),
    )
    int_dim: int = 16
    p_stay: float = 0.98
    amp_filter: float = 0.1
    settle_s: float = 0.5
    burn_in_s: float = 1.0
    upright_min: float = 0.5


@dataclass
class _Params:
    """Everything drawn once from the seed and shared by the clips."""

    W: np.ndarray  # (nu, int_dim)
    amp: np.ndarray  # (S, nu): each syllable's amplitude per actuator
    mu: np.ndarray  # (S, int_dim)
    rot: np.ndarray  # (S, int_dim, int_dim): rho_s * R(omega_s dt)
    noise: np.ndarray  # (S,)
    trans: np.ndarray = field(repr=False)  # (S, S) row-stochastic


def _params(model: mujoco.MjModel, body: str, program: Program, control_dt: float,
            rng: np.random.Generator) -> _Params:
    bdef = body_def(body)
    names = [model.actuator(i).name.removeprefix("walker/") for i in range(model.nu)]
    group = [next((g for g, pre in bdef.actuator_groups.items() if n.startswith(pre)), None)
             for n in names]
    S, Z = len(program.syllables), program.int_dim
    amp = np.array([[s.amp.get(g, 0.0) if g else 0.0 for g in group] for s in program.syllables])
    rot = np.zeros((S, Z, Z))
    for k, s in enumerate(program.syllables):
        c, sn = np.cos(2 * np.pi * s.freq * control_dt), np.sin(2 * np.pi * s.freq * control_dt)
        for j in range(0, Z, 2):
            rot[k, j:j + 2, j:j + 2] = s.rho * np.array([[c, -sn], [sn, c]])
    trans = np.full((S, S), (1 - program.p_stay) / (S - 1))
    np.fill_diagonal(trans, program.p_stay)
    return _Params(
        W=rng.normal(0.0, 1.0 / np.sqrt(Z), (model.nu, Z)),
        amp=amp,
        mu=np.stack([s.mean_scale * rng.normal(size=Z) for s in program.syllables]),
        rot=rot,
        noise=np.array([np.sqrt(1 - s.rho**2) for s in program.syllables]),
        trans=trans,
    )


def rollout_clip(model: mujoco.MjModel, idx: BodyIndex, params: _Params, program: Program,
                 n_frames: int, n_substeps: int, rng: np.random.Generator, K: int = 5) -> dict:
    """Roll the program out for ``n_frames`` frames; returns the clip's arrays.

    obs (T, D_obs) in the env's layout for K reference frames, ctrl (T, nu), latent_mean
    (T, int_dim), syllables (T,), qpos (T, nq), qvel (T, nv), act (T, na).
    """
    data = mujoco.MjData(model)
    control_dt = model.opt.timestep * n_substeps
    S = len(program.syllables)
    s = int(rng.integers(S))
    z = params.mu[s] + rng.normal(size=program.int_dim)
    amp = params.amp[s].copy()
    settle = round(program.settle_s / control_dt)
    burn_in = round(program.burn_in_s / control_dt)
    T = n_frames
    out = {
        "qpos": np.empty((T, model.nq)), "qvel": np.empty((T, model.nv)),
        "act": np.empty((T, model.na)), "ctrl": np.empty((T, model.nu), np.float32),
        "latent_mean": np.empty((T, program.int_dim), np.float32),
        "syllables": np.empty(T, np.int32),
    }
    mujoco.mj_step(model, data, nstep=settle * n_substeps)  # drop and settle, no control
    for step in range(burn_in + T):
        s = int(rng.choice(S, p=params.trans[s]))
        z = params.mu[s] + params.rot[s] @ (z - params.mu[s]) + params.noise[s] * rng.normal(
            size=program.int_dim)
        amp += program.amp_filter * (params.amp[s] - amp)
        ctrl = (amp * np.tanh(params.W @ z)).astype(np.float32)
        data.ctrl[:] = ctrl  # the float32 value, so replaying the stored ctrl is exact
        mujoco.mj_step(model, data, nstep=n_substeps)
        t = step - burn_in
        if t >= 0:
            out["qpos"][t], out["qvel"][t], out["act"][t] = data.qpos, data.qvel, data.act
            out["ctrl"][t], out["latent_mean"][t], out["syllables"][t] = ctrl, z, s
    ref = clip_kinematics(model, idx, out["qpos"], out["qvel"])
    window = task.take(np, ref, task.window(np, T, np.arange(T), K))
    out["obs"] = task.observation(
        np, ref, window, out["ctrl"].astype(np.float64), idx.n_end_effectors
    ).astype(np.float32)
    return out


def upright_fraction(obs: np.ndarray, layout: dict, threshold: float = 0.5) -> float:
    """Fraction of frames of ``obs (T, D_obs)`` whose torso z axis has an up-component above
    ``threshold``, read from the layout's ``torso_up`` slice."""
    return float(np.mean(obs[:, obs_slice(layout, "torso_up")][:, 2] > threshold))


def generate(out_dir: str | Path, body: str = "rodent", n_clips: int = 32, n_frames: int = 600,
             seed: int = 0, K: int = 5, n_substeps: int = 10, timestep: float = 0.002,
             workers: int | None = None, progress: bool = True) -> list[float]:
    """Write ``n_clips`` clips ``clip_<i>.h5`` of ``n_frames`` frames into ``out_dir``.

    The same seed gives the same clips, whatever ``workers`` is: clip i draws from its own
    ``SeedSequence(seed).spawn`` child, and the program's parameters from the seed itself.
    Returns each clip's upright fraction.
    """
    if n_clips < 1 or n_frames < K + 1:
        raise ValueError(
            f"Need n_clips >= 1 and n_frames >= K + 1 = {K + 1}; got {n_clips} and {n_frames}."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(body, timestep=timestep)
    idx = body_index(model, body)
    control_dt = timestep * n_substeps
    program = Program()
    root = np.random.SeedSequence(seed)
    params = _params(model, body, program, control_dt, np.random.default_rng(root))
    layout = task.obs_layout(K, idx)
    children = root.spawn(n_clips)
    upright = [0.0] * n_clips
    lock = threading.Lock()

    def one(i: int) -> None:
        arrays = rollout_clip(model, idx, params, program, n_frames, n_substeps,
                              np.random.default_rng(children[i]), K)
        with lock:  # h5py is not thread-safe for writing
            write_clip(out_dir / f"clip_{i}.h5", arrays, obs_layout=layout, body=body,
                       control_dt=control_dt,
                       generator=f"ncssm_env.synthetic v{VERSION} seed={seed} clip={i}")
        upright[i] = upright_fraction(arrays["obs"], layout, program.upright_min)

    workers = workers or min(os.cpu_count() or 1, n_clips)
    with ThreadPoolExecutor(workers) as pool, tqdm(
        total=n_clips, desc=f"built-in {body} clips", unit="clip", disable=not progress
    ) as bar:
        for _ in pool.map(one, range(n_clips)):
            bar.update()
    return upright


def cache_dir() -> Path:
    """Where built-in clips are cached: ``$NCSSM_CACHE``, else ``$XDG_CACHE_HOME/ncssm``, else
    ``~/.cache/ncssm`` (platformdirs' user cache folder on Linux; a blank variable counts as
    unset)."""
    if os.environ.get(CACHE_ENV, "").strip():
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ncssm"


def builtin_clips(body: str = "rodent", n_clips: int = 64, n_frames: int = 600,
                  seed: int = 0, timestep: float = 0.002, n_substeps: int = 10) -> Path:
    """The folder of the built-in clips of ``body``, generated on first use.

    Clips are made at the physics ``timestep`` and ``n_substeps`` asked for, so an env with
    other physics settings gets clips whose frames match its control step.

    Generation writes into a temporary folder beside the cache entry and renames it into
    place, so an interrupted run leaves no half-made entry and concurrent runs are safe.
    """
    body_def(body)
    name = f"builtin-{body}-v{VERSION}-seed{seed}-{n_clips}x{n_frames}"
    if (timestep, n_substeps) != (0.002, 10):
        name += f"-dt{timestep:g}x{n_substeps}"
    return cached(cache_dir() / name, lambda tmp: generate(
        tmp, body=body, n_clips=n_clips, n_frames=n_frames, seed=seed, timestep=timestep,
        n_substeps=n_substeps))


def cached(path: Path, fill) -> Path:
    """The cache entry ``path``, made when absent by ``fill(tmp)`` writing into a temporary
    folder beside it, then renamed into place: an interrupted run leaves no half-made entry
    (the next one removes its temp folder), and concurrent runs wait for the one making it."""
    from ncssm_data.locks import writing

    if path.is_dir():
        return path
    with writing(path.parent, what=f"a process making {path.name}", wait=3600):
        if path.is_dir():  # made while this process waited
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
        try:
            fill(tmp)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def clips_or_builtin(clip_dir, body: str = "rodent", timestep: float = 0.002,
                     n_substeps: int = 10) -> Path:
    """``clip_dir`` as a Path, or, when it is None, the built-in clips of ``body`` at these
    physics settings (generated on first use): the one place that default is decided."""
    if clip_dir is not None:
        return Path(clip_dir)
    return builtin_clips(body, timestep=timestep, n_substeps=n_substeps)
