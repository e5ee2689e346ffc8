"""DAgger (Ross, Gordon & Bagnell 2011) in ``ncssm-train``, for the modes that act.

Behaviour cloning learns only the states the clips show; DAgger adds the states the policy
itself reaches. Config ``dagger: {rounds, episodes, beta, expert}`` (:data:`DEFAULTS`). Round
k (of ``rounds``) comes after epoch ``e_k = k * epochs // (rounds + 1)``:

1. ``episodes`` episodes on the training clips, in the CPU vector env, each from a start
   frame that leaves at least ``seg_len + 1`` frames and the task's reset noise. At every
   step each env executes the expert's control with probability ``beta``, else the current
   policy's (one draw per env and step);
2. the registered ``expert`` labels every visited state (``/ctrl_expert``, what the modes that
   act learn from), as in a DART clip (:mod:`ncssm_env.dart`): the states, the control
   executed, and the nominal clip as the reference;
3. rollouts of at least ``seg_len + 1`` frames are written as clips of the run folder's
   ``dagger_clips/`` (hard links to the training clips, plus every round's rollouts, each
   with ``dart_of`` its nominal clip, so the split keeps them with it), and the round is
   committed to ``dagger_clips/rounds.json``;
4. training goes on over the aggregated clips (the normalizer stays the one fitted at the
   start), and the closed-loop score of the policy that collected the round (on the val
   clips, as ``select: closed_loop`` measures it) goes to the metrics log with the data sizes.

Everything a round draws follows from the seed and k, and its policy is the checkpoint of
epoch ``e_k`` (always saved), so a run killed anywhere resumes exactly: files that no
committed round wrote are removed, and a round due at the resumed epoch runs again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ncssm_policies.config import DAGGER_DEFAULTS as DEFAULTS
from ncssm_policies.config import ConfigError
FOLDER = "dagger_clips"
MANIFEST = "rounds.json"


def settings(cfg) -> dict:
    """The config's ``dagger`` mapping over :data:`DEFAULTS`."""
    return {**DEFAULTS, **(cfg.dagger or {})}


def round_epochs(cfg) -> list[int]:
    """The epochs after which rounds 1..R run: ``k * epochs // (R + 1)``, distinct and in
    ``[1, epochs - 1]``."""
    R = settings(cfg)["rounds"]
    return [k * cfg.epochs // (R + 1) for k in range(1, R + 1)]


def make_expert(cfg, body: str):
    """The config's registered expert, made for ``body``; a ConfigError when unknown."""
    from ncssm_env.body import build_model
    from ncssm_policies.registry import UnknownPolicyError, registry

    name = settings(cfg)["expert"]
    try:
        spec = registry().get_expert(name)
    except UnknownPolicyError as err:
        raise ConfigError(f"Config key 'dagger.expert': {err}") from None
    return spec.make(build_model(body))


def check_clips(store, where) -> None:
    """The clips must hold ``/qpos``: the expert tracks it to label the visited states."""
    if not store.has("qpos"):
        raise ConfigError(f"Config key 'dagger' needs an expert to label the states the policy "
                          f"visits, and an expert tracks /qpos, which the clips in {where} do "
                          f"not all hold.")


class Aggregate:
    """The run folder's ``dagger_clips/``: hard links (or copies, across file systems) of the
    ``source`` clips under their own names, then each committed round's rollouts, listed in
    ``rounds.json`` (written atomically after the round's clips)."""

    def __init__(self, run_dir: Path, source: Path):
        self.dir, self.source = Path(run_dir) / FOLDER, Path(source)
        self.manifest = self.dir / MANIFEST

    def _source_names(self) -> list[str]:
        from ncssm_data.clips import _clip_paths

        return [p.name for p in _clip_paths(self.source)]

    def rounds(self) -> list[dict]:
        if not self.manifest.is_file():
            return []
        return json.loads(self.manifest.read_text())["rounds"]

    def frames(self) -> int:
        return sum(r["frames"] for r in self.rounds())

    def _write(self, rounds: list[dict]) -> None:
        from ncssm_data.clips import atomic_path

        data = {"source": str(self.source), "source_clips": self._source_names(),
                "rounds": rounds}
        with atomic_path(self.manifest) as tmp:
            tmp.write_text(json.dumps(data, indent=2))

    def prepare(self, done_epochs: int) -> list[dict]:
        """Make the folder when absent, keep the rounds committed by epoch ``done_epochs`` and
        remove every other file a round wrote (a killed round's, or a later one's); the kept
        rounds."""
        names = self._source_names()
        if not self.dir.is_dir():
            tmp = self.dir.with_name(f".{FOLDER}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name in names:
                try:
                    os.link(self.source / name, tmp / name)
                except OSError:
                    shutil.copy2(self.source / name, tmp / name)
            os.replace(tmp, self.dir)
        for old in self.dir.parent.glob(f".{FOLDER}.tmp-*"):
            shutil.rmtree(old, ignore_errors=True)
        if self.manifest.is_file():
            saved = json.loads(self.manifest.read_text())["source_clips"]
            if saved != names:
                raise ConfigError(f"{self.dir} was made from the {len(saved)} clips then in "
                                  f"{self.source}, which now holds {len(names)} others; resume "
                                  f"with the same clips or start a new run.")
        all_rounds = self.rounds()
        kept = [r for r in all_rounds if r["epoch"] <= done_epochs]
        keep = set(names) | {c for r in kept for c in r["clips"]} | {MANIFEST}
        for path in self.dir.iterdir():
            if path.name not in keep:
                path.unlink()
        if len(kept) != len(all_rounds):
            self._write(kept)
        return kept

    def commit(self, record: dict) -> None:
        self._write(self.rounds() + [record])


def run_round(pol, cfg, agg: Aggregate, k: int, epoch: int, step: int) -> dict:
    """Round ``k`` (1-based) with policy ``pol`` (a :class:`LoadedPolicy`), after ``epoch``
    epochs (``step``): roll out, label, write and commit; the committed record."""
    import jax

    from ncssm_data import ClipStore
    from ncssm_data.dataset import split_store
    from ncssm_data.modes import get_mode
    from ncssm_env.dart import track, write_rollouts
    from ncssm_policies.rollout import _policy_actor, _policy_parts, _syllable_table

    s = settings(cfg)
    E, beta = s["episodes"], float(s["beta"])
    mode = get_mode(cfg.mmode)
    with ClipStore(agg.dir) as store:
        check_clips(store, agg.dir)
        train = split_store(store, cfg.train_frac, cfg.seed)[0]
        nominal = train[store.dart_of[train] < 0]
        n, body = len(store), store.body or "rodent"
        expert = make_expert(cfg, body)
        rng = np.random.default_rng([cfg.seed, 7, k])
        ids = nominal[rng.integers(len(nominal), size=E)]
        lengths = store.lengths[ids]
        starts = rng.integers(0, np.maximum(lengths - cfg.seg_len - 1, 0) + 1)
        mix = np.random.default_rng([cfg.seed, 8, k])

        def make_control(env):
            lo, hi = env.single_action_space.low, env.single_action_space.high
            parts = _policy_parts(pol, mode, env.obs_layout, env.single_observation_space.shape[0],
                                  env.model.nu, body, agg.dir)
            syl = _syllable_table(store, mode, env.clip_ids, env.lengths, cfg.syllable_key)
            actor, init = _policy_actor(pol, parts, lo, hi, syl)
            actor = jax.jit(actor)
            live = {"carry": init(E), "fresh": np.ones(E, bool)}
            none = np.zeros((E, 0), np.float32)

            def control(obs, a_star, slot, t):
                live["carry"], a = actor(live["carry"], live["fresh"], obs, slot, t, none, none)
                live["fresh"] = np.zeros(E, bool)
                return np.where((mix.random(E) < beta)[:, None], a_star, np.asarray(a))

            return control

        rollouts, _ = track(agg.dir, ids, starts, expert, make_control,
                            seed=int(rng.integers(2**31)), body=body)
    counts = write_rollouts(agg.dir, rollouts, ids, min_len=cfg.seg_len + 1, start=n,
                            generator=f"ncssm-train DAgger round {k} (beta {beta:g}, expert "
                                      f"{s['expert']})")
    survived = sum(len(r["qpos"]) == L - s0 for r, L, s0 in zip(rollouts, lengths, starts))
    record = {"round": k, "epoch": epoch, "step": step, "episodes": E, "beta": beta,
              "expert": s["expert"], "clips": [p.name for p in counts["paths"]],
              "frames": counts["frames"], "short": counts["short"],
              "visited_frames": int(sum(len(r["qpos"]) for r in rollouts)),
              "rollout_survival": survived / E}
    agg.commit(record)
    return record
