"""``sd-fsmis dice PRED REF [--labels 1,2] [--json]``: Dice (volume and per slice), HD95 and ASSD per label.

Both masks must lie on the same voxel grid. Metric conventions (empty masks, HD95 definition) are those of
:mod:`sd_fsmis.core.evaluation.metrics`; in the table "n/a" means not applicable (the label is in neither
mask, or on neither mask's slice) and "inf" a distance to an empty mask. ``--json`` prints every number, the
per-slice Dice lists included, with ``null`` for both.
"""

from __future__ import annotations

import argparse
import math
import textwrap

MAX_LABEL = 65535  # = sd_fsmis.core.io.labelmap.MAX_LABEL (not imported here: keeps start-up light)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dice",
        help="compare a predicted mask with a reference: Dice per label (volume and per slice), HD95, ASSD",
        description="Compare a predicted mask with a reference mask on the same voxel grid: Dice per "
        "label in 3-D and per slice, 95th-percentile Hausdorff distance and average symmetric surface "
        "distance in mm.",
    )
    p.add_argument("pred", metavar="PRED", help="the predicted mask (NIfTI .nii / .nii.gz)")
    p.add_argument("ref", metavar="REF", help="the reference mask (ground truth), on the same grid")
    p.add_argument(
        "--labels",
        type=_label_list,
        metavar="L1,L2",
        help="label values to compare (default: every label in either mask)",
    )
    p.add_argument("--json", action="store_true", help="print everything as JSON, per-slice Dice included")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from sd_fsmis.core.evaluation.metrics import compare_label_maps, mean_dice
    from sd_fsmis.core.io.labelmap import LabelMap
    from sd_fsmis.terminal import progress_bar

    ref = LabelMap.load(args.ref)
    pred = LabelMap.load(args.pred, like=ref.geometry, like_name="reference")
    with progress_bar("comparing", unit="step") as progress:
        comparisons = compare_label_maps(pred, ref, args.labels, progress=progress)
    missing = [v for v, c in comparisons.items() if c.voxels_pred == 0 and c.voxels_ref == 0]
    for value in missing:
        print(f"sd-fsmis: note: label {value} is in neither mask", file=sys.stderr)
    for warning in [*ref.warnings, *pred.warnings]:
        print(f"sd-fsmis: note: {warning}", file=sys.stderr)
    mean = mean_dice(comparisons.values())
    if args.json:
        document = {
            "prediction": str(args.pred),
            "reference": str(args.ref),
            "geometry": ref.geometry.to_dict(),
            "mean_dice": mean if math.isfinite(mean) else None,
            "labels": [c.to_dict() for c in comparisons.values()],
        }
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        print(format_table(args.pred, args.ref, ref.geometry, comparisons, mean))
    return 0


def format_table(pred_path, ref_path, geometry, comparisons: dict, mean: float) -> str:
    """The readable report: one row per label, then the per-slice Dice of the slices holding the label."""
    size = " x ".join(str(s) for s in geometry.size)
    spacing = " x ".join(f"{s:g}" for s in geometry.spacing)
    lines = [
        f"prediction  {pred_path}",
        f"reference   {ref_path}",
        f"grid        {size} voxels (x, y, z), {spacing} mm",
        "",
    ]
    if not comparisons:
        lines.append("no labels in either mask")
        return "\n".join(lines)
    name_width = max(12, *(len(f"{c.label} {c.name}") for c in comparisons.values()))
    header = (
        f"{'label':<{name_width}}  {'Dice':>6}  {'HD95 mm':>8}  {'ASSD mm':>8}  {'pred ml':>9}  {'ref ml':>9}"
        "  slices"
    )
    lines += [header, "-" * len(header)]
    for c in comparisons.values():
        slices = c.slices_with_label
        span = f"{slices[0]}-{slices[-1]} ({len(slices)})" if slices else "-"
        lines.append(
            f"{f'{c.label} {c.name}':<{name_width}}  {_num(c.dice, 4):>6}  {_num(c.hd95_mm, 2):>8}  "
            f"{_num(c.assd_mm, 2):>8}  {c.volume_pred_ml:>9.1f}  {c.volume_ref_ml:>9.1f}  {span}"
        )
    lines.append(f"{'mean Dice':<{name_width}}  {_num(mean, 4):>6}")
    lines += ["", "Dice per slice (slice:Dice, slices where either mask has the label):"]
    for c in comparisons.values():
        pairs = " ".join(f"{z}:{c.dice_per_slice[z]:.2f}" for z in c.slices_with_label) or "-"
        lines += textwrap.wrap(
            pairs,
            width=100,
            initial_indent=f"  {f'{c.label} {c.name}':<{name_width}}  ",
            subsequent_indent=" " * (name_width + 4),
        )
    return "\n".join(lines)


def _num(x: float, digits: int) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def _label_list(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; argparse turns the ValueError into a usage error (exit code 2)."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= MAX_LABEL:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a label value (comma-separated whole numbers 1..{MAX_LABEL}, e.g. 1,2)"
            )
        values.append(int(part))
    if not values:
        raise argparse.ArgumentTypeError("no label values given (e.g. --labels 1,2)")
    return values
