"""Figures with matplotlib: `cad3d plot` on the logs of every model's tiny training run (VAE,
ViT, diffusion, depth) and on an evaluation, PNG and SVG; the eval chart next to eval.md."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from cad3d.cli import main
from cad3d.errors import EvaluationError
from cad3d.evaluation.curves import find_runs, read_loss_curves
from cad3d.evaluation.evaluate import evaluate
from cad3d.conversion.converter import HybridCAD3DConverter
from cad3d.evaluation.plots import plot_loss_curves, read_training_series

MODELS = ("depth", "diffusion", "vae", "vit")


def assert_drawn(png, min_size=(400, 300)) -> np.ndarray:
    """Opens as a PNG of at least ``min_size`` with real content: many non-white pixels, of
    several colours (curves, not just axes)."""
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
        rgb = np.asarray(im.convert("RGB"))
    ink = (rgb < 240).any(axis=2)
    assert ink.mean() > 0.02, ink.mean()
    colours = {tuple(c) for c in rgb[ink][::7]}
    assert len(colours) > 20
    return rgb


def test_cad3d_plot_draws_every_models_training_log(trained_runs, tmp_path, capsys):
    runs = trained_runs / "trained_models"
    assert [p.name for p in find_runs(runs)] == list(MODELS)
    out = tmp_path / "plots"
    assert main(["plot", str(runs), "-o", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / f"loss_{m}.png") for m in MODELS]
    widths = {}
    for m in MODELS:
        widths[m] = assert_drawn(out / f"loss_{m}.png").shape[1]
    # The engine's logs have a learning rate and the loss parts (VAE: chamfer, kl, voxel,
    # smooth): three panels; a diffusion run keeps only the train loss in its report: one.
    vae = read_training_series(runs / "vae")
    assert set(vae["parts"]) == {"chamfer", "kl", "voxel", "smooth"} and [e for e, _ in vae["lr"]["lr"]] == [1, 2]
    assert set(vae["loss"]) == {"train_loss", "val_loss"}
    diffusion = read_training_series(runs / "diffusion")
    assert diffusion["lr"] == {} and diffusion["parts"] == {} and len(diffusion["loss"]["train_loss"]) == 2
    assert widths["vae"] > 2.5 * widths["diffusion"]

    # One run to one file, SVG on request; default file name in the run folder.
    svg = tmp_path / "vit.svg"
    assert main(["plot", str(runs / "vit"), "-o", str(svg)]) == 0
    assert ET.parse(svg).getroot().tag.endswith("svg") and svg.stat().st_size > 5000
    assert main(["plot", str(runs / "vae"), "--format", "svg"]) == 0
    assert (runs / "vae" / "loss_curves.svg").is_file()
    assert plot_loss_curves(runs / "depth", tmp_path / "d.png") == tmp_path / "d.png"
    assert_drawn(tmp_path / "d.png")


def test_logs_without_values_and_broken_logs_are_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 1
    assert "no training logs" in capsys.readouterr().err
    diff = tmp_path / "runs" / "diffusion"
    diff.mkdir(parents=True)
    (diff / "training_report.json").write_text(json.dumps({"loss_history": [1.0, 0.5, 0.05, float("nan"), 0.01]}))
    assert read_loss_curves(diff) == {"train_loss": [(1, 1.0), (2, 0.5), (3, 0.05), (5, 0.01)]}
    assert_drawn(plot_loss_curves(diff))  # log scale: spans two decades
    (diff / "training_report.json").write_text("{not json")
    with pytest.raises(EvaluationError, match="training_report.json"):
        plot_loss_curves(diff)
    assert main(["plot", str(tmp_path / "runs")]) == 1
    assert "training_report.json" in capsys.readouterr().err


def test_evaluation_writes_its_chart_next_to_eval_md_and_cad3d_plot_redraws_it(tiny_dataset, trained_runs, tmp_path):
    converter = HybridCAD3DConverter(device="cpu", enable_learning=False, models_dir=tmp_path / "no_models",
                                     vit_model_path=trained_runs / "trained_models" / "vit" / "final_model.pth")
    out = tmp_path / "eval"
    report = evaluate(tiny_dataset, "test", ["vit", "geometric", "mean"], converter, out,
                      runs_dir=trained_runs / "trained_models", num_examples=1)
    assert report["artefacts"]["chart"] == str(out / "eval_chart.png") and (out / "eval.md").is_file()
    rgb = assert_drawn(out / "eval_chart.png", min_size=(900, 300))
    # One bar colour per method (matplotlib's C0, C1, C2) in the per-method panels.
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
        assert (np.abs(rgb.astype(int) - colour).sum(axis=2) < 10).sum() > 200, colour
    assert {f"loss:{m}" for m in MODELS} <= set(report["artefacts"])
    for m in MODELS:
        assert_drawn(out / f"loss_{m}.png")
    assert main(["plot", str(out), "--format", "svg", "-o", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "eval_chart.svg").stat().st_size > 5000
