"""Stable-Baselines3: a Gymnasium vector env of the tracking task as SB3's ``VecEnv``.

>>> import gymnasium, ncssm_env
>>> from ncssm_env.sb3 import as_sb3_vec_env
>>> from stable_baselines3 import PPO
>>> venv = as_sb3_vec_env(gymnasium.make_vec("NCSSM-Track-v0", num_envs=8, backend="cpu"))
>>> PPO("MlpPolicy", venv).learn(100_000)

SB3 resets an env in the step that ends its episode (same-step autoreset: the step returns the
new episode's first observation, and the last one in ``info["terminal_observation"]``); the
CPU vector env, like Gymnasium's own, resets it in the next step (``NEXT_STEP``). The adapter
bridges the two: after a step it resets the envs that are done through ``reset_mask``.

Importing this module imports neither torch nor stable_baselines3 (torch with CUDA is about
6 GB, and neither is in the project's test extra); :func:`as_sb3_vec_env` imports SB3.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np


def as_sb3_vec_env(vector_env: gym.vector.VectorEnv):
    """``vector_env`` as a ``stable_baselines3.common.vec_env.VecEnv``.

    ``vector_env``: a Gymnasium vector env with ``NEXT_STEP`` autoreset whose ``reset`` takes
    ``options={"reset_mask": ...}``: the CPU vector env (``gymnasium.make_vec(
    "NCSSM-Track-v0", num_envs=N, backend="cpu")``), or Gymnasium's sync and async envs
    (``vectorization_mode="sync"`` or ``"async"``). The MJX env (same-step autoreset, JAX
    arrays) is for brax, not SB3.

    ``step`` returns SB3's ``(obs, rewards, dones, infos)``: ``dones`` is terminated or
    truncated, each info dict carries the env's ``clip``, ``t`` and ``metrics``, plus SB3's
    ``TimeLimit.truncated`` and, for a done env, ``terminal_observation``.
    ``seed(s)`` then ``reset()`` seeds the vector env with ``s`` (Gymnasium's envs seed env
    ``i`` with ``s + i``, as SB3 does); ``set_options`` passes the reset options on (options
    that differ between envs become one list per option, which the CPU env takes for ``clip``,
    ``start`` and ``noise``). The wrapped env is ``.vector_env``.
    """
    mode = vector_env.metadata.get("autoreset_mode")
    if mode != gym.vector.AutoresetMode.NEXT_STEP:
        raise ValueError(
            f"as_sb3_vec_env needs a vector env with NEXT_STEP autoreset (the CPU env, "
            f"backend='cpu', or Gymnasium's sync and async envs); "
            f"{type(vector_env).__name__} has {mode}."
        )
    return _adapter_class()(vector_env)


def _merge_options(options: list[dict], n: int) -> dict | None:
    """SB3's per-env reset options as one dict for the vector env."""
    if not any(options):
        return None
    if all(_same(o, options[0]) for o in options):
        return dict(options[0])
    keys = sorted(set().union(*options))
    partial = [k for k in keys if any(k not in o for o in options)]
    if partial:
        raise ValueError(f"Reset option {partial[0]!r} is set for some envs only; the vector env "
                         f"resets its {n} envs together, so set it for every env.")
    return {k: [o[k] for o in options] for k in keys}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@functools.cache
def _adapter_class():
    try:
        from stable_baselines3.common.env_util import is_wrapped
        from stable_baselines3.common.vec_env import VecEnv
    except ImportError:
        raise ImportError("as_sb3_vec_env needs stable-baselines3: pip install "
                          "stable-baselines3 (it brings torch).") from None
    from gymnasium.wrappers.vector import DictInfoToList

    class SB3VecEnv(VecEnv):
        """A Gymnasium ``NEXT_STEP`` vector env as SB3's ``VecEnv``; see :func:`as_sb3_vec_env`."""

        def __init__(self, vector_env: gym.vector.VectorEnv):
            self.vector_env = vector_env
            self._lists = DictInfoToList(vector_env)  # info dicts of arrays -> a dict per env
            self._actions: np.ndarray | None = None
            super().__init__(vector_env.num_envs, vector_env.single_observation_space,
                             vector_env.single_action_space)

        def reset(self):
            options = _merge_options(self._options, self.num_envs)
            obs, self.reset_infos = self._lists.reset(seed=self._seeds[0], options=options)
            self._reset_seeds()
            self._reset_options()
            return obs

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = np.asarray(actions)

        def step_wait(self):
            obs, rewards, terminated, truncated, infos = self._lists.step(self._actions)
            dones = np.asarray(terminated, bool) | np.asarray(truncated, bool)
            for info, term, trunc in zip(infos, terminated, truncated):
                info["TimeLimit.truncated"] = bool(trunc and not term)
            if dones.any():
                obs = np.array(obs)
                for i in np.flatnonzero(dones):
                    infos[i]["terminal_observation"] = obs[i].copy()
                new_obs, reset_infos = self._lists.reset(options={"reset_mask": dones})
                obs[dones] = np.asarray(new_obs)[dones]
                for i in np.flatnonzero(dones):
                    self.reset_infos[i] = reset_infos[i]
            return obs, np.asarray(rewards, np.float32), dones, infos

        def close(self) -> None:
            self.vector_env.close()

        def get_images(self):
            if self.render_mode != "rgb_array":
                return [None] * self.num_envs
            return list(self.vector_env.render())

        # Gymnasium's sync and async envs hold an env per index; the CPU env's N envs share
        # one model, task and spaces, so an attribute is the vector env's, the same for all.

        def get_attr(self, attr_name: str, indices=None) -> list[Any]:
            idx = list(self._get_indices(indices))
            if hasattr(self.vector_env, "get_attr"):
                values = self.vector_env.get_attr(attr_name)
                return [values[i] for i in idx]
            return [getattr(self.vector_env, attr_name)] * len(idx)

        def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
            idx = list(self._get_indices(indices))
            if hasattr(self.vector_env, "set_attr"):
                values = list(self.vector_env.get_attr(attr_name))
                for i in idx:
                    values[i] = value
                self.vector_env.set_attr(attr_name, values)
            elif sorted(idx) == list(range(self.num_envs)):
                setattr(self.vector_env, attr_name, value)
            else:
                raise NotImplementedError(
                    f"{type(self.vector_env).__name__}'s envs share their attributes; set "
                    f"{attr_name!r} for all envs (indices=None).")

        def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs):
            if not hasattr(self.vector_env, "call"):
                raise NotImplementedError(
                    f"{type(self.vector_env).__name__} steps its envs together and has no env "
                    f"per index to call {method_name!r} on; call it on .vector_env.")
            values = self.vector_env.call(method_name, *method_args, **method_kwargs)
            return [values[i] for i in self._get_indices(indices)]

        def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
            envs = getattr(self.vector_env, "envs", None)  # the sync env's; the others: none
            return [envs is not None and is_wrapped(envs[i], wrapper_class)
                    for i in self._get_indices(indices)]

    return SB3VecEnv
