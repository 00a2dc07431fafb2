"""``sd-fsmis evaluate``: being written (see its issue)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="(not available yet)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sd_fsmis.core.errors import UserError

    raise UserError("'evaluate' is not available yet")
