"""``python -m ncssm_policies list``: the installed policies, their plugins, and broken plugins.

    python -m ncssm_policies list [--disable NAME ...] [--traceback]
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
    args = parser.parse_args(argv)

    # The listing reports broken plugins itself; keep the registry's log line for them quiet.
    logging.getLogger("ncssm_policies.registry").addFilter(
        lambda record: not hasattr(record, "ncssm_plugin_broken"))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
