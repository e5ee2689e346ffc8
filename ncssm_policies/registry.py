"""Find policies: load every plugin of the ``ncssm`` entry-point group, each one on its own.

The built-in policies come through the same door as third-party ones (the ``builtin`` entry point
of the ``ncssm`` distribution). Each plugin is imported, its ``NCSSM_API_VERSION`` checked, its
hooks registered with a ``pluggy.PluginManager`` and called, and its answer checked, in isolation:
any failure marks that plugin broken, with one sentence, and the rest still load. A hook that
returns nothing (``None`` or ``[]``) is broken too.

Names are global and normalized: a registered name is stripped and lower-cased (``"S5 "`` is
``s5``), and so is the name asked of :meth:`Registry.get`. When two plugins offer one name, only
that name is affected, with one warning naming both; every other name of both plugins still
works. A built-in name (the ``ncssm`` distribution's ``builtin`` entry point: ``s5``, ``mamba``,
the built-in experts) stays the built-in's unless ``NCSSM_PREFER`` names the other plugin's
distribution or entry point; between two other plugins, the one ``NCSSM_PREFER`` names takes the
name, and with none named the name is disabled: :meth:`Registry.get` then raises one sentence
naming both and how to choose, and ``python -m ncssm_policies list`` shows it.

>>> from ncssm_policies.registry import registry
>>> spec = registry().get("gru")          # doctest: +SKIP
>>> model = spec.make(out_dim=38)         # doctest: +SKIP

Disable plugins by entry-point or distribution name with ``load_registry(disable=[...])`` or the
``NCSSM_DISABLE_PLUGINS`` environment variable (comma separated); a disabled plugin is not imported.
Choose the winner of a name collision with ``load_registry(prefer=[...])`` or ``NCSSM_PREFER``
(comma separated distribution or entry-point names, compared as ``NCSSM_DISABLE_PLUGINS`` is).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy

from ncssm_policies import hookspecs
from ncssm_policies.hookspecs import API_VERSION, PROJECT, ExpertSpec, PolicySpec

log = logging.getLogger(__name__)

GROUP = "ncssm"
DISABLE_ENV = "NCSSM_DISABLE_PLUGINS"
PREFER_ENV = "NCSSM_PREFER"
BUILTIN = ("ncssm", "builtin")  # the built-in policies' distribution and entry point
_HOOK = "ncssm_register_policies"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")  # a policy's or expert's name, normalized
_EXPERT_HOOK = "ncssm_register_experts"


class PluginError(Exception):
    """A plugin problem: the base of :class:`UnknownPolicyError`, what the tools catch."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownPolicyError(PluginError, KeyError):
    """``Registry.get`` was asked for a policy no loaded plugin offers."""


@dataclass(frozen=True)
class Registered:
    """A policy and where it came from."""

    spec: PolicySpec
    dist: str
    entry_point: str

    @property
    def origin(self) -> str:
        return _origin(self.dist, self.entry_point)

    @property
    def builtin(self) -> bool:
        return (_norm(self.dist), self.entry_point) == BUILTIN


@dataclass
class Registry:
    """The loaded plugins: what they offer, which are broken (and why), which were disabled, and
    the names two plugins offer (``conflicts``: disabled names; ``resolved``: kept by the built-in
    or by ``NCSSM_PREFER``)."""

    policies: dict[str, Registered] = field(default_factory=dict)
    experts: dict[str, Registered] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # "dist (entry point)" -> one sentence
    disabled: list[str] = field(default_factory=list)  # "dist (entry point)"
    conflicts: dict[str, str] = field(default_factory=dict)  # disabled policy name -> one sentence
    expert_conflicts: dict[str, str] = field(default_factory=dict)  # the same, for experts
    resolved: dict[str, str] = field(default_factory=dict)  # "policy 's5'" -> who kept it and why
    tracebacks: dict[str, str] = field(default_factory=dict, repr=False)  # origin -> traceback
    manager: pluggy.PluginManager | None = field(default=None, repr=False)  # the healthy plugins

    def names(self) -> list[str]:
        return sorted(self.policies)

    def __contains__(self, name: object) -> bool:
        return _norm_name(name) in self.policies

    def get(self, name: str) -> PolicySpec:
        """The policy called ``name`` (stripped, any case); an :class:`UnknownPolicyError` (a
        ``KeyError``) otherwise."""
        key = _norm_name(name)
        try:
            return self.policies[key].spec
        except (KeyError, TypeError):
            pass
        if isinstance(key, str) and key in self.conflicts:
            raise UnknownPolicyError(self.conflicts[key])
        known = ", ".join(self.names()) or "none"
        msg = f"no policy named {name!r}; known policies: {known}"
        close = difflib.get_close_matches(str(key), self.names(), n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        if self.broken:
            msg += (f"; {len(self.broken)} plugin(s) failed to load and may offer it: "
                    f"{', '.join(sorted(self.broken))} (see `python -m ncssm_policies list`)")
        if self.disabled:
            msg += f"; disabled: {', '.join(self.disabled)}"
        raise UnknownPolicyError(msg + ".")

    def get_expert(self, name: str) -> ExpertSpec:
        """The expert called ``name``; an :class:`UnknownPolicyError` naming the known ones
        otherwise."""
        key = _norm_name(name)
        if isinstance(key, str) and key in self.experts:
            return self.experts[key].spec
        if isinstance(key, str) and key in self.expert_conflicts:
            raise UnknownPolicyError(self.expert_conflicts[key])
        raise UnknownPolicyError(f"no expert named {name!r}; known experts: "
                                 f"{', '.join(sorted(self.experts)) or 'none'}.")


def load_registry(disable: Iterable[str] = (), group: str = GROUP,
                  prefer: Iterable[str] = ()) -> Registry:
    """Load every plugin of entry-point ``group``, skipping the ``disable``d ones.

    ``disable`` and ``$NCSSM_DISABLE_PLUGINS`` name plugins by entry-point or distribution name;
    ``prefer`` and ``$NCSSM_PREFER`` name the plugins that win a name collision. A collision
    never raises: see the module's docstring.
    """
    if isinstance(disable, str):
        disable = [disable]
    if isinstance(prefer, str):
        prefer = [prefer]
    wanted_off = {_norm(d) for d in [*disable, *_env_list(DISABLE_ENV)] if d.strip()}
    preferred = {_norm(d) for d in [*prefer, *_env_list(PREFER_ENV)] if d.strip()}

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs.NcssmSpec)
    spec_names = {name for name in dir(hookspecs.NcssmSpec) if name.startswith(f"{PROJECT}_")}
    reg = Registry(manager=pm)
    matched_off: set[str] = set()
    claims: dict[str, dict[str, list[Registered]]] = {"policy": {}, "expert": {}}

    eps = sorted(importlib.metadata.entry_points(group=group),
                 key=lambda e: (_dist_name(e), e.name))
    for ep in eps:
        dist = _dist_name(ep)
        origin = _origin(dist, ep.name)
        hit = wanted_off & {_norm(ep.name), _norm(dist)}
        if hit:
            matched_off |= hit
            reg.disabled.append(origin)
            continue
        try:
            plugin = _load_one(pm, ep, spec_names)
            specs = _call_one(pm, plugin)
            expert_specs = _call_one(pm, plugin, _EXPERT_HOOK, ExpertSpec)
        except _Broken as err:
            reg.broken[origin] = err.sentence
            reg.tracebacks[origin] = err.tb
            log.warning("ncssm plugin %s is broken: %s", origin, err.sentence,
                        extra={"ncssm_plugin_broken": origin})
            continue
        for kind, found in (("policy", specs), ("expert", expert_specs)):
            for spec in found:
                claims[kind].setdefault(spec.name, []).append(Registered(spec, dist, ep.name))

    for kind, table, conflicts in (("policy", reg.policies, reg.conflicts),
                                   ("expert", reg.experts, reg.expert_conflicts)):
        for name, offers in claims[kind].items():
            if len(offers) == 1:
                table[name] = offers[0]
                continue
            winner, sentence = _resolve(kind, name, offers, preferred)
            if winner is None:
                conflicts[name] = sentence
            else:
                table[name] = winner
                reg.resolved[f"{kind} {name!r}"] = sentence
            log.warning("%s", sentence, extra={"ncssm_plugin_conflict": f"{kind} {name!r}"})

    unmatched = wanted_off - matched_off
    if unmatched:
        known = sorted({_norm(e.name) for e in eps} | {_norm(_dist_name(e)) for e in eps})
        log.warning("disabled plugin name(s) %s match no installed plugin (installed: %s)",
                    ", ".join(sorted(unmatched)), ", ".join(known) or "none")
    return reg


def _resolve(kind: str, name: str, offers: list[Registered],
             preferred: set[str]) -> tuple[Registered | None, str]:
    """Who keeps a name several plugins offer (``None``: nobody), and the one sentence saying
    so: the one plugin ``preferred`` names, else the built-in, else nobody."""
    origins = [o.origin for o in offers]
    both = (f"{origins[0]} and {origins[1]}" if len(origins) == 2
            else f"{', '.join(origins[:-1])} and {origins[-1]}")
    count = "two" if len(offers) == 2 else str(len(offers))
    head = f"{kind} {name!r} is offered by {count} plugins, {both}"
    chosen = [o for o in offers if {_norm(o.dist), _norm(o.entry_point)} & preferred]
    if len(chosen) == 1:
        return chosen[0], _sentence(f"{head}; {chosen[0].origin} takes it, as {PREFER_ENV} "
                                    f"names it")
    if len(chosen) > 1:
        head += f" and {PREFER_ENV} names {len(chosen)} of them"
    builtin = next((o for o in offers if o.builtin), None)
    if builtin is not None:
        others = [o for o in offers if o is not builtin]
        return builtin, _sentence(
            f"{head}; the built-in {builtin.origin} keeps it (set {PREFER_ENV}="
            f"{others[0].dist} to give it to {others[0].origin} instead)")
    nobody = "neither" if len(offers) == 2 else "none"
    return None, _sentence(
        f"{head}, so {nobody} is used; choose one with {PREFER_ENV}=<distribution> (for "
        f"example {PREFER_ENV}={offers[0].dist}) or leave one out with {DISABLE_ENV}="
        f"{offers[-1].entry_point}")


_DEFAULT: Registry | None = None
_LOCK = threading.Lock()


def registry(reload: bool = False) -> Registry:
    """The default registry (group ``ncssm``, ``$NCSSM_DISABLE_PLUGINS``, ``$NCSSM_PREFER``),
    loaded once, cached."""
    global _DEFAULT
    with _LOCK:
        if _DEFAULT is None or reload:
            _DEFAULT = load_registry()
        return _DEFAULT


# --- loading one plugin ---------------------------------------------------------------------


class _Broken(Exception):
    def __init__(self, sentence: str, tb: str = ""):
        super().__init__(sentence)
        self.sentence = _sentence(sentence)
        self.tb = tb


def _load_one(pm: pluggy.PluginManager, ep: importlib.metadata.EntryPoint,
              spec_names: set[str]) -> Any:
    """Import the plugin, check its API version, register its hooks; returns the plugin object."""
    origin = _origin(_dist_name(ep), ep.name)
    try:
        plugin = ep.load()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - isolation: any failure is reported
        raise _Broken(f"importing {ep.value!r} raised {_describe(err)}",
                      traceback.format_exc()) from None

    version = getattr(plugin, "NCSSM_API_VERSION", None)
    if version is None:
        raise _Broken(f"{ep.value!r} declares no NCSSM_API_VERSION, but this ncssm needs "
                      f"NCSSM_API_VERSION = {API_VERSION}")
    if type(version) is not int or version != API_VERSION:
        raise _Broken(f"{ep.value!r} declares NCSSM_API_VERSION = {version!r}, but this ncssm "
                      f"needs NCSSM_API_VERSION = {API_VERSION}")

    try:
        pm.register(plugin, name=origin)
    except ValueError as err:  # pluggy: the same module registered under another entry point
        raise _Broken(f"{ep.value!r} could not be registered: {_describe(err)}") from None
    except Exception as err:  # noqa: BLE001 - pluggy.PluginValidationError: bad hook arguments
        raise _Broken(f"{ep.value!r} has an invalid hook: {_describe(err)}") from None

    hooks = [caller.name for caller in pm.get_hookcallers(plugin) or []]
    unknown = sorted(set(hooks) - spec_names)
    if unknown or not hooks:
        pm.unregister(plugin)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(spec_names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _Broken(f"{ep.value!r} implements {', '.join(map(repr, unknown))}, which is not an "
                      f"ncssm hook{hint}; known hooks: {', '.join(sorted(spec_names))}")
    if not hooks:
        raise _Broken(f"{ep.value!r} implements no ncssm hook (decorate functions with "
                      f"ncssm_policies.hookspecs.hookimpl)")
    return plugin


def _call_one(pm: pluggy.PluginManager, plugin: Any, _HOOK: str = _HOOK,
              kind: type = PolicySpec) -> list:
    """Call hook ``_HOOK`` (``ncssm_register_policies``, or ``ncssm_register_experts`` with
    ``kind`` ExpertSpec) of this plugin alone and check what it returns."""
    others = [p for p in pm.get_plugins() if p is not plugin]
    caller = pm.subset_hook_caller(_HOOK, remove_plugins=others)
    impls = [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]
    if not impls:
        return []  # the plugin implements other hooks only
    try:
        results = caller()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - isolation: any failure is reported
        pm.unregister(plugin)
        raise _Broken(f"{_HOOK}() raised {_describe(err)}", traceback.format_exc()) from None
    try:
        if len(results) < len(impls):  # pluggy drops the hookimpls' None results
            raise _Broken(f"{_HOOK}() returned None, expected a list of {kind.__name__} (did the "
                          f"function forget its return?)")
        specs: list[PolicySpec] = []
        for result in results:  # one result per hookimpl of this plugin (normally one)
            specs.extend(_check_specs(result, _HOOK, kind))
        if not specs:
            raise _Broken(f"{_HOOK}() returned an empty list, expected at least one "
                          f"{kind.__name__}")
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise _Broken(f"{_HOOK}() returned the {_what(kind)} name {spec.name!r} twice")
            seen.add(spec.name)
    except _Broken:
        pm.unregister(plugin)
        raise
    return specs


def _what(kind: type) -> str:
    return "policy" if kind is PolicySpec else "expert"


def _check_specs(result: Any, _HOOK: str = _HOOK, kind: type = PolicySpec) -> list:
    name = kind.__name__
    signature = "make(out_dim, **hparams)" if kind is PolicySpec else "make(model, **options)"
    if not isinstance(result, list):
        raise _Broken(f"{_HOOK}() returned {_kind(result)}, expected a list of {name}")
    normalized = []
    for i, item in enumerate(result):
        if not isinstance(item, kind):
            raise _Broken(f"{_HOOK}() returned {_kind(item)} at index {i}, expected a "
                          f"{name} (from ncssm_policies.hookspecs)")
        if not isinstance(item.name, str) or not item.name.strip():
            raise _Broken(f"{_HOOK}() returned a {name} at index {i} whose name is "
                          f"{item.name!r}, expected a non-empty string")
        if not _NAME.fullmatch(_norm_name(item.name)):  # a config names it: model_type, ...
            raise _Broken(f"{_HOOK}() returned a {name} at index {i} whose name is "
                          f"{_kind(item.name).split(' ', 1)[1]}, expected letters, digits, "
                          f"'_', '-' and '.' only")
        if not callable(item.make):
            raise _Broken(f"{_HOOK}() returned {name} {item.name!r} whose make is "
                          f"{_kind(item.make)}, expected a callable {signature}")
        if not isinstance(item.description, str):
            raise _Broken(f"{_HOOK}() returned {name} {item.name!r} whose description is "
                          f"{_kind(item.description)}, expected a string")
        normalized.append(replace(item, name=_norm_name(item.name)))
    return normalized


# --- small helpers ---------------------------------------------------------------------------


def _origin(dist: str, entry_point: str) -> str:
    return f"{dist} ({entry_point})"


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = dist.name if dist is not None else None
    return name or "<unknown distribution>"


def _norm(name: str) -> str:
    """Compare plugin names like distribution names: case and ``-_.`` runs do not matter."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _norm_name(name: Any) -> Any:
    """A policy's or expert's name as the registry keys it: stripped, lower case (anything not a
    string is left as it is)."""
    return name.strip().lower() if isinstance(name, str) else name


def _env_list(var: str) -> list[str]:
    return [part for part in os.environ.get(var, "").split(",") if part.strip()]


def _kind(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _describe(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > 400:
        text = text[:397] + "..."
    return text if text.endswith((".", "!", "?")) else text + "."
