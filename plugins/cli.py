"""``zigscan plugins ...``: show which plugins are installed, where they came from and what they added."""

from __future__ import annotations

import argparse
import json
import sys

from .manager import disabled_plugins, plugin_report

_HOOK_LABELS = {
    "zigscan_register_scanpaths": "scan paths",
    "zigscan_register_schedules": "schedules",
    "zigscan_register_mixers": "mixers",
    "zigscan_register_models": "models",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plugins",
        help="list installed zigscan plugins",
        description="Plugins add scan paths, schedules, mixers and model presets through the entry-point "
        "group 'zigscan'. Set ZIGSCAN_DISABLE_PLUGINS=1 to skip all of them, or a comma list of names.",
    )
    sub = p.add_subparsers(dest="plugins_cmd", metavar="COMMAND", required=True)
    lst = sub.add_parser("list", help="each plugin: origin, status and what it registered")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.add_argument("--full", action="store_true", help="list every registered name (built-ins included)")
    lst.set_defaults(func=_cmd_list)


def _cmd_list(args: argparse.Namespace) -> int:
    report = plugin_report()
    if args.json:
        print(json.dumps([r.__dict__ for r in report], indent=2))
        return 0 if all(r.status != "failed" for r in report) else 1
    all_off, names_off = disabled_plugins()
    for info in report:
        print(f"{info.name}  [{info.status}]  {info.origin}")
        if info.error:
            print(f"    error: {info.error}")
        for hook, names in info.registered.items():
            label = _HOOK_LABELS.get(hook, hook)
            shown = names if (args.full or info.name != "zigscan" or len(names) <= 6) else names[:6] + ["..."]
            print(f"    {label} ({len(names)}): {', '.join(shown)}")
    if all_off:
        print("(entry points disabled by ZIGSCAN_DISABLE_PLUGINS)")
    elif names_off:
        print(f"(disabled by ZIGSCAN_DISABLE_PLUGINS: {', '.join(sorted(names_off))})")
    failed = [r.name for r in report if r.status == "failed"]
    if failed:
        print(
            f"\n{len(failed)} plugin(s) failed: {', '.join(failed)}. zigscan refuses to run with a broken plugin; "
            f"fix or uninstall it, or set ZIGSCAN_DISABLE_PLUGINS={','.join(failed)}.",
            file=sys.stderr,
        )
        return 1
    return 0
