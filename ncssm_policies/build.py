"""What training, checkpoints and evaluation share: the policy a config builds, its inputs'
shapes, and the clips a run reads.

- :func:`build_model`: the Flax module for a config and the data's dims (the registered
  policy inside the family its mode needs), with :func:`policy_hparams` and
  :func:`dummy_input`; :func:`model_init_params` gives the parameter shapes;
- :func:`data_dims`: the dims a model is built for, from its training data;
- :func:`resolve_clip_dir` and :func:`held_out_clips`: the clip folder of a run and the clips
  its training held out.

Training (:mod:`ncssm_policies.train`), checkpoints (:mod:`ncssm_policies.checkpoint`),
closed-loop evaluation (:mod:`ncssm_policies.rollout`) and open-loop scoring
(:mod:`ncssm_policies.openloop`) sit above this module and import no internals of each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ncssm_data.modes import get_mode
from ncssm_policies.config import ConfigError, TrainConfig


def policy_hparams(cfg: TrainConfig) -> dict:
    """The keyword arguments ``make(out_dim, **hparams)`` of ``cfg.model_type`` receives
    (documented in :mod:`ncssm_policies.hookspecs`): ``d_model``, ``n_layers`` and ``dropout``
    for every policy, the layer keys of the built-in S5 and Mamba, and every key of
    ``model_kwargs``."""
    hparams = dict(d_model=cfg.d_model, n_layers=cfg.n_layers, dropout=cfg.dropout)
    kind = cfg.model_type.strip().lower()
    if kind == "s5":
        hparams.update(state_dim=cfg.ssm_size, blocks=cfg.blocks, C_init=cfg.c_init,
                       discretization=cfg.discretization, dt_min=cfg.dt_min, dt_max=cfg.dt_max,
                       conj_sym=cfg.conj_sym, clip_eigs=cfg.clip_eigs,
                       bidirectional=cfg.bidirectional)
    elif kind == "mamba":
        hparams.update(d_state=cfg.d_state, expand=cfg.expand, dt_min=cfg.dt_min,
                       dt_max=cfg.dt_max)
    return {**hparams, **cfg.model_kwargs}


def _registered(cfg: TrainConfig, reg):
    """The PolicySpec ``cfg.model_type`` names in ``reg``; a ConfigError when none does."""
    conflict = reg.conflicts.get(cfg.model_type.strip().lower())
    if conflict:
        raise ConfigError(f"Config key 'model_type' is {cfg.model_type!r}: {conflict}")
    if cfg.model_type not in reg:
        broken = "".join(f"; plugin {origin} failed to load: {why.rstrip('.')}"
                         for origin, why in sorted(reg.broken.items()))
        raise ConfigError(
            f"Config key 'model_type' is {cfg.model_type!r}, which no installed plugin "
            f"registers; known: {', '.join(reg.names())} (ncssm-train --list-policies){broken}.")
    return reg.get(cfg.model_type)


def build_model(cfg: TrainConfig, dims: dict):
    """The Flax module for ``cfg`` and data ``dims`` (``{"x_in": [...], "x_tgt": D, ...}``)."""
    from ncssm_policies.models import build_policy
    from ncssm_policies.registry import registry

    import flax.linen as nn

    reg = registry()
    spec, family = _registered(cfg, reg), get_mode(cfg.mmode).family
    if family not in spec.families:
        raise ConfigError(f"Policy {cfg.model_type!r} ({reg.policies[spec.name].origin}) serves "
                          f"the families {', '.join(spec.families)}, but mmode {cfg.mmode!r} "
                          f"needs the {family} family.")
    try:
        model = build_policy(spec, cfg.mmode, int(dims["x_tgt"]),
                             int_dim=int(dims.get("int_dim", 16)),
                             decoder_hidden=tuple(cfg.decoder_hidden), embed_dim=cfg.embed_dim,
                             **policy_hparams(cfg))
    except TypeError as err:  # a plugin's make() that does not take these hyper-parameters
        raise ConfigError(f"Policy {cfg.model_type!r} rejected its hyper-parameters: {err}.") from None
    inner = getattr(model, "seq", model)  # the controllers wrap the registered policy
    if not isinstance(inner, nn.Module):
        raise ConfigError(f"Policy {cfg.model_type!r} ({reg.policies[spec.name].origin}) "
                          f"made a {type(inner).__name__}, expected a flax.linen.Module (see "
                          f"ncssm_policies.hookspecs).")
    return model


def preflight(cfg: TrainConfig) -> None:
    """``ncssm-train``'s cheap contract check of a plugin's policy, before any data loads: the
    quick part of :func:`ncssm_policies.testing.check_policy` with the run's hyper-parameters and
    family (shapes and 8 steps of step vs parallel, a few seconds). A failure is a ConfigError
    naming the policy and its plugin. The built-in policies are checked by ncssm's own tests."""
    from ncssm_policies.registry import BUILTIN, registry
    from ncssm_policies.testing import PolicyCheckError, check_policy

    reg = registry()
    spec = _registered(cfg, reg)
    if (reg.policies[spec.name].dist, reg.policies[spec.name].entry_point) == BUILTIN:
        return
    try:
        check_policy(spec.name, policy_hparams(cfg), quick=True, family=get_mode(cfg.mmode).family)
    except PolicyCheckError as err:
        raise ConfigError(f"{str(err).rstrip('.')}; ncssm-train refuses it before loading data "
                          f"(python -m ncssm_policies check {spec.name} runs the full "
                          f"check).") from None


def plugin_blame(err: BaseException) -> str | None:
    """One sentence naming the plugin whose code raised ``err`` (the innermost traceback frame
    in a third-party policy's or expert's package, through ``__cause__``/``__context__``), or
    None when no plugin's code is on the traceback."""
    import os
    import sys
    import traceback

    from ncssm_policies.registry import BUILTIN, registry

    reg = registry()
    roots = {}  # package folder -> "policy 'gru' of plugin ncssm-gru (gru)"
    for kind, table in (("policy", reg.policies), ("expert", reg.experts)):
        for name, item in table.items():
            if (item.dist, item.entry_point) == BUILTIN:
                continue
            top = sys.modules.get(str(getattr(item.spec.make, "__module__", "")).split(".")[0])
            for folder in getattr(top, "__path__", None) or [os.path.dirname(
                    getattr(top, "__file__", "") or "")]:
                if folder:
                    roots[os.path.realpath(folder) + os.sep] = (
                        f"{kind} {name!r} of plugin {item.origin}")
    seen, chain = set(), err
    while chain is not None and id(chain) not in seen and roots:
        seen.add(id(chain))
        for frame in reversed(traceback.extract_tb(chain.__traceback__)):
            path = os.path.realpath(frame.filename)
            for root, who in roots.items():
                if path.startswith(root):
                    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                    what = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
                    return (f"The {who} raised {what} in {frame.name} "
                            f"({os.path.basename(path)}:{frame.lineno})")
        chain = chain.__cause__ or chain.__context__
    return None


def report_error(prog: str, err: Exception, full: bool, expected: tuple) -> int:
    """Exit code 2 with one line on stderr for an error raised in a plugin's code (naming the
    plugin; ``full``: the traceback too) or of an ``expected`` kind; other errors re-raise."""
    import sys
    import traceback

    blame = plugin_blame(err)
    if blame is None and not isinstance(err, expected):
        raise err
    if blame is not None and full:
        traceback.print_exception(err)
    if blame is None:
        print(f"{prog}: error: {err}", file=sys.stderr)
    else:
        print(f"{prog}: error: {blame}{'' if full else ' (--traceback prints the rest)'}.",
              file=sys.stderr)
    return 2


def dummy_input(dims: dict, batch: int, length: int):
    """Zeros shaped like one batch of ``x_in``: an array, or a tuple for two-part modes."""
    import jax.numpy as jnp

    parts = tuple(jnp.zeros((batch, length, d), jnp.float32) for d in dims["x_in"])
    return parts if len(parts) > 1 else parts[0]


def resolve_clip_dir(cfg: TrainConfig) -> Path:
    """The clip folder: ``clip_dir``, or the built-in rodent clips (generated when absent)."""
    if cfg.clip_dir is None:
        from ncssm_env.synthetic import clips_or_builtin

        if cfg.dart_noise is not None:
            from ncssm_env.body import build_model
            from ncssm_env.dart import builtin_dart
            from ncssm_policies.registry import registry

            expert = registry().get_expert(cfg.dart_expert).make(build_model("rodent"))
            return builtin_dart(expert, cfg.dart_expert, cfg.dart_noise, cfg.dart_copies)
        return clips_or_builtin(None)
    root = Path(cfg.clip_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"Config key 'clip_dir' is {cfg.clip_dir!r}, which is not a folder.")
    if not any(root.glob("clip_*.h5")):
        raise ConfigError(
            f"Data folder {root} (clip_dir) holds no clip_<i>.h5 files; generate some with "
            f"'ncssm-data generate --out {root}' or point clip_dir elsewhere.")
    return root


def data_dims(cfg: TrainConfig, ds) -> dict:
    """The dims the model is built for, from the data; written dims are checked against it."""
    dims = {"x_in": [int(d) for d in ds.dims["x_in"]], "x_tgt": int(ds.dims["x_tgt"])}
    if cfg.in_dim is not None and list(cfg.in_dim) != dims["x_in"]:
        raise ConfigError(f"Config key 'in_dim' is {cfg.in_dim}, but the {cfg.mmode} inputs of "
                          f"{ds.root_dir} have widths {dims['x_in']}.")
    if cfg.out_dim is not None and cfg.out_dim != dims["x_tgt"]:
        raise ConfigError(f"Config key 'out_dim' is {cfg.out_dim}, but the {cfg.mmode} target "
                          f"of {ds.root_dir} has width {dims['x_tgt']}.")
    if get_mode(cfg.mmode).family == "controller":  # its intention width
        have = ds.store.dims["latent_mean"][0] if ds.store.has("latent_mean") else None
        dims["int_dim"] = int(cfg.int_dim or have or 16)
    if ds.n_syllables is not None:
        dims["n_syllables"] = int(ds.n_syllables)
    return dims


def model_init_params(model, dims: dict, seed: int = 0):
    """Freshly initialized params of ``model`` for data of ``dims`` (shapes only matter here)."""
    import jax

    x = dummy_input(dims, batch=1, length=2)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(seed), x)["params"])


def held_out_clips(pol, clip_dir=None) -> np.ndarray:
    """The val clip indices of ``pol``'s training run, (n_val,) int: the split training made
    of the folder ``clip_dir`` (None: the folder the run trained on) from the run's
    ``train_frac`` and ``seed`` (:func:`ncssm_data.split_clips`)."""
    from ncssm_data import ClipStore
    from ncssm_data.dataset import split_store

    root = Path(clip_dir) if clip_dir is not None else resolve_clip_dir(pol.config)
    with ClipStore(root) as store:
        return split_store(store, pol.config.train_frac, pol.config.seed)[1]
