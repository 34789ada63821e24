"""`cad3d eval --data DIR --split test -o DIR`: every conversion path and the baselines, scored."""

from __future__ import annotations

import sys

from cad3d.cli._args import converter_options, make_converter, positive_int
from cad3d.cli._help import DESCRIPTIONS

# cad3d.evaluation.evaluate.ALL_METHODS, spelled out so `cad3d --help` does not import the evaluation
# (tests/test_cli_args.py checks that the two agree).
ALL_METHODS = ("diffusion", "vit", "refine", "depth", "geometric", "retrieval", "mean", "oracle")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score conversion paths and baselines on a dataset split", description=DESCRIPTIONS["eval"])
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
    p.add_argument("--examples", type=positive_int, default=4, help="samples shown in eval_examples.png (default 4)")
    converter_options(p)
    p.add_argument("--runs", default="trained_models", metavar="DIR",
                   help="plot the loss curves of every training run under DIR (default trained_models/)")
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    from cad3d.evaluation.evaluate import evaluate
    from cad3d.evaluation.report import render_markdown

    report = evaluate(
        args.data, args.split, args.methods, make_converter(args), args.output, train_data=args.train_data,
        families=args.families, num_points=args.num_points, steps=args.steps, guidance=args.guidance,
        batch_size=args.batch_size, seed=args.seed, max_samples=args.max_samples, num_examples=args.examples,
        runs_dir=args.runs, progress=not args.no_progress,
    )
    print(render_markdown(report), end="")
    print("wrote " + ", ".join(report["artefacts"].values()))
    for f in report["failures"]:
        print(f"cad3d: {f['method']} failed on {f['stem']}: {f['error']}", file=sys.stderr)
    return 0
