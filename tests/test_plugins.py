"""The plugin system: policies come from the ``ncssm`` entry-point group, each plugin loaded alone.

The GRU policy is found through the entry point of the separately installed ``ncssm-gru``
distribution, never imported by path. Broken plugins are real distributions too: a
``<name>-0.1.dist-info`` folder and a module written into a temporary folder put on ``sys.path``, so
``importlib.metadata`` sees them as installed. The built-in entry point (``ncssm (builtin)``) may or
may not load; nothing here depends on it.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncssm_policies.hookspecs import PolicySpec
from ncssm_policies.registry import (
    DISABLE_ENV,
    PREFER_ENV,
    PluginError,
    UnknownPolicyError,
    load_registry,
    registry,
)

REPO = Path(__file__).resolve().parents[1]
INSTALL_GRU = "pip install -e plugins/ncssm-gru"


def require_gru(reg) -> object:
    """The registry's "gru" entry; a failure (never a skip) when the plugin is missing or broken."""
    if "gru" in reg.policies:
        return reg.policies["gru"]
    try:
        importlib.metadata.distribution("ncssm-gru")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"the ncssm-gru plugin distribution is not installed; CI must `{INSTALL_GRU}` "
                    f"after installing the project.")
    pytest.fail(f"ncssm-gru is installed but its 'gru' policy did not load: broken={reg.broken}, "
                f"disabled={reg.disabled}.")


# --- fixture distributions ------------------------------------------------------------------

HEADER = "from ncssm_policies.hookspecs import PolicySpec, hookimpl\n\nNCSSM_API_VERSION = 1\n\n"

OK_BODY = """
@hookimpl
def ncssm_register_policies():
    return [PolicySpec("fixture_ok", make=lambda out_dim, **hp: None, description="a fixture")]
"""


@pytest.fixture(autouse=True)
def _no_disable_env(monkeypatch):
    """A user's own NCSSM_DISABLE_PLUGINS or NCSSM_PREFER must not change what these tests see."""
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.delenv(PREFER_ENV, raising=False)


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(key, body)``: a distribution ``ncssm-fixture-<key with dashes>`` with entry point
    ``fixture_<key> = "ncssm_fixture_<key>"`` whose module is ``body`` (``HEADER`` prepended unless
    ``header=False``). Returns the origin the registry reports it under."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def _install(key: str, body: str, header: bool = True) -> str:
        dist = f"ncssm-fixture-{key.replace('_', '-')}"
        module, ep = f"ncssm_fixture_{key}", f"fixture_{key}"
        info = site / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[ncssm]\n{ep} = {module}\n")
        source = (HEADER if header else "") + textwrap.dedent(body)
        (site / f"{module}.py").write_text(source)
        modules.append(module)
        assert importlib.metadata.distribution(dist).version == "0.1"  # genuinely installed
        return f"{dist} ({ep})"

    yield _install
    for module in modules:  # the next test's fixture of the same name must be imported afresh
        sys.modules.pop(module, None)


# --- the GRU plugin, through its entry point --------------------------------------------------


def test_gru_found_through_its_entry_point():
    item = require_gru(load_registry())
    assert item.dist == "ncssm-gru"
    assert item.entry_point == "gru"
    assert item.origin == "ncssm-gru (gru)"
    assert item.spec.make.__module__.startswith("ncssm_gru")
    assert item.spec.description


def test_gru_hparams_pass_through():
    spec = require_gru(load_registry()).spec
    model = spec.make(out_dim=4, d_model=8, n_layers=3)
    carry = model.initialize_carry(2)
    assert [c.shape for c in carry] == [(2, 8)] * 3
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 6, 7)))["params"]
    assert shapes["encoder"]["kernel"].shape == (7, 8)
    assert shapes["decoder"]["kernel"].shape == (8, 4)
    assert sorted(k for k in shapes if k.startswith("cells")) == ["cells_0", "cells_1", "cells_2"]


# --- broken plugins leave the others working --------------------------------------------------

BROKEN = {
    # key: (module body, header?, a fragment the one-sentence error must hold)
    "raises_on_import": ("raise RuntimeError('boom at import')\n", True,
                         "RuntimeError: boom at import"),
    "missing_dependency": ("import ncssm_no_such_module_anywhere\n", True,
                           "No module named 'ncssm_no_such_module_anywhere'"),
    "wrong_api": ("NCSSM_API_VERSION = 2\n" + OK_BODY.replace("fixture_ok", "fixture_wrong"), True,
                  "declares NCSSM_API_VERSION = 2, but this ncssm needs NCSSM_API_VERSION = 1"),
    "no_api": (("from ncssm_policies.hookspecs import PolicySpec, hookimpl\n"
                + OK_BODY.replace("fixture_ok", "fixture_noapi")), False,
               "declares no NCSSM_API_VERSION, but this ncssm needs NCSSM_API_VERSION = 1"),
    "hook_raises": ("@hookimpl\ndef ncssm_register_policies():\n    raise ValueError('bad hook')\n",
                    True, "ncssm_register_policies() raised ValueError: bad hook"),
    "not_a_list": ("@hookimpl\ndef ncssm_register_policies():\n    return {'gru2': None}\n", True,
                   "returned dict {'gru2': None}, expected a list of PolicySpec"),
    "item_not_spec": ("@hookimpl\ndef ncssm_register_policies():\n    return ['gru2']\n", True,
                      "returned str 'gru2' at index 0, expected a PolicySpec"),
    "empty_name": (("@hookimpl\ndef ncssm_register_policies():\n"
                    "    return [PolicySpec('', make=print)]\n"), True,
                   "expected a non-empty string"),
    "name_not_str": (("@hookimpl\ndef ncssm_register_policies():\n"
                      "    return [PolicySpec(7, make=print)]\n"), True, "whose name is 7"),
    "make_not_callable": (("@hookimpl\ndef ncssm_register_policies():\n"
                           "    return [PolicySpec('x', make=42)]\n"), True,
                          "whose make is int 42, expected a callable"),
    "duplicate_names": (("@hookimpl\ndef ncssm_register_policies():\n"
                         "    return [PolicySpec('d', make=print), PolicySpec('d', make=print)]\n"),
                        True, "returned the policy name 'd' twice"),
    "misspelled_hook": ("@hookimpl\ndef ncssm_register_policy():\n    return []\n", True,
                        "did you mean 'ncssm_register_policies'?"),
    "bad_hook_args": ("@hookimpl\ndef ncssm_register_policies(config):\n    return []\n", True,
                      "has an invalid hook"),
    "no_hooks": ("def ncssm_register_policies():\n    return []\n", True,
                 "implements no ncssm hook"),
    "returns_none": ("@hookimpl\ndef ncssm_register_policies():\n    pass\n", True,
                     "ncssm_register_policies() returned None, expected a list of PolicySpec"),
    "returns_empty": ("@hookimpl\ndef ncssm_register_policies():\n    return []\n", True,
                      "ncssm_register_policies() returned an empty list, expected at least one"),
    "expert_returns_none": ("@hookimpl\ndef ncssm_register_experts():\n    return None\n", True,
                            "ncssm_register_experts() returned None, expected a list of "
                            "ExpertSpec"),
}


@pytest.mark.parametrize("key", sorted(BROKEN))
def test_broken_plugin_is_reported_and_the_rest_load(install, key):
    body, header, fragment = BROKEN[key]
    origin = install(key, body, header=header)
    ok = install("ok", OK_BODY)
    reg = load_registry()

    assert origin == f"ncssm-fixture-{key.replace('_', '-')} (fixture_{key})"
    assert origin in reg.broken, reg.broken  # reported by distribution and entry-point name
    sentence = reg.broken[origin]
    assert fragment in sentence
    assert "\n" not in sentence and sentence.endswith(".")
    assert reg.manager is not None and reg.manager.get_plugin(origin) is None
    assert reg.policies["fixture_ok"].origin == ok  # every other plugin still loads
    assert require_gru(reg).dist == "ncssm-gru"


def test_broken_plugin_traceback_is_kept(install):
    origin = install("raises_on_import", BROKEN["raises_on_import"][0])
    reg = load_registry()
    assert "Traceback" in reg.tracebacks[origin]
    assert "boom at import" in reg.tracebacks[origin]


def test_same_module_under_two_entry_points_is_broken_once(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    info = site / "ncssm_fixture_twice-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ncssm-fixture-twice\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[ncssm]\nfirst = ncssm_fixture_twice\nsecond = ncssm_fixture_twice\n")
    (site / "ncssm_fixture_twice.py").write_text(HEADER + OK_BODY.replace("fixture_ok", "twice"))
    try:
        reg = load_registry()
    finally:
        sys.modules.pop("ncssm_fixture_twice", None)
    assert reg.policies["twice"].origin == "ncssm-fixture-twice (first)"
    assert "could not be registered" in reg.broken["ncssm-fixture-twice (second)"]
    require_gru(reg)


# --- collisions and disabling ----------------------------------------------------------------


def _claims(*names: str) -> str:
    """A plugin body registering ``names`` (make: an identity function of its own)."""
    specs = ", ".join(f"PolicySpec({n!r}, make=make, description='fixture')" for n in names)
    return (f"def make(out_dim, **hp):\n    return None\n\n\n@hookimpl\n"
            f"def ncssm_register_policies():\n    return [{specs}]\n")


def _conflict_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ncssm_policies.registry" and hasattr(r, "ncssm_plugin_conflict")]


BUILTIN = "ncssm (builtin)"


def test_name_collision_names_both_distributions(install, caplog):
    """Two plugins offering one name: that name is disabled (one warning, one sentence from
    ``get``), everything else of both still works; disabling one of them resolves it."""
    a = install("collide_a", _claims("dup", "only_a"))
    b = install("collide_b", _claims("dup", "only_b"))
    with caplog.at_level(logging.WARNING, logger="ncssm_policies.registry"):
        reg = load_registry()
    (warning,) = _conflict_warnings(caplog)
    assert "'dup'" in warning and a in warning and b in warning
    assert "dup" not in reg.policies and "dup" not in reg
    assert reg.conflicts == {"dup": warning}
    assert reg.policies["only_a"].origin == a and reg.policies["only_b"].origin == b
    assert {"s5", "mamba"} <= set(reg.policies) and not reg.broken
    require_gru(reg)

    with pytest.raises(UnknownPolicyError) as info:
        reg.get("dup")
    msg = str(info.value)
    assert msg == warning and "\n" not in msg and msg.endswith(".")
    assert a in msg and b in msg
    assert f"{PREFER_ENV}=ncssm-fixture-collide-a" in msg and f"{DISABLE_ENV}=" in msg

    reg = load_registry(disable=["ncssm-fixture-collide-b"])  # disabling one resolves it
    assert reg.policies["dup"].dist == "ncssm-fixture-collide-a"
    assert reg.disabled == [b] and not reg.conflicts


def test_prefer_picks_between_two_plugins(install, monkeypatch, caplog):
    install("collide_a", _claims("dup"))
    b = install("collide_b", _claims("dup"))
    monkeypatch.setenv(PREFER_ENV, "something-else, NCSSM_fixture_collide_b ")  # names normalize
    with caplog.at_level(logging.WARNING, logger="ncssm_policies.registry"):
        reg = load_registry()
    assert reg.policies["dup"].origin == b and not reg.conflicts
    (warning,) = _conflict_warnings(caplog)
    assert f"{b} takes it, as {PREFER_ENV} names it" in warning
    assert reg.resolved == {"policy 'dup'": warning}


def test_builtin_name_stays_builtin(install, caplog):
    """A plugin registering ``s5`` leaves ``s5`` the built-in's; its other names, ``mamba`` and
    ``gru`` work; one warning names both."""
    fixture = install("claims_s5", _claims("s5", "fixture_x"))
    with caplog.at_level(logging.WARNING, logger="ncssm_policies.registry"):
        reg = load_registry()
    assert reg.policies["s5"].origin == BUILTIN
    assert reg.get("s5").make.__module__ == "ncssm_policies.builtin"
    assert reg.policies["fixture_x"].origin == fixture
    assert reg.policies["mamba"].origin == BUILTIN
    require_gru(reg)
    assert not reg.conflicts and not reg.broken
    (warning,) = _conflict_warnings(caplog)
    assert BUILTIN in warning and fixture in warning and "keeps it" in warning
    assert f"{PREFER_ENV}=ncssm-fixture-claims-s5" in warning
    assert reg.resolved == {"policy 's5'": warning}


def test_prefer_lets_a_plugin_take_a_builtin_name(install, monkeypatch, caplog):
    fixture = install("claims_s5", _claims("s5", "fixture_x"))
    monkeypatch.setenv(PREFER_ENV, "ncssm-fixture-claims-s5")
    with caplog.at_level(logging.WARNING, logger="ncssm_policies.registry"):
        reg = load_registry()
    assert reg.policies["s5"].origin == fixture
    assert reg.get("s5").make.__module__ == "ncssm_fixture_claims_s5"
    assert reg.policies["mamba"].origin == BUILTIN  # the built-in's other names stay
    (warning,) = _conflict_warnings(caplog)
    assert BUILTIN in warning and f"{fixture} takes it" in warning
    assert load_registry(prefer=["fixture_claims_s5"]).policies["s5"].origin == fixture


def test_expert_collision_is_per_name(install):
    body = ("from ncssm_policies.hookspecs import ExpertSpec\n\n@hookimpl\n"
            "def ncssm_register_experts():\n"
            "    return [ExpertSpec('Replay', print), ExpertSpec('mine', print)]\n")
    fixture = install("expert_dup", body)
    reg = load_registry()
    assert reg.experts["replay"].origin == BUILTIN
    assert reg.experts["mine"].origin == fixture
    assert fixture not in reg.broken  # it implements no policy hook: not broken for that one
    assert reg.get_expert(" MINE").make is print


def test_names_are_normalized(install):
    fixture = install("upper", _claims(" Fixture_Upper ", "S5 "))
    reg = load_registry()
    assert "fixture_upper" in reg.policies and " Fixture_Upper " not in reg.policies
    assert reg.policies["fixture_upper"].spec.name == "fixture_upper"
    assert reg.get("FIXTURE_upper ") is reg.policies["fixture_upper"].spec
    assert reg.policies["s5"].origin == BUILTIN  # "S5 " is s5: a collision, not a second s5
    assert "s5" in reg.resolved["policy 's5'"] and fixture in reg.resolved["policy 's5'"]
    assert [n for n in reg.names() if n.strip().lower() == "s5"] == ["s5"]
    assert " S5" in reg and "GRU" in reg
    require_gru(reg)
    assert reg.get(" GRU") is reg.policies["gru"].spec


def test_names_differing_only_in_case_within_a_plugin_are_a_duplicate(install):
    origin = install("case_dup", _claims("Same", "same"))
    reg = load_registry()
    assert "returned the policy name 'same' twice" in reg.broken[origin]


def test_disable_by_entry_point_name_argument(install):
    ok = install("ok", OK_BODY)
    assert "fixture_ok" in load_registry()
    reg = load_registry(disable=["fixture_ok"])
    assert "fixture_ok" not in reg.policies
    assert reg.disabled == [ok]
    assert ok not in reg.broken
    require_gru(reg)


def test_disable_by_distribution_name_env_var(install, monkeypatch):
    ok = install("ok", OK_BODY)
    monkeypatch.setenv(DISABLE_ENV, " something-else , ncssm_fixture_ok ")  # names normalize
    reg = load_registry()
    assert "fixture_ok" not in reg.policies
    assert ok in reg.disabled
    require_gru(reg)


def test_disabled_plugin_is_not_imported(install):
    origin = install("raises_on_import", BROKEN["raises_on_import"][0])
    reg = load_registry(disable=["fixture_raises_on_import"])
    assert origin in reg.disabled and origin not in reg.broken
    assert "ncssm_fixture_raises_on_import" not in sys.modules


def test_disable_gru_by_distribution_name():
    reg = load_registry(disable=["ncssm-gru"])
    assert "gru" not in reg.policies
    assert "ncssm-gru (gru)" in reg.disabled


# --- lookups, the cache, the command line -----------------------------------------------------


def test_get_unknown_lists_known_names_and_broken_plugins(install):
    broken = install("raises_on_import", BROKEN["raises_on_import"][0])
    reg = load_registry()
    assert isinstance(reg.get("gru"), PolicySpec)
    with pytest.raises(KeyError) as info:
        reg.get("nope")
    err = info.value
    assert isinstance(err, UnknownPolicyError) and isinstance(err, PluginError)
    msg = str(err)
    assert "'nope'" in msg and "known policies:" in msg
    for name in reg.names():
        assert name in msg
    assert broken in msg
    with pytest.raises(UnknownPolicyError, match="did you mean 'gru'"):
        reg.get("gur")


def test_names_are_sorted_policy_names():
    reg = load_registry()
    assert reg.names() == sorted(reg.policies)
    assert "gru" in reg


def test_default_registry_is_cached():
    first = registry()
    assert registry() is first
    fresh = registry(reload=True)
    assert fresh is not first and registry() is fresh
    require_gru(fresh)


def _run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "ncssm_policies", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120, check=False)


def test_cli_list_shows_gru_with_its_distribution():
    proc = _run_cli("list")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("gru ")]
    if not lines:
        require_gru(load_registry())
    assert "ncssm-gru (gru)" in lines[0] and "GRU" in lines[0]


def test_cli_list_shows_broken_plugins(install, tmp_path):
    origin = install("raises_on_import", BROKEN["raises_on_import"][0])
    proc = _run_cli("list", env_extra={"PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 1, proc.stderr  # so CI can use it
    assert "broken plugins" in proc.stdout
    expected = f"{origin}: importing 'ncssm_fixture_raises_on_import' raised RuntimeError"
    assert expected in proc.stdout
    assert "ncssm-gru (gru)" in proc.stdout


def test_train_list_policies_with_a_colliding_plugin(install, tmp_path):
    """``ncssm-train --list-policies`` with a plugin claiming ``s5`` lists, with no traceback."""
    fixture = install("claims_s5", _claims("s5", "fixture_x"))
    env = {k: v for k, v in os.environ.items() if k not in (DISABLE_ENV, PREFER_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")])
    script = Path(sys.executable).with_name("ncssm-train")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "ncssm_policies.train"]
    proc = subprocess.run([*command, "--list-policies"], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120, check=False)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 0, proc.stderr  # the built-in kept s5: nothing is disabled
    assert proc.stderr == ""  # the listing says it; no log line besides
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert BUILTIN in lines["s5"] and fixture in lines["fixture_x"] and "mamba" in lines
    assert "ncssm-gru (gru)" in lines["gru"]
    assert fixture in proc.stdout + proc.stderr and "'s5'" in proc.stdout + proc.stderr


def test_cli_list_shows_conflicts(install, tmp_path):
    a = install("collide_a", _claims("dup"))
    b = install("collide_b", _claims("dup"))
    proc = _run_cli("list", env_extra={"PYTHONPATH": str(tmp_path / "site")})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1  # a disabled name
    out = proc.stdout
    assert "conflicting names, disabled (1):" in out
    (line,) = [line for line in out.splitlines() if "'dup'" in line]
    assert a in line and b in line and PREFER_ENV in line
    assert "ncssm-gru (gru)" in out


def test_package_import_is_light():
    code = ("import sys, ncssm_policies; "
            "heavy = [m for m in ('jax', 'flax') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


EXPERT_BODY = """
from ncssm_policies.hookspecs import ExpertSpec


def make(model, **options):
    def expert(xp, qpos, qvel, ref_qpos, ref_ctrl, t):
        return 0.5 * ref_ctrl
    return expert


@hookimpl
def ncssm_register_experts():
    return [ExpertSpec("half_replay", make, description="half the recorded control")]
"""


def test_a_plugin_registers_an_expert_that_evaluate_runs(install, test_clips, monkeypatch):
    """An installed distribution offers an expert through ``ncssm_register_experts``; evaluate
    runs it by name beside the built-in ones; a malformed one is reported as broken."""
    from ncssm_policies.rollout import evaluate

    origin = install("expert", EXPERT_BODY)
    bad = install("bad_expert", "@hookimpl\ndef ncssm_register_experts():\n    return ['x']\n")
    reg = registry(reload=True)
    try:
        assert reg.experts["half_replay"].origin == origin
        assert {"replay", "feedback"} <= set(reg.experts)
        assert "expected a ExpertSpec" in reg.broken[bad]
        res = evaluate("half_replay", baselines=("expert",), clip_dir=test_clips, num_envs=2,
                       episodes=2, seed=0)
        assert res.summary["episodes"] == 2 and res.baselines["expert"].summary["episodes"] == 2
        assert res.summary["mode"] == "baseline half_replay"
    finally:
        monkeypatch.undo()  # the fixture distributions leave sys.path before the default
        registry(reload=True)  # registry is loaded again for the tests after this one


# --- check_policy: the plugin author's check_env --------------------------------------------

GOOD = """
import flax.linen as nn
import jax.numpy as jnp


class Good(nn.Module):
    \"\"\"A running sum of encoded frames, decoded: a recurrent policy small enough to compile
    in a moment.\"\"\"

    out_dim: int
    d_model: int = 8
    n_layers: int = 1
    dropout: float = 0.0

    def setup(self):
        self.enc, self.dec = nn.Dense(self.d_model), nn.Dense(self.out_dim)
        self.drop = nn.Dropout(self.dropout)

    def __call__(self, x, train=False):
        return self.forward(self.initialize_carry(x.shape[0]), x, train)[1]

    def forward(self, carry, x, train=False):
        h = carry[:, None] + jnp.cumsum(self.enc(x), axis=1)
        return h[:, -1], self.dec(self.drop(h, deterministic=not train))

    def initialize_carry(self, batch_size):
        return jnp.zeros((batch_size, self.d_model))

    def step(self, carry, x_t):
        h = carry + self.enc(x_t)
        return h, self.dec(h)
"""

# defect -> (the policy's code after GOOD, what make returns, a fragment of the one sentence)
DEFECTS = {
    "makes_the_class": ("", "Good", "returned the class Good, expected an instance"),
    "makes_none": ("", "None", "returned NoneType None, expected a flax.linen.Module instance"),
    "makes_sequential": ("", "nn.Sequential([nn.Dense(out_dim)])",
                         "Sequential has no forward(), initialize_carry(), step()"),
    "no_step": ("class Bad(Good):\n    step = None\n", "Bad(out_dim, **hp)",
                "Bad has no step()"),
    "step_swapped": ("class Bad(Good):\n    def step(self, c, x_t):\n"
                     "        return tuple(reversed(Good.step(self, c, x_t)))\n",
                     "Bad(out_dim, **hp)", "step(carry, x_t) returned y_t"),
    "carry_never_updated": ("class Bad(Good):\n    def step(self, c, x_t):\n"
                            "        return c, self.dec(c + self.enc(x_t))\n",
                            "Bad(out_dim, **hp)",
                            "step(carry, x_t) over 25 steps differs from __call__(x) by up to"),
    "wrong_width": ("", "Good(out_dim + 1, **hp)", "__call__(x) returned shape (2, 50, 4), "
                                                   "expected (2, 50, 3)"),
    "rejects_dropout": ("def make2(out_dim, d_model, n_layers):\n"
                        "    return Good(out_dim, d_model, n_layers)\n",
                        "make2(out_dim, **hp)", "raised TypeError"),
    "ignores_dropout": ("", "Good(out_dim, hp['d_model'], hp['n_layers'])",
                        "gave the same output as train=False"),
    "nan_gradients": ("class Bad(Good):\n    def __call__(self, x, train=False):\n"
                      "        y = Good.__call__(self, x, train)  # plus 0, whose gradient is NaN\n"
                      "        return y + jnp.sqrt(jnp.sum(self.enc(x) * 0.0))\n",
                      "Bad(out_dim, **hp)", "gave NaN or Inf gradients"),
}


def _defect(key: str) -> str:
    extra, made, _ = DEFECTS[key]
    return (HEADER + GOOD + extra + "\n\n@hookimpl\ndef ncssm_register_policies():\n"
            f"    return [PolicySpec('fixture_{key}', make=lambda out_dim, **hp: {made})]\n")


@pytest.fixture
def fresh_registry():
    """The default registry reloaded after the test's fixture plugins are installed, and again
    after they are gone."""
    yield lambda: registry(reload=True)
    registry(reload=True)


@pytest.mark.parametrize("key", sorted(DEFECTS))
def test_check_gives_each_defect_its_sentence(install, fresh_registry, capsys, key):
    from ncssm_policies.__main__ import main as policies_main

    origin = install(key, _defect(key))
    fresh_registry()
    assert policies_main(["check", f"fixture_{key}"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"FAILED: Policy 'fixture_{key}' of plugin "
                                                    f"{origin}: ")
    assert DEFECTS[key][2] in out


def test_check_passes_a_good_policy_in_every_family(install):
    from ncssm_policies.testing import check_policy

    install("good", HEADER + GOOD + "\n\n@hookimpl\ndef ncssm_register_policies():\n"
            "    return [PolicySpec('fixture_good', make=Good)]\n")
    spec = load_registry().get("fixture_good")
    passed = check_policy(spec)
    assert any("after a carry reset" in line for line in passed)
    assert any("controller family" in line for line in passed)
    assert any("syllable family" in line for line in passed)


def test_cli_check_is_one_sentence_and_exit_1(install, tmp_path):
    install("carry_never_updated", _defect("carry_never_updated"))
    proc = _run_cli("check", "fixture_carry_never_updated",
                    env_extra={"PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("FAILED: Policy 'fixture_carry_never_updated' of plugin "
                                  "ncssm-fixture-carry-never-updated (fixture_carry_never_updated)"
                                  ": step(carry, x_t)")
    assert "Traceback" not in proc.stdout + proc.stderr


# --- ncssm-train with a plugin's policy: the pre-flight, and errors in the plugin's code --------

def _train_args(clip_dir, tmp_path, model_type: str, **extra) -> list[str]:
    keys = {**dict(clip_dir=str(clip_dir), model_type=model_type, seg_len=20, batch_size=2,
                   epochs=1, iters_per_epoch=2, val_steps=1, d_model=8, n_layers=1,
                   runs_dir=str(tmp_path / "runs"), eval_episodes=0), **extra}
    return ["--no-progress", "--override", *(f"{k}={v}" for k, v in keys.items())]


def test_train_refuses_a_policy_that_fails_the_preflight(install, fresh_registry, capsys,
                                                          tmp_path):
    from ncssm_policies.train import main as train_main

    origin = install("carry_never_updated", _defect("carry_never_updated"))
    fresh_registry()
    # No such clip folder: the refusal comes before any data is looked at.
    args = _train_args(tmp_path / "no_clips", tmp_path, "fixture_carry_never_updated")
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"ncssm-train: error: Policy 'fixture_carry_never_updated' of plugin {origin}: step(carry,")
    assert "refuses it before loading data" in err
    assert not (tmp_path / "runs").exists()


# A policy that passes the pre-flight (B = 2) but raises closed loop, where 3 envs step it.
FAILS_CLOSED_LOOP = """
class Bad(Good):
    def step(self, c, x_t):
        if x_t.shape[0] == 3:
            raise RuntimeError("boom in step with 3 envs")
        return Good.step(self, c, x_t)
"""


def test_a_plugin_error_in_evaluation_is_one_sentence_and_loses_nothing(
        install, fresh_registry, capsys, test_clips, tmp_path):
    from ncssm_policies.train import main as train_main

    origin = install("fails_closed_loop", GOOD + FAILS_CLOSED_LOOP
                     + "\n\n@hookimpl\ndef ncssm_register_policies():\n"
                     "    return [PolicySpec('fixture_bad', make=Bad)]\n")
    fresh_registry()
    args = _train_args(test_clips, tmp_path, "fixture_bad", eval_episodes=3, eval_envs=3,
                       name="bad")
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert err == (f"ncssm-train: error: The policy 'fixture_bad' of plugin {origin} raised "
                   f"RuntimeError: boom in step with 3 envs in step (ncssm_fixture_fails_closed_"
                   f"loop.py:{_line_of('boom in step')}) (--traceback prints the rest).\n")
    (summary,) = (tmp_path / "runs").glob("*/summary.json")  # written before the evaluation
    assert np.isfinite(json.loads(summary.read_text())["val_loss"])

    # --traceback: the whole traceback, then the sentence without the hint
    from ncssm_policies.build import report_error

    model = registry().get("fixture_bad").make(4)
    try:
        model.init(jax.random.key(0), model.initialize_carry(3), jnp.zeros((3, 5)), method="step")
    except RuntimeError as raised:
        assert report_error("ncssm-train", raised, True, ()) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.splitlines()[-1] == (f"ncssm-train: error: The policy 'fixture_bad' of plugin "
                                    f"{origin} raised RuntimeError: boom in step with 3 envs in "
                                    f"step (ncssm_fixture_fails_closed_loop.py:"
                                    f"{_line_of('boom in step')}).")


def _line_of(text: str) -> int:
    lines = (HEADER + textwrap.dedent(GOOD + FAILS_CLOSED_LOOP)).splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)
