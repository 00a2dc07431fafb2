"""``sd-fsmis gui [PATH...]``: the desktop application."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gui", help="start the desktop application (the default)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="studies to open")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sd_fsmis.ui.application import run_application

    return run_application(
        paths=list(getattr(args, "paths", []) or []),
        demo=bool(getattr(args, "demo", False)),
        self_test=bool(getattr(args, "self_test", False)),
    )
