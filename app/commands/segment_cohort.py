"""``sd-fsmis segment --queries FOLDER|MANIFEST --out-dir DIR``: segment every study of a cohort.

The work is :func:`sd_fsmis.core.cohort.run.run_cohort`; this module turns the options into its settings,
takes this process's share under ``accelerate launch`` and prints the summary table. Exit code 0 when every
study was segmented (or was done before), 3 when some failed (their errors are in the run record).
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_SOME_FAILED = 3


def run_cohort_command(args: argparse.Namespace) -> int:
    from sd_fsmis.commands.segment import _parse_indices, engine_name
    from sd_fsmis.core.cohort.record import record_path, summary_table
    from sd_fsmis.core.cohort.run import (
        CohortSettings,
        finish_processes,
        gather_records,
        process_device,
        run_cohort,
        shard_from_environment,
    )
    from sd_fsmis.core.cohort.studies import SupportSpec, open_cohort
    from sd_fsmis.core.errors import MaskError, UserError
    from sd_fsmis.terminal import progress_bar

    if not args.out_dir:
        raise UserError("--queries needs --out-dir DIR (one mask per study goes there)")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 0:
        raise UserError("--workers must be 0 or more")
    if not 1 <= args.label <= 65535:
        raise MaskError(f"--label {args.label}: label values are 1..65535")
    if args.support and not args.support_mask:
        raise UserError("--support needs its --support-mask")
    support = None
    if args.support_mask:
        support = SupportSpec(
            mask=args.support_mask,
            image=args.support,
            series=args.support_series,
            slices=tuple(_parse_indices(args.support_slices, "--support-slices") or ()) or None,
        )
        if support.image is None:
            raise UserError("with --queries, --support-mask needs --support (the study it is painted on)")
    shard = shard_from_environment(args.device)
    cohort = open_cohort(args.queries, exclude=[args.out_dir])
    settings = CohortSettings(
        engine=engine_name(args),
        label=args.label,
        label_name=args.label_name,
        support=support,
        assignment="nearest" if args.nearest_support else "all",
        device=process_device(args.device, shard),
        batch_size=args.batch_size,
        precision=None if args.precision == "auto" else args.precision,
        workers=args.workers,
    )
    if shard.is_main and cohort.left_out:
        shown = ", ".join(cohort.left_out[:3]) + (" ..." if len(cohort.left_out) > 3 else "")
        print(f"sd-fsmis: note: not studies, left out: {shown}", file=sys.stderr)
    where = f" (process {shard.index + 1} of {shard.count})" if shard.count > 1 else ""
    with progress_bar(f"segment {settings.engine}{where}", unit="study") as progress:
        report = run_cohort(cohort, args.out_dir, settings, shard=shard, progress=progress)
    entries = gather_records(report.records, shard)  # this run's lines, from every process
    if not shard.is_main:
        # the main process reports the whole cohort; a failure here must not make the launcher stop it
        finish_processes(shard)
        return 0
    ids = {s.id for s in cohort.studies}
    order = {s.id: k for k, s in enumerate(cohort.studies)}
    entries = sorted((e for e in entries if e.get("study") in ids), key=lambda e: order[e["study"]])
    written = {str(e["study"]) for e in entries}
    skipped = [s.id for s in cohort.studies if s.id not in written]
    failed = [e for e in entries if e.get("status") == "failed"]
    if args.json:
        print(
            json.dumps(
                {
                    "out_dir": str(args.out_dir),
                    "record": str(record_path(args.out_dir, shard.index, shard.count)),
                    "studies": len(cohort.studies),
                    "segmented": sum(1 for e in entries if e.get("status") == "done"),
                    "failed": len(failed),
                    "skipped": len(skipped),
                    "processes": shard.count,
                    "records": entries,
                },
                indent=2,
            )
        )
    else:
        print(summary_table(entries, skipped))
    for entry in failed:
        print(f"sd-fsmis: study {entry['study']} failed: {entry.get('error')}", file=sys.stderr)
    finish_processes(shard)
    return EXIT_SOME_FAILED if failed else 0
