"""``sd-fsmis segment``: segment a whole query volume from annotated support slices, or a cohort of them
(``--queries FOLDER|MANIFEST --out-dir DIR``, :mod:`sd_fsmis.commands.segment_cohort`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment a query volume from support slices",
        description="Segment the whole query volume from annotated support slices and write the mask with "
        "the query's geometry. The support may be the query itself. With --queries, every study of a folder "
        "or manifest is segmented (one mask per study in --out-dir, a run record, resume); several processes "
        "share the studies under `accelerate launch -m sd_fsmis segment --queries ...`.",
    )
    p.add_argument("--query", metavar="PATH", help="query study (DICOM folder/file, NIfTI)")
    p.add_argument(
        "--queries",
        metavar="FOLDER|MANIFEST",
        help="a cohort: a folder of studies (NIfTI files, DICOM sub-folders) or a .json/.csv manifest whose "
        "studies may have their own supports; needs --out-dir",
    )
    p.add_argument("--query-series", metavar="UID", help="series to use when the query path holds several")
    p.add_argument("--support", metavar="PATH", help="support study (default: the query itself)")
    p.add_argument("--support-series", metavar="UID", help="series of the support study")
    p.add_argument(
        "--support-mask",
        metavar="PATH",
        help="label map on the support's grid (with --queries: the cohort's support, for the studies a "
        "manifest gives none)",
    )
    p.add_argument("--label", type=int, default=1, metavar="N", help="label value to segment (default 1)")
    p.add_argument("--label-name", metavar="NAME", help="name of the structure in the output")
    p.add_argument(
        "--support-slices",
        metavar="I,J,K",
        help="support slice indices, 0-based in the file's storage order (default: the middle slice of "
        "those holding the label)",
    )
    p.add_argument(
        "--slices",
        metavar="A:B",
        help="query slice indices to segment (0-based), A to B inclusive (default: all)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME|DIR",
        help="model name in the store, a model folder, or a built-in engine: 'propagation' (follows the "
        "painted slices through the volume and stops where the structure ends) or 'classical' (registration) "
        "(default: the store's default model, else 'propagation')",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="query slices per batch")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="model arithmetic (auto: bf16/fp16 on a GPU, fp32 on the CPU; bf16 on a recent CPU is about "
        "2x faster with near-identical masks)",
    )
    p.add_argument(
        "--nearest-support",
        action="store_true",
        help="with several supports, each query slice uses the nearest one instead of all K",
    )
    p.add_argument("--out", metavar="PATH", help="output mask (.nii or .nii.gz)")
    p.add_argument(
        "--out-dir",
        metavar="DIR",
        help="with --queries: the folder of the masks (<study id>.nii.gz) and the run record "
        "(run-record.jsonl); a rerun skips the studies done with the same settings",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="with --queries: processes reading the next studies while a model works, or segmenting studies "
        "at once with a built-in engine (default: automatic; 0: none)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary of the run")
    p.set_defaults(run=run)


def _parse_indices(text: str | None, what: str) -> list[int] | None:
    from sd_fsmis.core.errors import UserError

    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UserError(
            f"{what}: expected comma-separated slice indices such as 10,20,30, got {text!r}"
        ) from None


def _parse_range(text: str | None) -> list[int] | None:
    from sd_fsmis.core.errors import UserError

    if not text:
        return None
    try:
        a, _, b = text.partition(":")
        lo, hi = int(a), int(b or a)
    except ValueError:
        raise UserError(f"--slices: expected A:B, got {text!r}") from None
    if hi < lo:
        raise UserError(f"--slices: the range {text} is empty")
    return list(range(lo, hi + 1))


def _same_study(a: str, sa: str | None, b: str, sb: str | None) -> bool:
    return Path(a).resolve() == Path(b).resolve() and (sa or None) == (sb or None)


def run(args: argparse.Namespace) -> int:
    from sd_fsmis.core.errors import UserError

    if args.queries:
        for option, value in (("--query", args.query), ("--out", args.out), ("--slices", args.slices)):
            if value:
                raise UserError(f"{option} is for one study; with --queries give --out-dir")
        from sd_fsmis.commands.segment_cohort import run_cohort_command

        return run_cohort_command(args)
    for option, value in (
        ("--query", args.query),
        ("--support-mask", args.support_mask),
        ("--out", args.out),
    ):
        if not value:
            raise UserError(f"{option} is needed (or --queries FOLDER|MANIFEST --out-dir DIR for a cohort)")
    if args.out_dir or args.workers is not None:
        raise UserError("--out-dir and --workers are for a cohort (--queries); give --out for one study")
    return _run_one(args)


def _run_one(args: argparse.Namespace) -> int:
    from sd_fsmis.core.engines.segmentation import SupportSource, segment_volume, support_mask_for_label
    from sd_fsmis.core.errors import MaskError, UserError
    from sd_fsmis.core.io.destinations import Inputs, check_destination
    from sd_fsmis.core.io.imagefile import is_nifti
    from sd_fsmis.core.io.labelmap import LabelMap, labels_sidecar_path, refuse_image_as_mask
    from sd_fsmis.core.io.loader import load_volume
    from sd_fsmis.terminal import progress_bar

    if not is_nifti(args.out):
        raise UserError(f"--out {args.out}: the mask is written as NIfTI; use a name ending in .nii.gz")
    inputs = Inputs().add(args.query, "the query study (--query)")
    inputs.add(args.support, "the support study (--support)")
    inputs.add(args.support_mask, "the support mask (--support-mask)")
    sidecar = labels_sidecar_path(args.out)
    check_destination(args.out, inputs, option="--out", also=[sidecar])
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if not 1 <= args.label <= 65535:
        raise MaskError(f"--label {args.label}: label values are 1..65535")
    support_slices = _parse_indices(args.support_slices, "--support-slices")
    query_slices = _parse_range(args.slices)

    support_path = args.support or args.query
    refuse_image_as_mask(args.support_mask, [args.query, support_path], "--support-mask")
    query = load_volume(args.query, args.query_series)
    # the mask is uint8 (gzip makes it far smaller): the disk must hold at least that
    check_destination(
        args.out, inputs, option="--out", also=[sidecar], size_hint=_mask_bytes(query, args.out)
    )
    support_series = args.support_series if args.support else args.query_series
    is_query = _same_study(support_path, support_series, args.query, args.query_series)
    support = query if is_query else load_volume(support_path, support_series)
    support_labels = LabelMap.load(args.support_mask, like=support.geometry, like_name="support image")
    refuse_image_as_mask(support_labels, [support], "--support-mask")
    mask = support_mask_for_label(support_labels, args.label, Path(args.support_mask).name)
    label_name = args.label_name or support_labels.label(args.label).name

    # said once, before the work: what loading changed (a regular grid for irregular slices, NaN, ...)
    for what, volume in [("query", query)] + ([] if is_query else [("support", support)]):
        for warning in volume.warnings:
            print(f"sd-fsmis: note: {what}: {warning}", file=sys.stderr)
    engine = _load_engine(args)
    source = SupportSource(
        volume=support, mask=mask, slices=support_slices, is_query=is_query, name=str(support_path)
    )
    with progress_bar(f"segment ({engine.name})") as progress:
        outcome = segment_volume(
            query,
            [source],
            engine,
            label=args.label,
            label_name=label_name,
            label_colour=support_labels.label(args.label).colour,
            query_slices=query_slices,
            assignment="nearest" if args.nearest_support else "all",
            progress=progress,
        )
    out = outcome.label_map.save(args.out)
    summary = {
        "out": str(out),
        "engine": outcome.engine,
        "shots": outcome.shots,
        "support_slices": [z for _, z in outcome.support_slices],
        "query_slices": [outcome.query_slices[0], outcome.query_slices[-1]],
        "voxels": int(outcome.mask.sum()),
        "volume_ml": float(outcome.mask.sum() * _voxel_ml(query)),
        "slices_with_label": int(outcome.mask.any(axis=(1, 2)).sum()),
        "seconds": round(outcome.seconds, 3),
        "query_warnings": list(query.warnings),
    }
    if "grid" in outcome.settings:  # the query was resampled to a regular grid: the record says so
        summary["grid"] = outcome.settings["grid"]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{out}: {summary['voxels']} voxels ({summary['volume_ml']:.1f} ml) on "
            f"{summary['slices_with_label']} slices, {outcome.engine}, {outcome.shots}-shot, "
            f"{outcome.seconds:.1f} s",
            file=sys.stdout,
        )
    return 0


def engine_name(args: argparse.Namespace) -> str:
    """The engine ``--model`` names, else the store's default model, else the built-in default."""
    from sd_fsmis.core.engines.registry import default_engine_name

    return args.model or default_engine_name()


def _load_engine(args: argparse.Namespace):
    from sd_fsmis.core.engines.registry import load_engine

    name = engine_name(args)
    precision = None if args.precision == "auto" else args.precision
    return load_engine(name, device=args.device, batch_size=args.batch_size, precision=precision)


def _mask_bytes(volume, out: str) -> int:
    """What the mask file may take on disk: a byte per voxel, a tenth of it when compressed."""
    voxels = int(volume.array.size)
    return voxels // 10 if str(out).lower().endswith(".gz") else voxels


def _voxel_ml(volume) -> float:
    sx, sy, sz = volume.geometry.spacing
    return sx * sy * sz / 1000.0
