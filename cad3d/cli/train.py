"""`cad3d train MODEL --data DIR ...`: train a registered task with the training engine.

MODEL is any task of the registry (`cad3d.training.tasks.base`): the built-in models, plus tasks of
modules named in ``CAD3D_TASK_MODULES``. The task reads its (train, val) datasets from ``--data``
(`TrainTask.build_datasets`); ``--preset`` picks its config (`TrainTask.presets`) and engine
defaults (`TrainTask.engine_presets`); flags given explicitly override both.

A fresh run (no ``--resume``) into a folder that already holds checkpoints of MODEL is an error
(exit 1) unless ``--overwrite`` deletes them first: two runs never mix in one folder. A folder
another process writes to (a training, ``cad3d ckpt prune``) is refused, naming it.
``depth`` exports its ONNX model under ``--out``; ``--publish-onnx`` also copies it to
``models/cad3d_depth_256.onnx`` (or the path given), where ``cad3d convert`` looks.

Exit codes: 0 done (also when ``--max-steps`` stopped early), 1 failure, 2 usage (unknown MODEL,
a bad flag value),
130 / 143 stopped by SIGINT / SIGTERM after saving ``*_last`` (128 + signal number, as shells
report it) — run again with ``--resume auto`` to continue.
Multi-GPU: ``torchrun --nproc-per-node G -m cad3d train ...`` (``--batch-size`` is per process).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cad3d.cli._args import non_negative_int, positive_float, positive_int
from cad3d.models.depth_contract import DEFAULT_ONNX_PATH


# CLI flag -> EngineConfig field, for flags that map one to one (None = not given).
_ENGINE_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "grad_clip": "grad_clip",
    "warmup_steps": "warmup_steps",
    "device": "device",
    "precision": "precision",
    "resume": "resume",
    "seed": "seed",
    "num_workers": "num_workers",
    "keep_last": "keep_last",
    "max_steps": "max_steps",
    "ema_decay": "ema_decay",
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (vae, diffusion, vit, depth, refine)",
        description="Train a model with the shared training engine. Checkpoints, the epoch log and "
        "the report go to --out (default trained_models/MODEL/). SIGTERM/SIGINT save *_last and exit "
        "with 143/130; --resume auto continues.",
    )
    p.add_argument("model", metavar="MODEL", help="model to train: a registered task (vae, diffusion, vit, depth, refine)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", help="output folder (default trained_models/MODEL/)")
    p.add_argument("--preset", choices=["tiny", "full"], default="full", help="model size and engine defaults (default full)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int, help="per process (global = this x number of processes)")
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float, help="max gradient norm (0 disables)")
    p.add_argument("--warmup-steps", type=non_negative_int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the modules")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue from the newest usable checkpoint in --out (auto: fresh when --out holds none; an "
                        "error listing why when none of them can be used) or from PATH")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the folder's existing checkpoints and logs of this model before training "
                        "(without it, a fresh run into a folder that has them is an error)")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=non_negative_int)
    p.add_argument("--keep-last", type=non_negative_int, metavar="K", help="keep only the K newest epoch files (best and last are kept)")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps (resumable)")
    p.add_argument("--ema-decay", type=float, metavar="D",
                   help="keep an EMA of the weights with decay D (0 = none; default: the preset's, 0.999 for diffusion full)")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard scalars to OUT/tensorboard")
    p.add_argument("--vit-encoder", metavar="VIT_CHECKPOINT",
                   help="diffusion only: the hybrid, the trained ViT of this checkpoint encodes the drawings (its patch "
                        "tokens are the features each point reads at its projection), fine-tuned with the model")
    p.add_argument("--publish-onnx", nargs="?", const=str(DEFAULT_ONNX_PATH), metavar="PATH",
                   help=f"depth only: also publish the ONNX export (made under --out) to PATH (default {DEFAULT_ONNX_PATH}), "
                        "where cad3d convert looks")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from cad3d.training.engine import TrainingInterrupted, train_model
    from cad3d.training.tasks.base import get_task_class, known_tasks

    try:
        get_task_class(args.model)
    except KeyError:
        args._parser.error(f"unknown model {args.model!r}; known: {', '.join(known_tasks()) or 'none registered'}")
    if args.overwrite and args.resume:
        args._parser.error("--overwrite starts fresh; it cannot be combined with --resume")
    task_overrides = None
    if args.publish_onnx is not None:
        if args.model != "depth":
            args._parser.error("--publish-onnx is for the depth model only")
        task_overrides = {"publish_onnx": args.publish_onnx}
        _check_writable(Path(args.publish_onnx).parent, "--publish-onnx")  # now, not after training
    overrides = {field: getattr(args, flag) for flag, field in _ENGINE_FLAGS.items()}
    if args.overwrite:
        overrides["overwrite"] = True
    if args.compile:
        overrides["compile"] = True
    if args.tensorboard:
        overrides["tensorboard"] = True
    if args.no_progress:
        overrides["progress"] = False
    out_dir = args.out or str(Path("trained_models") / args.model)
    if args.vit_encoder:
        if args.model != "diffusion":
            args._parser.error("--vit-encoder is an option of the diffusion model")
        from cad3d.training.loader import load_trained

        vit = load_trained(args.vit_encoder, kind="vit", weights="raw")
        task_overrides = {**(task_overrides or {}), "vit_encoder": vit.config.model.to_dict(),
                          "vit_checkpoint": str(args.vit_encoder)}
    try:
        report = train_model(args.model, args.data, preset=args.preset, out_dir=out_dir, task_overrides=task_overrides,
                             **overrides)
    except TrainingInterrupted as exc:
        print(f"cad3d: {exc}", file=sys.stderr)
        return 128 + exc.signal_number
    if os.environ.get("RANK", "0") != "0":
        return 0
    status = "done" if report["completed"] else "stopped at max_steps"
    best = report["best_loss"]
    print(
        f"{args.model}: {status} after {report['total_epochs']} epochs, {report['total_steps']} steps; "
        f"best {report['monitor']} {best if best is None else f'{best:.6g}'}; outputs in {out_dir}"
    )
    onnx = report.get("onnx")
    if isinstance(onnx, dict):
        where = onnx.get("path") if "skipped" not in onnx else None
        published = f"; published {onnx['published']}" if onnx.get("published") else ""
        print(f"ONNX: {onnx['skipped']}" if where is None else f"ONNX: {where}{published}")
    return 0


def _check_writable(folder: Path, flag: str) -> None:
    from cad3d.errors import Cad3dError
    from cad3d.io import temp_path

    try:
        folder.mkdir(parents=True, exist_ok=True)
        temp_path(folder / "probe").unlink()
    except OSError as exc:
        raise Cad3dError(f"{folder}: cannot write there ({exc.strerror or exc}); needed by {flag}") from None
