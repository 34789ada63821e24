"""`cad3d eval --data DIR --split test -o DIR`: every conversion path and the baselines, scored."""

from __future__ import annotations

import sys

from cad3d.cli._args import MAX_SAMPLING_STEPS, model_weight_options, positive_int, sampling_steps

# cad3d.evaluation.ALL_METHODS, spelled out so `cad3d --help` does not import the evaluation
# (tests/test_cli_args.py checks that the two agree).
ALL_METHODS = ("diffusion", "vit", "depth", "geometric", "retrieval", "mean")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="score conversion paths and baselines on a dataset split",
        description="Convert the drawings of one split with every conversion path that has weights (diffusion, "
                    "vit, depth lifting with an ONNX model, geometric) and the baselines (retrieval: the training "
                    "cloud whose drawing looks most alike; mean: the medoid training cloud), and score each against "
                    "the ground truth: Chamfer-L2, F-score at 1% and 2% of the bounding diagonal, overall and per "
                    "part family, and seconds per drawing. Writes DIR/eval.json, DIR/eval.md, DIR/eval_examples.png "
                    "and DIR/loss_<run>.png for each training run under --runs, and prints the table. "
                    "Unseen part types: make the training set without some families (cad3d data synth --families "
                    "<the others>), train on it, then evaluate a dataset of the held-out families with "
                    "--split all --train-data TRAIN_SET --families a,b.")
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder to evaluate")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test",
                   help="split to evaluate (default test; all: every sample, e.g. of a held-out-families dataset)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD", choices=ALL_METHODS,
                   help=f"methods to score (default all: {', '.join(ALL_METHODS)}; unavailable ones are reported "
                        "as skipped)")
    p.add_argument("--families", nargs="+", default=None, metavar="FAMILY",
                   help="held-out part families (a,b or a b): evaluate only these, leave them out of the "
                        "baselines' training index and label the report 'unseen families'")
    p.add_argument("--train-data", default=None, metavar="DIR",
                   help="dataset whose train split the baselines index (default: --data)")
    p.add_argument("--max-samples", type=positive_int, default=None, help="evaluate at most this many drawings")
    p.add_argument("--num-points", type=positive_int, default=None, help="points per predicted cloud (default: as the ground truth)")
    p.add_argument("--steps", type=sampling_steps, default=50,
                   help=f"diffusion sampling steps, 1 to {MAX_SAMPLING_STEPS} (default 50)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: model's)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="drawings per model call (default 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--examples", type=positive_int, default=4, help="samples shown in eval_examples.png (default 4)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    model_weight_options(p)
    p.add_argument("--depth-model", default=None, help="ONNX depth model (default: the first known file in --models-dir)")
    p.add_argument("--models-dir", default="models", help="folder searched for ONNX depth models (default models/)")
    p.add_argument("--runs", default="trained_models", metavar="DIR",
                   help="plot the loss curves of every training run under DIR (default trained_models/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from cad3d.cli._args import weights_path
    from cad3d.evaluation import evaluate, render_markdown
    from cad3d.hybrid_vit_diffusion import DEFAULT_DIFFUSION_PATH, DEFAULT_VIT_PATH, HybridCAD3DConverter

    converter = HybridCAD3DConverter(
        device=args.device, vit_model_path=weights_path(args.vit, DEFAULT_VIT_PATH),
        diffusion_model_path=weights_path(args.diffusion, DEFAULT_DIFFUSION_PATH),
        depth_model_path=args.depth_model, models_dir=args.models_dir, enable_learning=False,
    )
    report = evaluate(
        args.data, args.split, args.methods, converter, args.output, train_data=args.train_data,
        families=args.families, num_points=args.num_points, steps=args.steps, guidance=args.guidance,
        batch_size=args.batch_size, seed=args.seed, max_samples=args.max_samples, num_examples=args.examples,
        runs_dir=args.runs, progress=not args.no_progress,
    )
    print(render_markdown(report), end="")
    print("wrote " + ", ".join(report["artefacts"].values()))
    for f in report["failures"]:
        print(f"cad3d: {f['method']} failed on {f['stem']}: {f['error']}", file=sys.stderr)
    return 0
