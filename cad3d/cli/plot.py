"""`cad3d plot RUN_DIR`: loss curves of training runs from their JSON logs, as PNG."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot", help="plot training loss curves",
        description="Draw the train and validation loss per epoch of a training run folder (its epoch log: "
                    "training_history.json, vae_epoch_log.json, depth_epoch_log.json, else the loss_history of "
                    "training_report.json) as a PNG. A folder holding several runs (e.g. trained_models/) gets one "
                    "PNG per run.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder, or a folder of run folders")
    p.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="PNG file for one run, or a folder for several (default: loss_curves.png in each run folder)")
    p.set_defaults(func=_plot)


def _plot(args) -> int:
    from pathlib import Path

    from cad3d.errors import EvaluationError
    from cad3d.evaluation.curves import find_runs, plot_loss_curves

    root = Path(args.run_dir)
    if not root.is_dir():
        raise EvaluationError(f"{root}: no such folder")
    runs = find_runs(root)
    if not runs:
        raise EvaluationError(f"{root}: no training logs (training_history.json, *epoch_log.json, "
                              "*training_report.json) in it or below it")
    for run in runs:
        if args.output is None:
            out = None
        elif len(runs) == 1 and Path(args.output).suffix.lower() == ".png":
            out = Path(args.output)
        else:
            out = Path(args.output) / f"loss_{'_'.join(run.relative_to(root).parts) or run.name}.png"
        print(plot_loss_curves(run, out))
    return 0
