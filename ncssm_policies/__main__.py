"""``python -m ncssm_policies``: inspect and check the policy plugins.

    python -m ncssm_policies list [--disable NAME ...] [--traceback]
    python -m ncssm_policies check NAME [--hparams YAML] [--traceback]

``list`` prints the installed policies, their plugins, broken plugins and name conflicts; it
exits 1 when a plugin is broken or a name is disabled by a conflict, so CI can use it. ``check``
runs :func:`ncssm_policies.testing.check_policy` on one policy: each check passed, or the one
sentence of the first failure (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ncssm_policies.registry import DISABLE_ENV, PluginError, load_registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ncssm_policies",
                                     description="Inspect the ncssm policy plugins.")
    sub = parser.add_subparsers(dest="command", required=True)
    lst = sub.add_parser(
        "list", help="list the policies, where each comes from, and broken plugins")
    lst.add_argument("--disable", action="append", default=[], metavar="NAME",
                     help=f"skip a plugin by entry-point or distribution name (repeatable; "
                          f"adds to ${DISABLE_ENV})")
    lst.add_argument("--traceback", action="store_true",
                     help="print the full traceback of each broken plugin")
    chk = sub.add_parser("check", help="check a policy against the plugin contract")
    chk.add_argument("name", help="the policy's registry name")
    chk.add_argument("--hparams", metavar="YAML", default=None,
                     help="make()'s keyword arguments as a YAML mapping (default: "
                          "{d_model: 16, n_layers: 2, dropout: 0.0})")
    chk.add_argument("--traceback", action="store_true",
                     help="print the full traceback of a failure")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args)

    # The listing reports broken plugins itself; keep the registry's log line for them quiet.
    logging.getLogger("ncssm_policies.registry").addFilter(
        lambda record: not (hasattr(record, "ncssm_plugin_broken")
                            or hasattr(record, "ncssm_plugin_conflict")))
    try:
        reg = load_registry(disable=args.disable)
    except PluginError as err:
        print(f"ncssm_policies: error: {err}", file=sys.stderr)
        return 2

    print(f"policies ({len(reg.policies)}):")
    if reg.policies:
        width = max(len(n) for n in reg.policies)
        owidth = max(len(r.origin) for r in reg.policies.values())
        for name in reg.names():
            item = reg.policies[name]
            line = f"  {name:<{width}}  {item.origin:<{owidth}}  {item.spec.description}"
            print(line.rstrip())
    else:
        print("  (none)")
    if reg.broken:
        print(f"broken plugins ({len(reg.broken)}):")
        for origin in sorted(reg.broken):
            print(f"  {origin}: {reg.broken[origin]}")
            if args.traceback and reg.tracebacks.get(origin):
                for tb_line in reg.tracebacks[origin].rstrip().splitlines():
                    print(f"      {tb_line}")
    conflicts = [*reg.conflicts.values(), *reg.expert_conflicts.values()]
    if conflicts:  # names two plugins offer and neither got: disabled
        print(f"conflicting names, disabled ({len(conflicts)}):")
        for sentence in conflicts:
            print(f"  {sentence}")
    if reg.resolved:  # names two plugins offer, kept by the built-in or by NCSSM_PREFER
        print(f"name collisions, resolved ({len(reg.resolved)}):")
        for sentence in reg.resolved.values():
            print(f"  {sentence}")
    if reg.disabled:
        print(f"disabled plugins ({len(reg.disabled)}): {', '.join(reg.disabled)}")
    return 1 if reg.broken or conflicts else 0


def _check(args) -> int:
    """``check NAME``: 0 when the policy passes, 1 with one sentence when it does not, 2 on
    bad arguments."""
    import traceback

    import yaml

    from ncssm_policies.registry import UnknownPolicyError
    from ncssm_policies.testing import PolicyCheckError, check_policy

    hparams = None
    if args.hparams is not None:
        try:
            hparams = yaml.safe_load(args.hparams)
        except yaml.YAMLError as err:
            hparams = err
        if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
            print(f"ncssm_policies: error: --hparams must be a YAML mapping of keyword "
                  f"arguments, like '{{d_model: 16}}', got {args.hparams!r}.", file=sys.stderr)
            return 2
    try:
        passed = check_policy(args.name, hparams)
    except UnknownPolicyError as err:
        print(f"ncssm_policies: error: {err}", file=sys.stderr)
        return 2
    except PolicyCheckError as err:
        print(f"FAILED: {err}")
        if args.traceback and err.__cause__ is not None:
            traceback.print_exception(err.__cause__)
        return 1
    for line in passed:
        print(f"ok: {line}")
    print(f"policy {args.name!r} passes the plugin contract ({len(passed)} checks).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
