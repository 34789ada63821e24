"""`cad3d convert INPUT... -o DIR`: drawings in, point clouds (and previews) out."""

from __future__ import annotations

import sys

from cad3d.cli._args import MAX_SAMPLING_STEPS, model_weight_options, positive_int, sampling_steps


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert drawings to point clouds",
        description="Convert drawings (files or folders of images) to point clouds with whatever trained "
                    "weights exist: diffusion, else ViT, else depth lifting (an ONNX depth model in --models-dir), "
                    "else a geometric fallback. Writes DIR/<name>.<format> and DIR/<name>_preview.png. Each bad "
                    "input is reported and skipped; the exit code is 1 if any input failed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="drawing files or folders of drawings")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", choices=["auto", "diffusion", "vit", "depth", "geometric"], default="auto",
                   help="conversion path (default auto: the best one with trained weights)")
    p.add_argument("--format", choices=["ply", "npy", "obj", "glb"], default="ply",
                   help="ply/npy point cloud, obj mesh reconstructed from the cloud, or glb of both (points and "
                        "mesh; opens in browsers and Blender) (default ply)")
    p.add_argument("--num-points", type=positive_int, default=None, help="points per cloud (default: the model's)")
    p.add_argument("--steps", type=sampling_steps, default=50,
                   help=f"diffusion sampling steps of the fast sampler, 1 to {MAX_SAMPLING_STEPS} (default 50)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: model's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=positive_int, default=16, help="drawings per model call (default 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same clouds)")
    model_weight_options(p)
    p.add_argument("--depth-model", default=None, help="ONNX depth model (default: the first known file in --models-dir)")
    p.add_argument("--models-dir", default="models", help="folder searched for ONNX depth models (default models/)")
    p.add_argument("--no-preview", action="store_true", help="no PNG previews")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from cad3d.cli._args import weights_path
    from cad3d.hybrid_vit_diffusion import DEFAULT_DIFFUSION_PATH, DEFAULT_VIT_PATH, HybridCAD3DConverter, convert_files

    converter = HybridCAD3DConverter(
        device=args.device, vit_model_path=weights_path(args.vit, DEFAULT_VIT_PATH),
        diffusion_model_path=weights_path(args.diffusion, DEFAULT_DIFFUSION_PATH),
        depth_model_path=args.depth_model, models_dir=args.models_dir, enable_learning=False,
    )
    report = convert_files(
        converter, args.inputs, args.output, method=args.method, fmt=args.format, num_points=args.num_points,
        steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, seed=args.seed,
        preview=not args.no_preview, progress=not args.no_progress,
    )
    for path, why in report.failed:
        print(f"cad3d: error: {why}", file=sys.stderr)
    for res in report.results:
        outputs = ", ".join(str(p) for p in res["outputs"].values())
        weights = "no weights" if res["method"] == "geometric" else f"{'trained' if res['trained'] else 'untrained'} weights"
        print(f"{res['input']} -> {outputs} [{res['method']}, {weights}, {res['seconds']:.2f} s]")
    print(f"converted {len(report.results)}, failed {len(report.failed)}")
    return 1 if report.failed or not report.results else 0
