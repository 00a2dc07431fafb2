"""``sd-fsmis info PATH [--json]``: every series a path holds, with its geometry and load warnings.

PATH is a DICOM folder (searched recursively), a DICOMDIR, a single DICOM file or a NIfTI file. The table
shows one row per series (uid, modality, description, size, spacing, origin, direction as the orientation
code of the axes, e.g. LPS) with its warnings below it; ``--json`` prints a list with every number, the
9 direction cosines included. The uid is what other commands and the GUI take to choose a series.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="list the series a path holds: uid, description, modality, size, spacing, origin, direction",
        description="List every image series in a DICOM folder (recursively), DICOMDIR, DICOM file or "
        "NIfTI file, with size, spacing, origin, direction and load warnings. Reads headers only.",
    )
    p.add_argument("path", metavar="PATH", help="a DICOM folder, DICOMDIR, DICOM file or NIfTI file")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per series")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from sd_fsmis.core.io.listing import list_series
    from sd_fsmis.terminal import progress_bar

    with progress_bar("reading headers", unit="file") as progress:
        series = list_series(args.path, progress=progress)
    if args.json:
        print(json.dumps([s.to_dict() for s in series], indent=2))
    else:
        print(format_table(args.path, series))
    return 0


def format_table(path: str, series: list) -> str:
    """One row per series, its warnings and error (if any) indented below it."""
    header = ("#", "uid", "modality", "description", "size", "spacing (mm)", "origin (mm)", "direction")
    header = (*header, "files")
    rows = []
    for i, s in enumerate(series, start=1):
        rows.append(
            (
                str(i),
                s.uid,
                s.modality or "-",
                _clip(s.description or "-", 40),
                "x".join(str(v) for v in s.size) + (f"x{s.n_volumes}" if s.n_volumes > 1 else ""),
                " x ".join(_num(v) for v in s.spacing),
                ", ".join(_num(v, 1) for v in s.origin),
                orientation_code(s.direction) if s.oriented else "none",
                str(s.n_files),
            )
        )
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    lines = [f"{path}: {len(series)} series", ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    indent = " " * (widths[0] + 2)
    for s, row in zip(series, rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if not s.oriented:
            lines.append(
                f"{indent}no patient orientation in the file: shown as stored, without R/L, A/P labels"
            )
        elif orientation_code(s.direction).endswith("oblique"):
            cosines = ", ".join(f"{v:.4f}" for v in s.direction)
            lines.append(f"{indent}direction cosines: {cosines}")
        lines.extend(f"{indent}warning: {w}" for w in s.warnings)
        if s.error:
            lines.append(f"{indent}cannot be loaded: {s.error}")
    return "\n".join(lines)


def orientation_code(direction: Sequence[float]) -> str:
    """The axes' directions as patient-orientation letters (LPS: x to the left, y posterior, z superior).

    Each image axis gets the letter of the patient axis it is closest to; "oblique" is added when an
    image axis leans from it by more than about 2.5 degrees.
    """
    letters_pos, letters_neg = "LPS", "RAI"
    code, oblique = "", False
    for axis in range(3):
        column = [float(direction[row * 3 + axis]) for row in range(3)]
        k = max(range(3), key=lambda i: abs(column[i]))
        code += letters_pos[k] if column[k] > 0 else letters_neg[k]
        oblique = oblique or abs(column[k]) < 0.999
    return code + (" oblique" if oblique else "")


def _num(v: float, decimals: int = 4) -> str:
    text = f"{v:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
