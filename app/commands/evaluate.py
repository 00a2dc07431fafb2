"""``sd-fsmis evaluate``: the few-shot evaluation protocol (docs/fsmis-protocol.md) on a data folder.

``--model`` may be a training run folder: its last model is evaluated (``--run-model best``: its ``best/``,
chosen on the run's validation volumes), and the report's model name says which, with the step.

Prints the papers' table (Dice % per class and their mean, seconds per volume), the per-fold and per-query
Dice, and HD95 / ASSD in mm; ``--json`` prints the whole report as JSON instead; ``--out`` writes it to a
file; ``--save-predictions DIR`` writes every prediction as ``DIR/fold<k>/pred_<id>_label<L>.nii.gz``
(query geometry) so that anyone can recompute the numbers. The protocol's details (folds, support slices,
EP1 chunks, Dice averaging) are in :mod:`sd_fsmis.core.evaluation.protocols`.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate an engine: the literature's few-shot protocols (EP1/EP2) or the clinical workflow",
        description="Evaluate a segmentation engine with the few-shot medical segmentation protocol of the "
        "literature on a folder laid out like CHAOS T2 (images/image_ID.nii.gz, labels/label_ID.nii.gz): "
        "5 folds, support volume at position 2 of each fold, support slices at 1/6, 1/2, 5/6 of the "
        "labelled slices. EP1: each of the query's three labelled chunks with its support slice (the "
        "published tables); EP2: every query slice with the middle support slice. Without folds, "
        "supports painted on each volume itself: 'study' scores the structure's own slice range only; "
        "'clinical' segments and scores every slice of the volume, as a person gets it.",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="NAME|DIR",
        help="model name in the store, a model folder, a training run folder (its last model unless "
        "--run-model best), or a built-in engine ('propagation', 'classical')",
    )
    p.add_argument(
        "--run-model",
        choices=["last", "best"],
        help="with a training run folder as --model: its last model (default) or best/ (chosen on the run's "
        "validation volumes); the report names the one used",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR|MANIFEST",
        help="data folder with images/ and labels/ (like CHAOS), or a .json/.csv manifest",
    )
    p.add_argument(
        "--fold", default="all", metavar="K|all", help="fold 0..4, several as 0,2, or 'all' (default)"
    )
    from sd_fsmis.core.evaluation.protocols import PROTOCOLS

    p.add_argument(
        "--protocol",
        default="ep1",
        type=str.lower,
        choices=list(PROTOCOLS),
        help="; ".join(f"{name}: {spec.summary}" for name, spec in PROTOCOLS.items()) + " (default ep1)",
    )
    p.add_argument(
        "--ids",
        metavar="I,J",
        help="with a protocol whose supports come from each volume (study, clinical): the volumes to "
        "evaluate (default: all)",
    )
    p.add_argument(
        "--labels",
        metavar="L1,L2",
        help="classes to evaluate (default: all; CHAOS: 1 liver, 2 right kidney, 3 left kidney, 4 spleen)",
    )
    p.add_argument(
        "--shots",
        type=int,
        default=1,
        metavar="N",
        help="support volumes per fold (default 1); study, clinical: painted slices per volume (1 or 3)",
    )
    p.add_argument(
        "--pooled", action="store_true", help="also report Dice of TP/FP/FN pooled over each fold's queries"
    )
    p.add_argument("--no-distances", action="store_true", help="skip HD95 and ASSD (faster)")
    p.add_argument("--save-predictions", metavar="DIR", help="write every prediction as NIfTI into DIR")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument(
        "--batch-size", type=int, default=None, metavar="N", help="query slices per batch (models)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="built-in engines: threads working at once (default: 2, or 1 on one core); 1 is the reference "
        "mode for evaluation (the propagation engine gives the same result for any number)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--out", metavar="FILE.json", help="also write the report as JSON to this file")
    p.set_defaults(run=run)


def _parse_labels(text: str | None) -> list[int] | None:
    from sd_fsmis.core.evaluation.folds import EvaluationError

    if not text:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise EvaluationError(f"--labels: expected class values such as 1,2,3,4, got {text!r}") from None
    if not values:
        raise EvaluationError("--labels: no class given")
    return values


def _parse_ids(text: str) -> list[int]:
    from sd_fsmis.core.evaluation.folds import EvaluationError

    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise EvaluationError(f"--ids: expected volume ids such as 2,5, got {text!r}") from None
    if not values:
        raise EvaluationError("--ids: no volume given")
    return values


def _model_to_evaluate(args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """``(what to load, its name in the report, warnings)``; a run folder gives its last (or best) model."""
    import sys

    from sd_fsmis.core.evaluation.folds import EvaluationError
    from sd_fsmis.core.training.run_folder import is_run_folder, run_model

    if not is_run_folder(args.model):
        if args.run_model:
            raise EvaluationError(f"--run-model goes with a training run folder; {args.model} is not one")
        return args.model, args.model, []
    chosen = run_model(args.model, args.run_model or "last")
    print(f"sd-fsmis: evaluating the {chosen.which} model of the run: {chosen.folder}", file=sys.stderr)
    return str(chosen.folder), chosen.label, [chosen.caution] if chosen.caution else []


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from sd_fsmis.core.engines.registry import load_engine
    from sd_fsmis.core.evaluation.folds import EvaluationError, parse_folds
    from sd_fsmis.core.evaluation.protocols import PROTOCOLS, evaluate
    from sd_fsmis.core.io.datasets import FewShotDataset
    from sd_fsmis.core.io.destinations import check_destination
    from sd_fsmis.terminal import progress_bar

    own_volume = PROTOCOLS[args.protocol].supports_from_query
    folds = None if own_volume else parse_folds(args.fold)
    labels = _parse_labels(args.labels)
    if args.ids and not own_volume:
        raise EvaluationError(
            f"--ids goes with --protocol study or clinical ({args.protocol} chooses its volumes by fold)"
        )
    ids = _parse_ids(args.ids) if own_volume and args.ids else None
    if args.shots < 1:
        raise EvaluationError("--shots must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise EvaluationError("--batch-size must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise EvaluationError("--threads must be at least 1")
    if args.out and not str(args.out).lower().endswith(".json"):
        raise EvaluationError(f"--out {args.out}: the report is JSON; use a name ending in .json")
    dataset = FewShotDataset.open(args.data)
    if args.out:  # before the work: a report that cannot be written is known now, not in an hour
        check_destination(args.out, dataset.inputs(), option="--out")
    model, model_name, cautions = _model_to_evaluate(args)
    engine = load_engine(model, device=args.device, batch_size=args.batch_size)
    if args.threads is not None and hasattr(engine, "workers"):
        engine.workers = args.threads  # the built-in engines' thread pool
    with progress_bar(f"evaluate {args.protocol.upper()} ({engine.name})") as progress:
        report = evaluate(
            dataset,
            engine,
            protocol=args.protocol,
            folds=folds,
            ids=ids,
            labels=labels,
            shots=args.shots,
            model_name=model_name,
            surface=not args.no_distances,
            pooled=args.pooled,
            save_predictions=args.save_predictions,
            progress=progress,
        )
    report.notes[:0] = cautions
    for note in report.notes:  # what the table shows as "—", and why
        print(f"sd-fsmis: warning: {note}", file=sys.stderr)
    if args.out:
        report.save(args.out)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.markdown())
        print(
            f"\n{len(report.queries)} query segmentations in {report.seconds_total:.0f} s "
            f"({report.seconds_per_volume():.2f} s per volume and class)",
            file=sys.stdout,
        )
    return 0
