"""`cad3d demo`: the whole pipeline on a small default (what `make demo` runs)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a small default",
                       description="Synthesize a small dataset, check and preview it, train every model briefly "
                                   "(tiny presets, CPU), export the depth network to ONNX and convert a held-out "
                                   "drawing and evaluate every path against baselines. A few minutes on a laptop CPU.")
    p.add_argument("--out", default=".", help="root for training_data/ trained_models/ models/ outputs/ (default: .)")
    p.add_argument("--num-samples", type=int, default=96, help="synthetic samples (default 96)")
    p.add_argument("--workers", type=int, default=None, help="data processes (default: CPU count, at most 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from cad3d.pipeline import DemoConfig, run_demo

    result = run_demo(args.out, DemoConfig(num_samples=args.num_samples, seed=args.seed, workers=args.workers,
                                           progress=not args.no_progress))
    overall = result.evaluation_markdown.split("\n## ")[0]  # per-family tables are in the eval folder
    print("\n" + overall.strip())
    print("\ndemo finished in {:.0f} s:".format(sum(result.seconds.values())))
    for name, path in result.artefacts.items():
        print(f"  {name:<24} {path}")
    for model, report in result.reports.items():
        best = report.get("best_loss")
        print(f"  {model:<10} {report['total_epochs']} epochs, best {report['monitor']} "
              f"{'n/a' if best is None else f'{best:.4g}'}")
    conv = result.conversion
    print(f"converted the held-out drawing with the {conv['method']} path "
          f"({'trained' if conv['trained'] else 'untrained'} weights) in {conv['seconds']:.2f} s")
    return 0
