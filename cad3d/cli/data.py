"""`cad3d data synth | import | check | preview`."""

from __future__ import annotations

import argparse
import os
import sys

from cad3d.cli._args import non_negative_int as _non_negative
from cad3d.cli._args import positive_int as _positive
from cad3d.errors import DatasetError


def _shard(text: str):
    from cad3d.data.synth import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="make, import, check and look at datasets",
                       description="Make, import, check and look at datasets of drawings and point clouds.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    default_workers = min(os.cpu_count() or 1, 8)

    def render_options(q):
        q.add_argument("--view", choices=["iso", "three_view", "random"], default="iso",
                       help="isometric drawing (default), a sheet of front/top/side/iso views, or jittered views")
        q.add_argument("--hidden", choices=["none", "dashed"], default="none",
                       help="draw hidden edges dashed (clean style; the varied style picks per sample)")
        q.add_argument("--projection", choices=["first-angle", "third-angle"], default="first-angle",
                       help="standard of three-view sheets (default first-angle, ISO: top view below the front "
                            "view, left view right of it; third-angle: top view above, right view right of it)")
        q.add_argument("--style", choices=["clean", "varied"], default="clean",
                       help="clean (default): the part's lines only, filling the image; varied: a seeded mix of "
                            "sheets as people draw and scan them (border, title block, centre lines, dimensions, "
                            "line weights, placement, skew, blur, paper and scan noise, JPEG-like artefacts)")
        q.add_argument("--num-points", type=_positive, default=4096, help="surface samples per cloud (default 4096)")
        q.add_argument("--image-size", type=_positive, default=256, help="drawing size in pixels (default 256)")
        q.add_argument("--dense-points", type=_non_negative, default=32768,
                       help="dense surface samples per part, the ground truth to score against "
                            "(default 32768; 0 = none)")
        q.add_argument("--layers", type=_non_negative, default=4,
                       help="layered depth maps per drawing: each pixel's first K surface crossings, what the "
                            "depth network learns to lift drawings with (default 4; 0 = none)")
        q.add_argument("--seed", type=int, default=0, help="same seed => byte-identical dataset (default 0)")
        q.add_argument("--workers", type=_positive, default=default_workers,
                       help=f"parallel processes (default {default_workers})")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")

    q = dsub.add_parser("synth", help="generate a synthetic dataset of parametric parts",
                        description="Generate paired drawings, point clouds, depth maps and metadata of "
                                    "parametric mechanical parts, with a deterministic train/val/test split.")
    q.add_argument("--out", required=True, help="dataset folder (e.g. training_data/diffusion_synthetic)")
    q.add_argument("--num-samples", type=_positive, required=True, help="number of samples of the whole dataset")
    q.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="make only shard I of N (samples k with k %% N == I); shards together equal the whole")
    q.add_argument("--families", nargs="+", default=None, metavar="NAME",
                   help="restrict to these part families (cad3d.data.parts.FAMILIES, or procedural: random CAD "
                        "programs)")
    render_options(q)
    q.set_defaults(func=_synth)

    q = dsub.add_parser("import", help="draw and sample your own meshes (STL/OBJ/PLY/OFF/GLB)",
                        description="Render and sample the user's CAD meshes exactly like synthetic parts. "
                                    "Unreadable meshes are skipped and reported; open meshes are drawn with a warning.")
    q.add_argument("mesh_dir", help="folder of mesh files (searched recursively)")
    q.add_argument("--out", required=True, help="dataset folder (e.g. training_data/real_cad)")
    render_options(q)
    q.set_defaults(func=_import)

    q = dsub.add_parser("check", help="list every problem of a dataset; exit 1 if any",
                        description="Load every file of a dataset and report every problem with counts.")
    q.add_argument("data_dir")
    q.set_defaults(func=_check)

    q = dsub.add_parser("preview", help="contact sheet of drawings beside their clouds",
                        description="Write a PNG contact sheet: each drawing beside a render of its point cloud.")
    q.add_argument("data_dir")
    q.add_argument("-o", "--output", default=None, help="PNG path (default outputs/preview_<folder>.png)")
    q.add_argument("-n", "--num-samples", type=_positive, default=12)
    q.add_argument("--split", choices=["train", "val", "test"], default=None)
    q.set_defaults(func=_preview)


def _synth(args) -> int:
    from cad3d.data.synth import create_synthetic_training_data

    try:
        path = create_synthetic_training_data(
            args.out, args.num_samples, seed=args.seed, view=args.view, num_points=args.num_points,
            image_size=args.image_size, hidden=args.hidden, dense_points=args.dense_points, layers=args.layers,
            projection=args.projection, style=args.style,
            workers=args.workers, shard=args.shard,
            families=args.families, progress=not args.no_progress,
        )
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    print(f"dataset written to {path.parent} (manifest {path.name})")
    return 0


def _import(args) -> int:
    from cad3d.data.importer import import_meshes

    report = import_meshes(args.mesh_dir, args.out, seed=args.seed, view=args.view, num_points=args.num_points,
                           image_size=args.image_size, hidden=args.hidden, dense_points=args.dense_points, layers=args.layers, projection=args.projection,
                           style=args.style,
                           workers=args.workers, progress=not args.no_progress)
    for path, note in report.warnings:
        print(f"warning: {path}: {note}", file=sys.stderr)
    for _, why in report.skipped:
        print(f"skipped: {why}", file=sys.stderr)
    print(f"imported {len(report.imported)} mesh(es) into {args.out}; skipped {len(report.skipped)}; "
          f"warnings {len(report.warnings)}")
    return 0 if report.imported else 1


def _check(args) -> int:
    from cad3d.data.check import check_dataset, format_report

    report = check_dataset(args.data_dir)
    print(format_report(report))
    return 0 if report.ok else 1


def _preview(args) -> int:
    from pathlib import Path

    from cad3d.data.preview import contact_sheet

    out = args.output or str(Path("outputs") / f"preview_{Path(args.data_dir).resolve().name}.png")
    path = contact_sheet(args.data_dir, out, num_samples=args.num_samples, split=args.split)
    print(f"preview written to {path}")
    return 0
