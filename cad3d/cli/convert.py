"""`cad3d convert INPUT... -o DIR`: drawings in, point clouds (and previews) out."""

from __future__ import annotations

import sys

from cad3d.cli._args import converter_options, make_converter, positive_int
from cad3d.cli._help import DESCRIPTIONS


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert drawings to point clouds", description=DESCRIPTIONS["convert"])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="drawing files or folders of drawings")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", choices=["auto", "diffusion", "vit", "refine", "depth", "geometric"], default="auto",
                   help="conversion path (default auto: the best one with trained weights)")
    p.add_argument("--format", choices=["ply", "npy", "obj", "glb"], default="ply",
                   help="ply/npy point cloud, obj mesh reconstructed from the cloud, or glb of both (points and "
                        "mesh; opens in browsers and Blender) (default ply)")
    p.add_argument("--num-points", type=positive_int, default=None, help="points per cloud (default: the model's)")
    converter_options(p)
    p.add_argument("--no-preview", action="store_true", help="no PNG previews")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from cad3d.conversion.batch import convert_files

    report = convert_files(
        make_converter(args), args.inputs, args.output, method=args.method, fmt=args.format, num_points=args.num_points,
        steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, seed=args.seed,
        preview=not args.no_preview, progress=not args.no_progress,
    )
    for path, why in report.failed:
        print(f"cad3d: error: {why}", file=sys.stderr)
    for res in report.results:
        outputs = ", ".join(str(p) for p in res["outputs"].values())
        weights = "no weights" if res["method"] == "geometric" else f"{'trained' if res['trained'] else 'untrained'} weights"
        renamed = " (renamed: another input has the same name)" if res.get("renamed") else ""
        print(f"{res['input']} -> {outputs} [{res['method']}, {weights}, {res['seconds']:.2f} s]{renamed}")
    print(f"converted {len(report.results)}, failed {len(report.failed)}")
    return 1 if report.failed or not report.results else 0
