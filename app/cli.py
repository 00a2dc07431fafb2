"""The ``sd-fsmis`` command: the GUI by default, sub-commands for headless work.

Each sub-command lives in its own module under :mod:`sd_fsmis.commands` with two functions:
``register(subparsers)`` adds its parser and sets ``run``; ``run(args) -> int`` does the work, importing
heavy libraries (torch, diffusers) only when called so that ``sd-fsmis info`` starts quickly.

User mistakes raise :class:`~sd_fsmis.core.errors.UserError`: one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from sd_fsmis import __version__
from sd_fsmis.logs import log_file, setup_logging

log = logging.getLogger("sd_fsmis.cli")

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES = ("gui", "info", "dice", "segment", "evaluate", "train", "supervoxels", "models")

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line message (argparse's default prints usage too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER_ERROR, f"sd-fsmis: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="sd-fsmis",
        description="Few-shot medical image segmentation with Stable Diffusion. "
        "Without a sub-command, starts the desktop application.",
    )
    parser.add_argument("--version", action="version", version=f"sd-fsmis {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr too")
    parser.add_argument("--demo", action="store_true", help="open the generated demo study (GUI)")
    parser.add_argument("--self-test", action="store_true", help="run the application's self-test and exit")
    parser.add_argument(
        "--check-imports",
        action="store_true",
        help="import every module the application loads lazily, name what is missing, and exit",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"sd_fsmis.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sd-fsmis`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose)
    from sd_fsmis.core.quiet import route_itk_messages_to_log

    route_itk_messages_to_log()  # ITK's own messages go to the log file, never to the terminal
    log.debug("sd-fsmis %s: %s", __version__, list(sys.argv if argv is None else argv))
    if args.check_imports:
        from sd_fsmis import import_check

        return import_check.main()
    if args.command is None:
        from sd_fsmis.commands import gui

        args.paths = []
        return _dispatch(gui.run, args)
    return _dispatch(args.run, args)


def main_gui() -> int:
    """Entry point of the windowed launcher (no console on Windows)."""
    return main(sys.argv[1:] or [])


def _dispatch(run, args: argparse.Namespace) -> int:
    from sd_fsmis.core.errors import JobCancelled, UserError

    try:
        return int(run(args) or 0)
    except UserError as exc:
        log.info("user error: %s", exc)
        print(f"sd-fsmis: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except (JobCancelled, KeyboardInterrupt):
        print("sd-fsmis: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except MemoryError:
        log.exception("out of memory")
        print(
            "sd-fsmis: error: out of memory (try a smaller --batch-size or another device)", file=sys.stderr
        )
        return 1
    except OSError as exc:
        # A full disk or a permission problem while writing: a user-level problem, not a bug.
        log.exception("I/O error")
        print(f"sd-fsmis: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: keep the traceback in the log, show one line
        log.exception("internal error")
        print(
            f"sd-fsmis: internal error: {type(exc).__name__}: {_one_line(exc)} (details in {log_file()})",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
