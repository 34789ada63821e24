"""`cad3d demo`: the whole pipeline on a small default (what `make demo` runs)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a small default",
                       description="Run every built stage of cad3d on a small default dataset and say where "
                                   "the results are. Takes a few minutes on a laptop CPU.")
    p.add_argument("--out", default=".", help="root for training_data/ trained_models/ outputs/ (default: .)")
    p.add_argument("--num-samples", type=int, default=64, help="synthetic samples (default 64)")
    p.add_argument("--workers", type=int, default=None, help="data processes (default: CPU count, at most 8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from cad3d.pipeline import run_demo

    result = run_demo(args.out, num_samples=args.num_samples, workers=args.workers, seed=args.seed)
    print("demo finished:")
    for name, path in result.artefacts.items():
        print(f"  {name:<18} {path}")
    return 0
