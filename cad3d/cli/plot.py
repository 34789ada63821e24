"""`cad3d plot DIR`: loss curves of training runs from their JSON logs, and the chart of an
evaluation from its eval.json, as PNG or SVG (matplotlib, `cad3d.evaluation.plots`)."""

from __future__ import annotations

from cad3d.cli._help import DESCRIPTIONS


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="plot training loss curves and evaluation charts", description=DESCRIPTIONS["plot"])
    p.add_argument("run_dir", metavar="DIR", help="a training run folder, a folder of run folders, or an eval folder")
    p.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="file for one figure, or a folder for several (default: loss_curves.<format> in each run "
                        "folder, eval_chart.<format> in an eval folder)")
    p.add_argument("--format", choices=["png", "svg"], default="png", help="image format (default png)")
    p.set_defaults(func=_plot)


def _plot(args) -> int:
    import json
    from pathlib import Path

    from cad3d.errors import EvaluationError
    from cad3d.evaluation.curves import find_runs
    from cad3d.evaluation.plots import plot_eval_chart, plot_loss_curves

    root = Path(args.run_dir)
    if not root.is_dir():
        raise EvaluationError(f"{root}: no such folder")
    runs = find_runs(root)
    evals = [root / "eval.json"] if (root / "eval.json").is_file() else []
    if not runs and not evals:
        raise EvaluationError(f"{root}: no training logs (training_history.json, *epoch_log.json, "
                              "*training_report.json) in it or below it, and no eval.json")
    single = len(runs) + len(evals) == 1 and args.output is not None and Path(args.output).suffix.lower() in (".png", ".svg")

    def target(name: str, default: Path) -> Path:
        if args.output is None:
            return default
        return Path(args.output) if single else Path(args.output) / f"{name}.{args.format}"

    for run in runs:
        name = "loss_" + ("_".join(run.relative_to(root).parts) or run.name)
        out = target(name, run / f"loss_curves.{args.format}")
        print(plot_loss_curves(run, out, fmt=out.suffix[1:].lower()))
    for path in evals:
        try:
            report = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"{path}: unreadable evaluation report ({exc})") from None
        print(plot_eval_chart(report, target("eval_chart", root / f"eval_chart.{args.format}")))
    return 0
