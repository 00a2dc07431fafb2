"""``sd-fsmis supervoxels``: the supervoxels of a volume (self-supervised pseudo-labels) as a label map.

Computed as :mod:`sd_fsmis.core.training.supervoxels` says (Felzenszwalb per slice inside the body, linked
across slices; SSL-ALPNet's settings), kept in the application's cache (keyed by the image's voxels), and
written as a NIfTI label map on the image's grid with ``FILE.supervoxels.json`` beside it (parameters,
count, the image).
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "supervoxels",
        help="supervoxels of a volume (pseudo-labels for self-supervised fine-tuning) as a label map",
        description="Compute the supervoxels of a volume the way the self-supervised few-shot literature "
        "does (SSL-ALPNet: Felzenszwalb's graph segmentation of each slice inside the body, here linked "
        "across slices) and write them as a label map on the image's grid (0 = outside the body). Results "
        "are cached by image content, so 'sd-fsmis train --source supervoxels' reuses them.",
    )
    p.add_argument("path", metavar="PATH", help="the volume (DICOM folder or file, NIfTI)")
    p.add_argument("--series", metavar="UID", help="the series to use when PATH holds several")
    p.add_argument("--out", required=True, metavar="FILE.nii.gz", help="the supervoxel label map to write")
    p.add_argument("--no-cache", action="store_true", help="compute again; neither read nor fill the cache")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sd_fsmis.core.errors import UserError
    from sd_fsmis.core.io.destinations import Inputs, check_destination
    from sd_fsmis.core.io.imagefile import is_nifti
    from sd_fsmis.core.io.loader import load_volume
    from sd_fsmis.core.jobs import CancelToken
    from sd_fsmis.core.training.supervoxels import cached_supervoxels, save_supervoxels, sidecar_path
    from sd_fsmis.paths import cache_dir
    from sd_fsmis.terminal import progress_bar

    if not is_nifti(args.out):
        raise UserError(f"--out {args.out}: supervoxels are written as NIfTI; use a name ending in .nii.gz")
    inputs = Inputs().add(args.path, "the volume (PATH)")
    check_destination(args.out, inputs, option="--out", also=[sidecar_path(args.out)])
    volume = load_volume(args.path, args.series)
    for warning in volume.warnings:
        print(f"sd-fsmis: note: {warning}", file=sys.stderr)
    # two bytes per voxel, compressed to a small fraction
    check_destination(
        args.out, inputs, option="--out", also=[sidecar_path(args.out)], size_hint=volume.array.size // 5
    )
    cache = None if args.no_cache else cache_dir() / "supervoxels"
    with progress_bar("supervoxels", unit="slice") as bar:
        result = cached_supervoxels(volume, cache, progress=bar, cancel=CancelToken())
    out = save_supervoxels(result, volume.geometry, args.out, source=args.path)
    counts = result.per_slice_counts()
    body = [c for c in counts if c]
    summary = {
        "out": str(out),
        "supervoxels": result.count,
        "per_slice": {"min": min(body, default=0), "max": max(body, default=0)},
        "slices_with_body": len(body),
        "from_cache": result.from_cache,
        "cache": result.cache_path or None,
        "parameters": result.parameters.to_dict(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        how = "from the cache" if result.from_cache else "computed"
        print(
            f"{out}: {result.count} supervoxels ({summary['per_slice']['min']}-{summary['per_slice']['max']} "
            f"per slice on {len(body)} slices with body), {how}"
        )
    return 0
