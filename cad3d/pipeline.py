"""The demo pipeline behind `make demo`: every stage, on a small default, in a few CPU minutes.

synthesize -> check -> preview -> train vae, vit, diffusion, depth, refine (tiny presets; depth is
exported to ONNX) -> convert a held-out drawing with the hybrid converter -> evaluate every
conversion path and the baselines on the test split.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    num_samples: int = 96
    seed: int = 0
    workers: int | None = None  # data processes; None = CPU count (at most 8)
    # Epochs per model with its `tiny` preset (enough for each to learn visibly on a CPU).
    epochs: dict = field(default_factory=lambda: {"vae": 8, "vit": 20, "diffusion": 40, "depth": 10,
                                                         "refine": 15})
    progress: bool = True


@dataclass
class DemoResult:
    artefacts: dict[str, Path] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)  # model -> training report
    conversion: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)  # the `cad3d.evaluation.evaluate` report
    evaluation_markdown: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds


def run_demo(out_dir: str | os.PathLike = ".", config: DemoConfig | None = None) -> DemoResult:
    """Run the pipeline with ``out_dir`` as the project root (training_data/, trained_models/,
    models/, outputs/ under it). Returns where everything went and what it measured."""
    from cad3d.data.check import check_dataset, format_report
    from cad3d.data.dataset import index_dataset
    from cad3d.data.preview import contact_sheet
    from cad3d.data.synth import create_synthetic_training_data
    from cad3d.errors import DatasetError

    cfg = config or DemoConfig()
    root = Path(out_dir)
    data_dir = root / "training_data" / "diffusion_synthetic"
    result = DemoResult()
    workers = cfg.workers or min(os.cpu_count() or 1, 8)
    stages = ["synthesize", "check", "preview", *(f"train {m}" for m in cfg.epochs), "convert", "evaluate"]

    def stage(name: str):
        log.info("%d/%d %s", stages.index(name) + 1, len(stages), name)
        return time.perf_counter()

    t = stage("synthesize")
    create_synthetic_training_data(data_dir, cfg.num_samples, seed=cfg.seed, workers=workers, progress=cfg.progress)
    result.artefacts["dataset"] = data_dir
    result.seconds["synthesize"] = time.perf_counter() - t

    t = stage("check")
    report = check_dataset(data_dir)
    if not report.ok:
        raise DatasetError(format_report(report))
    result.seconds["check"] = time.perf_counter() - t

    t = stage("preview")
    result.artefacts["dataset preview"] = contact_sheet(data_dir, root / "outputs" / "demo_dataset_preview.png")
    result.seconds["preview"] = time.perf_counter() - t

    from cad3d.training.engine import train_model

    for model, epochs in cfg.epochs.items():
        t = stage(f"train {model}")
        out = root / "trained_models" / model
        # The depth export goes under the run folder; publishing puts it where the converter looks.
        task_overrides = {"publish_onnx": str(root / "models" / "cad3d_depth_256.onnx")} if model == "depth" else None
        result.reports[model] = train_model(model, data_dir, preset="tiny", out_dir=out, task_overrides=task_overrides,
                                            epochs=epochs, seed=cfg.seed, progress=cfg.progress,
                                            overwrite=True)  # the demo remakes its runs from scratch
        result.artefacts[f"{model} checkpoints"] = out
        result.seconds[f"train {model}"] = time.perf_counter() - t
    onnx = root / "models" / "cad3d_depth_256.onnx"
    if onnx.is_file():
        result.artefacts["depth ONNX"] = onnx

    t = stage("convert")
    from cad3d.conversion.batch import convert_files
    from cad3d.conversion.converter import HybridCAD3DConverter

    held_out = next((r for r in index_dataset(data_dir) if r.split == "test"), None) or next(
        (r for r in index_dataset(data_dir) if r.split == "val"), None)
    if held_out is None:
        raise DatasetError(f"{data_dir}: no held-out (test or val) drawing to convert; use more samples")
    converter = HybridCAD3DConverter(
        device="cpu", vit_model_path=root / "trained_models" / "vit" / "final_model.pth",
        diffusion_model_path=root / "trained_models" / "diffusion" / "diffusion_best.pth",
        depth_model_path=onnx if onnx.is_file() else None, enable_learning=False,
        refine_model_path=root / "trained_models" / "refine" / "refine_best.pth",
    )
    conv = convert_files(converter, [held_out.image], root / "outputs" / "demo", progress=False)
    if conv.failed:
        raise DatasetError(f"converting {held_out.image} failed: {conv.failed[0][1]}")
    result.conversion = conv.results[0]
    result.artefacts["held-out drawing"] = held_out.image
    for kind, path in result.conversion["outputs"].items():
        result.artefacts[f"converted {kind}"] = path
    result.seconds["convert"] = time.perf_counter() - t

    t = stage("evaluate")
    from cad3d.evaluation.evaluate import evaluate
    from cad3d.evaluation.report import render_markdown

    eval_dir = root / "outputs" / "eval"
    result.evaluation = evaluate(data_dir, "test" if held_out.split == "test" else "val", converter=converter,
                                 out_dir=eval_dir, runs_dir=root / "trained_models", progress=cfg.progress)
    result.evaluation_markdown = render_markdown(result.evaluation)
    result.artefacts["evaluation"] = eval_dir
    result.seconds["evaluate"] = time.perf_counter() - t
    return result

