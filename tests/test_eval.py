"""`cad3d eval` and `cad3d plot` as a user runs them: metrics checked by hand, the baselines, an
end-to-end evaluation of a tiny synthetic set (no weights, then a tiny trained ViT) writing every
artefact, held-out families, failures that are counted and not fatal, and loss-curve plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cad3d.cli import main
from cad3d.data.dataset import index_dataset, load_drawing
from cad3d.conversion.converter import HybridCAD3DConverter
from cad3d.errors import ConversionError, DatasetError, EvaluationError
from cad3d.evaluation.baselines import RetrievalBaseline, medoid_index
from cad3d.evaluation.evaluate import ALL_METHODS, evaluate
from cad3d.evaluation.metrics import SampleScore, aggregate, aggregate_by_family, score_cloud

ARTEFACTS = ("eval.json", "eval.md", "eval_examples.png")


def bare_converter(tmp_path, **kw) -> HybridCAD3DConverter:
    """No weights at all (and no ONNX depth model): only the geometric path."""
    return HybridCAD3DConverter(device="cpu", enable_learning=False, models_dir=tmp_path / "no_models", **kw)


def families_of(data_dir, split):
    return sorted({r.family for r in index_dataset(data_dir, split)})


# -- metrics by hand ---------------------------------------------------------------------------
def test_score_cloud_matches_hand_computed_values():
    gt = np.array([[0, 0, 0], [10, 0, 0]], dtype=np.float32)  # bbox diagonal 10: tau 0.1 (1%), 0.2 (2%)
    pred = np.array([[0, 0, 0], [10, 0, 0.15], [5, 0, 0]], dtype=np.float32)
    s = score_cloud(pred, gt)
    # pred->gt squared distances 0, 0.0225, 25; gt->pred 0, 0.0225.
    assert s["chamfer_l2"] == pytest.approx((0 + 0.0225 + 25) / 3 + (0 + 0.0225) / 2, rel=1e-5)
    # 1%: precision 1/3 (0.15 > 0.1), recall 1/2 -> F = 2PR/(P+R) = 0.4.
    assert s["fscore_1pct"] == pytest.approx(0.4, rel=1e-5)
    # 2%: precision 2/3, recall 1 -> F = 0.8.
    assert s["fscore_2pct"] == pytest.approx(0.8, rel=1e-5)
    same = score_cloud(gt, gt)
    assert same == {"chamfer_l2": 0.0, "chamfer_l1": 0.0, "fscore_1pct": 1.0, "fscore_2pct": 1.0}
    # Chamfer-L1: mean nearest-neighbour distance both ways.
    assert s["chamfer_l1"] == pytest.approx((0 + 0.15 + 5) / 3 + (0 + 0.15) / 2, rel=1e-5)


def test_aggregation_means_counts_failures_and_families():
    scores = [
        SampleScore("a", "gear", "vit", 0.1, 0.2, 0.4, seconds=1.0),
        SampleScore("b", "gear", "vit", 0.3, 0.4, 0.8, seconds=3.0),
        SampleScore("c", "tube", "vit", error="boom"),
        SampleScore("a", "gear", "mean", 1.0, 0.0, 0.5, seconds=0.5),
        SampleScore("c", "tube", "mean", 2.0, 1.0, 1.0, seconds=0.5),
    ]
    overall = aggregate(scores)
    assert list(overall) == ["vit", "mean"]
    vit = overall["vit"]
    assert (vit["n"], vit["failed"]) == (2, 1)
    assert vit["chamfer_l2"] == pytest.approx(0.2) and vit["fscore_1pct"] == pytest.approx(0.3)
    assert vit["fscore_2pct"] == pytest.approx(0.6) and vit["seconds_per_drawing"] == pytest.approx(2.0)
    assert overall["mean"]["chamfer_l2"] == pytest.approx(1.5) and overall["mean"]["failed"] == 0
    fam = aggregate_by_family(scores)
    assert list(fam) == ["gear", "tube"]
    assert fam["gear"]["vit"]["chamfer_l2"] == pytest.approx(0.2) and fam["gear"]["mean"]["n"] == 1
    assert fam["tube"]["vit"] == {"n": 0, "failed": 1, "chamfer_l2": None, "chamfer_l1": None, "fscore_1pct": None,
                                  "fscore_2pct": None, "repeated": None, "seconds_per_drawing": None}


# -- baselines ---------------------------------------------------------------------------------
def test_retrieval_is_exact_on_training_drawings(tiny_dataset, tmp_path):
    train = index_dataset(tiny_dataset, "train")
    baseline = RetrievalBaseline.from_records(train)
    assert np.array_equal(baseline.nearest([load_drawing(r.image) for r in train]), np.arange(len(train)))
    # The same through the evaluation: querying with the training drawings gives their clouds back.
    # Each drawing retrieves its own stored cloud: exactly what the oracle row answers.
    report = evaluate(tiny_dataset, "train", ["retrieval", "oracle"], bare_converter(tmp_path))
    row, oracle = report["overall"]["retrieval"], report["overall"]["oracle"]
    assert row["n"] == len(train) and row["failed"] == 0
    for metric in ("chamfer_l2", "chamfer_l1", "fscore_1pct", "fscore_2pct"):
        assert row[metric] == pytest.approx(oracle[metric]), metric


def test_medoid_is_the_cloud_closest_to_the_others():
    # Tight clusters on the x axis: Chamfer-L2 between clusters at x=a and x=b is about 2 (a - b)^2, so
    # the summed squared gaps to the others are 0: 114, 1: 87, 2: 70, 3: 63, 10: 359 -> x=3 is the medoid.
    rng = np.random.default_rng(0)
    blob = (rng.normal(size=(64, 3)) * 1e-3).astype(np.float32)
    clouds = [blob + np.float32([x, 0, 0]) for x in (10, 0, 3, 1, 2)]
    assert medoid_index(clouds, max_points=64) == 2


# -- end to end ------------------------------------------------------------------------------
def test_cli_eval_without_weights_writes_every_artefact(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--data", str(tiny_dataset), "--split", "test", "-o", str(out), "--no-progress",
                 "--device", "cpu", "--models-dir", str(tmp_path / "no_models"), "--vit", str(tmp_path / "none.pth"),
                 "--diffusion", str(tmp_path / "none.pth"), "--refine", str(tmp_path / "none.pth"),
                 "--runs", str(tmp_path / "no_runs")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| geometric (no weights) |" in printed and "| retrieval (baseline) |" in printed
    assert all((out / name).is_file() for name in ARTEFACTS)

    report = json.loads((out / "eval.json").read_text())
    test_families = families_of(tiny_dataset, "test")
    n_test = len(index_dataset(tiny_dataset, "test"))
    ran = [m for m, info in report["methods"].items() if info["status"] == "ok"]
    assert ran == ["geometric", "retrieval", "mean", "oracle"]
    assert {m for m, info in report["methods"].items() if info["status"] == "skipped"} == {"diffusion", "vit", "refine", "depth"}
    assert report["methods"]["retrieval"]["train_samples"] == len(index_dataset(tiny_dataset, "train"))
    assert report["num_samples"] == n_test and report["families"] == test_families
    assert sorted(report["per_family"]) == test_families
    for m in ran:
        row = report["overall"][m]
        assert row["n"] == n_test and row["failed"] == 0 and row["chamfer_l2"] > 0
        assert 0 <= row["fscore_1pct"] <= row["fscore_2pct"] <= 1 and row["seconds_per_drawing"] >= 0
    md = (out / "eval.md").read_text()
    assert "Chamfer-L2" in md and "per family" in md and all(f"| {f} |" in md for f in test_families)
    assert "depth skipped" in md

    with Image.open(out / "eval_examples.png") as im:
        rows = min(4, n_test)
        assert im.size == (160 * (2 + len(ran)), 24 + 160 * rows)
        pixels = np.asarray(im.convert("L"))
    assert (pixels < 128).mean() > 0.005  # drawings and clouds were drawn, not a blank sheet


@pytest.fixture(scope="module")
def vit_run(tiny_dataset, tmp_path_factory):
    """A micro ViT trained for 2 epochs through the engine: trained_models/vit in a temp folder."""
    import torch

    from cad3d.vision_transformer_cad import VisionTransformerConfig
    from cad3d.vit_trainer import TrainingConfig, VisionTransformerTrainer

    torch.manual_seed(0)
    runs = tmp_path_factory.mktemp("trained_models")
    config = VisionTransformerConfig(image_size=32, patch_size=8, width=32, depth=1, num_heads=2, num_points=128,
                                     head_hidden=64)
    train = TrainingConfig(batch_size=8, learning_rate=1e-3, weight_decay=0.0, num_epochs=2,
                           checkpoint_dir=str(runs / "vit"), device="cpu", progress=False, augment=False)
    VisionTransformerTrainer(config, train).fit(str(tiny_dataset))
    assert (runs / "vit" / "final_model.pth").is_file()
    return runs


def test_eval_with_a_tiny_trained_vit_and_its_loss_curves(tiny_dataset, vit_run, tmp_path):
    converter = bare_converter(tmp_path, vit_model_path=vit_run / "vit" / "final_model.pth")
    report = evaluate(tiny_dataset, "test", None, converter, tmp_path / "out", runs_dir=vit_run, num_examples=2)
    info = report["methods"]["vit"]
    assert info["status"] == "ok" and info["trained"] is True and info["weights"].endswith("final_model.pth")
    assert list(report["methods"]) == list(ALL_METHODS)
    n_test = report["num_samples"]
    assert report["overall"]["vit"]["n"] == n_test and report["overall"]["vit"]["failed"] == 0
    assert all("vit" in per for per in report["per_family"].values())
    assert "| vit (trained) |" in (tmp_path / "out" / "eval.md").read_text()
    assert all((tmp_path / "out" / name).is_file() for name in ARTEFACTS)
    loss_png = tmp_path / "out" / "loss_vit.png"
    assert report["artefacts"]["loss:vit"] == str(loss_png) and loss_png.is_file()
    with Image.open(tmp_path / "out" / "eval_examples.png") as im:
        # geometric, vit, retrieval, mean, oracle; one row per example
        assert im.size == (160 * (2 + 5), 24 + 160 * min(2, n_test))


def test_held_out_families_are_evaluated_alone_and_left_out_of_the_baselines(tiny_dataset, tmp_path):
    test_families = families_of(tiny_dataset, "test")
    held = test_families[:2]
    report = evaluate(tiny_dataset, "test", ["retrieval", "mean"], bare_converter(tmp_path), tmp_path / "out",
                      families=",".join(held))
    assert report["held_out_families"] == held and sorted(report["per_family"]) == held
    expected = [r for r in index_dataset(tiny_dataset, "test") if r.family in held]
    assert report["num_samples"] == len(expected)
    unseen_train = [r for r in index_dataset(tiny_dataset, "train") if r.family not in held]
    assert report["methods"]["retrieval"]["train_samples"] == len(unseen_train)
    assert "Unseen families" in (tmp_path / "out" / "eval.md").read_text()
    # A dataset made of held-out families only is evaluated whole: --split all.
    every = evaluate(tiny_dataset, "all", ["mean"], bare_converter(tmp_path), families=held)
    assert every["num_samples"] == len([r for r in index_dataset(tiny_dataset) if r.family in held])
    with pytest.raises(EvaluationError, match="unknown part families"):
        evaluate(tiny_dataset, "test", ["mean"], bare_converter(tmp_path), families="teapot")


def test_a_failing_method_counts_failures_and_goes_on(tiny_dataset, tmp_path):
    converter = bare_converter(tmp_path)
    bad = load_drawing(index_dataset(tiny_dataset, "test")[0].image)
    real = converter.convert_batch

    def flaky(drawings, method, **kw):
        if any(np.array_equal(d, bad) for d in drawings):
            raise ConversionError("synthetic failure")
        return real(drawings, method, **kw)

    converter.convert_batch = flaky
    report = evaluate(tiny_dataset, "test", ["geometric", "mean"], converter, tmp_path / "out")
    n = report["num_samples"]
    assert report["overall"]["geometric"]["failed"] == 1 and report["overall"]["geometric"]["n"] == n - 1
    assert report["overall"]["mean"]["failed"] == 0
    assert report["failures"] == [{"method": "geometric", "stem": index_dataset(tiny_dataset, "test")[0].stem,
                                   "error": "synthetic failure"}]
    assert "synthetic failure" in (tmp_path / "out" / "eval.md").read_text()


def test_missing_data_split_and_methods_are_one_line_errors(tiny_dataset, tmp_path, capsys):
    from cad3d.data.synth import create_synthetic_training_data, split_for

    two = tmp_path / "two"
    # A seed whose first two parts are one train and one val sample: no test split.
    seed = next(s for s in range(100) if sorted(split_for(s, i) for i in range(2)) == ["train", "val"])
    create_synthetic_training_data(two, 2, num_points=64, image_size=64, seed=seed, progress=False)
    with pytest.raises(DatasetError, match="split 'test'"):
        evaluate(two, "test", ["geometric"], bare_converter(tmp_path))
    with pytest.raises(DatasetError, match="does not exist"):
        evaluate(tmp_path / "nowhere", "test", ["geometric"], bare_converter(tmp_path))
    with pytest.raises(EvaluationError, match="unknown method"):
        evaluate(tiny_dataset, "test", ["magic"], bare_converter(tmp_path))
    assert main(["eval", "--data", str(two), "-o", str(tmp_path / "o"), "--no-progress", "--device", "cpu"]) == 1
    assert "split 'test'" in capsys.readouterr().err
    # Baselines without a train split to index are skipped with the reason, not a crash.
    report = evaluate(two, "train", ["retrieval", "geometric"], bare_converter(tmp_path), train_data=tmp_path / "nowhere")
    assert report["methods"]["retrieval"]["status"] == "skipped" and "no training split" in report["methods"]["retrieval"]["note"]


def test_cli_help():
    for group in ("eval", "plot"):
        with pytest.raises(SystemExit) as exc:
            main([group, "--help"])
        assert exc.value.code == 0


def test_depth_lifting_is_scored_when_an_onnx_depth_model_exists(tiny_dataset, tmp_path):
    import torch

    from cad3d.models.depth_contract import OUR_MODEL_NAME
    from cad3d.training.depth_export import export_depth_onnx
    from cad3d.models.depth_net import DepthNet, DepthNetConfig

    torch.manual_seed(0)
    net = DepthNet(DepthNetConfig(base_channels=4, max_channels=16, levels=2, image_size=64)).eval()
    export_depth_onnx(net, tmp_path / "models" / OUR_MODEL_NAME)  # untrained weights: only the path is under test
    converter = HybridCAD3DConverter(device="cpu", enable_learning=False, models_dir=tmp_path / "models")
    report = evaluate(tiny_dataset, "test", ["depth", "geometric"], converter)
    assert report["methods"]["depth"]["status"] == "ok" and report["methods"]["depth"]["weights"].endswith(".onnx")
    row = report["overall"]["depth"]
    assert row["n"] == report["num_samples"] and row["failed"] == 0 and row["chamfer_l2"] > 0


# -- the honest scoreboard ------------------------------------------------------------------
@pytest.fixture(scope="module")
def dense_dataset(tmp_path_factory):
    """Six parts with 8192-point clouds and the dense ground truth: what `cad3d eval` scores."""
    from cad3d.data.synth import create_synthetic_training_data

    out = tmp_path_factory.mktemp("dense")
    create_synthetic_training_data(out, 6, workers=1, progress=False, num_points=8192, image_size=64, seed=3, layers=0)
    return out


def test_oracle_is_near_the_ceiling_and_every_method_answers_with_the_same_count(dense_dataset, tmp_path):
    report = evaluate(dense_dataset, "all", ["geometric", "oracle"], bare_converter(tmp_path))
    oracle, geometric = report["overall"]["oracle"], report["overall"]["geometric"]
    assert report["num_points"] == 8192  # the stored samples' count
    assert oracle["fscore_1pct"] >= 0.85, oracle  # a perfect 8192-point answer scores near 1
    assert oracle["of_oracle"]["fscore_1pct"] == pytest.approx(1.0)
    assert geometric["fscore_1pct"] < oracle["fscore_1pct"] and geometric["of_oracle"]["chamfer_l2"] > 1
    assert geometric["repeated"] == 0 and oracle["repeated"] == 0  # no point counted twice
    assert all(s["chamfer_l1"] is not None for s in report["samples"])


def test_eval_refuses_scoring_training_parts(dense_dataset, tmp_path):
    with pytest.raises(EvaluationError, match="training parts"):
        evaluate(dense_dataset, "all", ["geometric"], bare_converter(tmp_path), train_data=dense_dataset)
