"""``sd-fsmis models``: the model store (list, info, create, import-reference, remove, check).

- ``models list [--json]``
- ``models info NAME_OR_DIR [--json]``
- ``models create --sd PATH_OR_HUB_ID --dinov2 PATH_OR_HUB_ID (--out DIR | --name NAME)
  [--copy-weights | --reference-weights] [--seed N]``; ``models create --preset tiny (--out | --name)``
- ``models import-reference CKPT_DIR --sd ... --dinov2 ... (--out DIR | --name NAME)``
- ``models remove NAME``
- ``models rename OLD NEW``
- ``models default [NAME] [--clear]``: show, choose or clear the default model
- ``models import DIR [--name NAME] [--default]``: copy a model folder (e.g. a training run's ``best/``) in
- ``models download [--sd REPO] [--dinov2 REPO]``: fetch Stable Diffusion 1.5 and DINOv2 into the
  Hugging Face cache (disk space checked first; resumes with the files already there)
- ``models check NAME_OR_DIR [--device auto|cuda|mps|cpu]``: load the model and segment a generated phantom
"""

from __future__ import annotations

import argparse
import json
import sys

from sd_fsmis.core.jobs import human_bytes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list, create, import and remove SD-FSMIS models")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(run=_run_missing_action, models_parser=p)

    q = sub.add_parser("list", help="models in the store")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(run=run_list)

    q = sub.add_parser("info", help="what a model (store name or folder) holds")
    q.add_argument("model", metavar="NAME_OR_DIR")
    q.add_argument("--json", action="store_true", help="print JSON (with the full config)")
    q.set_defaults(run=run_info)

    q = sub.add_parser(
        "create",
        help="create a base model from Stable Diffusion 1.5 + DINOv2 (folders or Hub ids), or a preset",
    )
    source = q.add_argument_group("sources (or --preset)")
    source.add_argument(
        "--sd", metavar="PATH_OR_HUB_ID", help="Stable Diffusion 1.x folder (vae/, unet/) or Hub id"
    )
    source.add_argument("--dinov2", metavar="PATH_OR_HUB_ID", help="DINOv2 folder or Hub id")
    source.add_argument("--preset", choices=["tiny"], help="random weights of a built-in architecture")
    _add_output_arguments(q)
    q.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    q.add_argument("--description", default="", help="a line shown by 'models info'")
    q.add_argument(
        "--preprocessing",
        choices=["ours", "reference"],
        default="ours",
        help="ours (default) or the reference implementation's exact recipe (nearest resizing, its VTCT "
        "mask offset, 8-bit DINOv2 input, transformers 4.36.2's position embeddings), to train as it did",
    )
    q.set_defaults(run=run_create)

    q = sub.add_parser(
        "import-reference", help="import a checkpoint of the SD-FSMIS reference implementation"
    )
    q.add_argument(
        "checkpoint", metavar="CKPT_DIR", help="checkpoint-N/ folder (or the run folder: latest one)"
    )
    q.add_argument(
        "--sd",
        required=True,
        metavar="PATH_OR_HUB_ID",
        help="Stable Diffusion 1.x folder or Hub id: only its VAE is used (a folder with just vae/ will do)",
    )
    q.add_argument("--dinov2", required=True, metavar="PATH_OR_HUB_ID", help="DINOv2 folder or Hub id")
    _add_output_arguments(q)
    q.add_argument("--description", default="", help="a line shown by 'models info'")
    q.set_defaults(run=run_import_reference)

    q = sub.add_parser("remove", help="delete a model from the store")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(run=run_remove)

    q = sub.add_parser("rename", help="rename a model of the store")
    q.add_argument("old", metavar="OLD")
    q.add_argument("new", metavar="NEW")
    q.set_defaults(run=run_rename)

    q = sub.add_parser("default", help="show, choose (NAME) or clear (--clear) the default model")
    q.add_argument("name", metavar="NAME", nargs="?", default=None)
    q.add_argument("--clear", action="store_true", help="forget the choice (the newest model is used)")
    q.set_defaults(run=run_default)

    q = sub.add_parser("import", help="copy a model folder (e.g. a training run's best/) into the store")
    q.add_argument("folder", metavar="DIR")
    q.add_argument("--name", metavar="NAME", help="store name (default: the folder's name)")
    q.add_argument("--default", action="store_true", help="make it the default model")
    q.set_defaults(run=run_import)

    q = sub.add_parser(
        "download", help="download Stable Diffusion 1.5 and DINOv2 from the Hugging Face Hub into its cache"
    )
    q.add_argument("--sd", metavar="REPO", default=None, help="Stable Diffusion 1.x repo id (default SD 1.5)")
    q.add_argument("--dinov2", metavar="REPO", default=None, help="DINOv2 repo id (default dinov2-base)")
    q.set_defaults(run=run_download)

    q = sub.add_parser("check", help="load a model and segment a generated phantom (a smoke test)")
    q.add_argument("model", metavar="NAME_OR_DIR", nargs="?", default=None, help="default: the default model")
    q.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu (default auto)")
    q.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    q.set_defaults(run=run_check)


def _add_output_arguments(q: argparse.ArgumentParser) -> None:
    where = q.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="DIR", help="write the model to this folder")
    where.add_argument("--name", metavar="NAME", help="add the model to the store under this name")
    weights = q.add_mutually_exclusive_group()
    weights.add_argument(
        "--copy-weights",
        dest="copy_weights",
        action="store_true",
        default=True,
        help="copy the VAE and DINOv2 into the model folder (default)",
    )
    weights.add_argument(
        "--reference-weights",
        dest="copy_weights",
        action="store_false",
        help="refer to the VAE and DINOv2 folders by absolute path instead of copying them",
    )


def _run_missing_action(args: argparse.Namespace) -> int:
    args.models_parser.print_help(sys.stderr)
    return 2


def run_list(args: argparse.Namespace) -> int:
    from sd_fsmis.core.model.store import list_models
    from sd_fsmis.paths import models_dir

    models = list_models()
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return 0
    if not models:
        print(f"no models in {models_dir()} (create one with 'sd-fsmis models create')")
        return 0
    rows = [("NAME", "BASE", "CLASSES", "DICE", "CREATED", "SIZE", "PATH")]
    for m in models:
        name = m.name if m.valid else f"{m.name} (broken: {m.problem})"
        if m.is_default:
            name += " (default)"
        size = human_bytes(m.size_bytes) + (" +refs" if m.references else "")
        dice = "-" if m.validation_dice is None else f"{m.validation_dice:.3f}"
        rows.append((name, m.base, ",".join(m.classes) or "-", dice, m.created, size, m.path))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0


def run_info(args: argparse.Namespace) -> int:
    from sd_fsmis.core.model.store import model_info

    info = model_info(args.model, with_config=True)
    if args.json:
        print(json.dumps(info.to_dict(with_config=True), indent=2))
        return 0 if info.valid else 2
    config = info.config or {}
    lines = [
        ("name", info.name),
        ("path", info.path),
        ("status", "ok" if info.valid else f"broken: {info.problem}"),
        ("base", info.base),
        ("kind", info.kind),
        ("created", info.created),
        ("description", info.description),
        ("classes", ", ".join(info.classes) or "-"),
        ("validation Dice", "-" if info.validation_dice is None else f"{info.validation_dice:.3f}"),
        ("built from", ", ".join(f"{k} {v}" for k, v in info.base_models.items()) or "-"),
        ("default", "yes" if info.is_default else "no"),
        ("size", human_bytes(info.size_bytes)),
    ]
    if config:
        pre, vtct = config.get("preprocessing", {}), config.get("vtct", {})
        lines += [
            ("image size", str(pre.get("image_size"))),
            (
                "interpolation",
                f"image {pre.get('image_interpolation')}, mask {pre.get('mask_interpolation')}",
            ),
            ("VTCT mask", str(vtct.get("mask_alignment"))),
            ("DINOv2 positions", str(vtct.get("position_embedding_interpolation", "size"))),
            ("format version", str(info.format_version)),
            ("versions", ", ".join(f"{k} {v}" for k, v in config.get("versions", {}).items() if v)),
        ]
    for key, value in info.references.items():
        lines.append((f"{key} (referenced)", value))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    return 0 if info.valid else 2


def run_create(args: argparse.Namespace) -> int:
    from sd_fsmis.core.errors import UserError

    if args.preset:
        if args.sd or args.dinov2:
            raise UserError("--preset builds random weights: do not give --sd/--dinov2 with it")
        from sd_fsmis.core.model.create import create_preset_model

        path = create_preset_model(
            args.preset,
            out=args.out,
            name=args.name,
            seed=args.seed,
            description=args.description,
            preprocessing=args.preprocessing,
        )
    else:
        if not args.sd or not args.dinov2:
            raise UserError("give --sd and --dinov2 (local folders or Hub ids), or --preset tiny")
        from sd_fsmis.core.model.create import create_base_model

        path = create_base_model(
            args.sd,
            args.dinov2,
            out=args.out,
            name=args.name,
            copy_weights=args.copy_weights,
            seed=args.seed,
            description=args.description,
            preprocessing=args.preprocessing,
        )
    print(f"created model {path.name} in {path}")
    return 0


def run_import_reference(args: argparse.Namespace) -> int:
    from sd_fsmis.core.model.reference_import import import_reference_checkpoint

    path = import_reference_checkpoint(
        args.checkpoint,
        args.sd,
        args.dinov2,
        out=args.out,
        name=args.name,
        copy_weights=args.copy_weights,
        description=args.description,
    )
    print(f"imported reference checkpoint as model {path.name} in {path}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from sd_fsmis.core.model.store import remove_model

    path = remove_model(args.name)
    print(f"removed model {args.name} ({path})")
    return 0


def run_rename(args: argparse.Namespace) -> int:
    from sd_fsmis.core.model.store import rename_model

    path = rename_model(args.old, args.new)
    print(f"renamed model {args.old} to {args.new} ({path})")
    return 0


def run_default(args: argparse.Namespace) -> int:
    from sd_fsmis.core.errors import UserError
    from sd_fsmis.core.model.store import default_model_name, set_default_model

    if args.clear and args.name:
        raise UserError("give a NAME to choose the default model, or --clear to forget the choice")
    if args.clear:
        set_default_model(None)
        print("default model cleared (the newest model is used)")
        return 0
    if args.name:
        set_default_model(args.name)
        print(f"default model: {args.name}")
        return 0
    chosen = default_model_name()
    if chosen is not None:
        print(chosen)
        return 0
    print("no default model chosen: the built-in engine is used (sd-fsmis models default NAME chooses one)")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from sd_fsmis.core.model.store import import_model_folder, set_default_model
    from sd_fsmis.terminal import progress_bar

    with progress_bar("importing", unit="B") as progress:
        path = import_model_folder(args.folder, args.name, progress=progress)
    if args.default:
        set_default_model(path.name)
    print(f"imported model {path.name} into {path}" + (" (default)" if args.default else ""))
    return 0


def run_download(args: argparse.Namespace) -> int:
    from sd_fsmis.core.model.download import DEFAULT_DINOV2_REPO, DEFAULT_SD_REPO, download_base_sources
    from sd_fsmis.terminal import progress_bar

    with progress_bar("downloading", unit="B") as progress:
        sd_dir, dinov2_dir = download_base_sources(
            args.sd or DEFAULT_SD_REPO, args.dinov2 or DEFAULT_DINOV2_REPO, progress=progress
        )
    print(f"Stable Diffusion: {sd_dir}")
    print(f"DINOv2: {dinov2_dir}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    import numpy as np

    from sd_fsmis.core.device import default_dtype, select_device
    from sd_fsmis.core.engines.base import SegmentationRequest, SupportExample
    from sd_fsmis.core.model.engine import SDFSMISEngine

    device = select_device(args.device)  # a missing device is a one-line error before anything loads
    dtype = default_dtype(device, args.precision)
    engine = SDFSMISEngine.from_pretrained(args.model, device=device, dtype=dtype)
    # a phantom: 8 slices of a bright disc whose radius shrinks away from the middle slice
    depth = np.arange(8, dtype=np.float32)[:, None, None]
    rows, cols = np.mgrid[0:96, 0:96].astype(np.float32)
    radius = 24.0 - 2.0 * np.abs(depth - 3.5)  # [8, 1, 1]
    disc = (rows - 48) ** 2 + (cols - 48) ** 2 < radius**2  # [8, 96, 96]
    volume = np.where(disc, 0.8, 0.2).astype(np.float32)
    request = SegmentationRequest(query=volume, supports=[SupportExample(volume[3], volume[3] > 0.5)])
    result = engine.segment(request)
    print(f"{engine.describe()}: {request.query.shape[0]} slices in {result.seconds:.2f} s, ok")
    return 0
