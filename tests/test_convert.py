"""Conversion as a user runs it: every degradation level of the hybrid converter, `cad3d convert`
with good and bad inputs, and continuous learning (learn -> save -> reload)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cad3d.cli import main
from cad3d.errors import CheckpointError, ConversionError
from cad3d.conversion.converter import HybridCAD3DConverter


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """Tiny ViT, diffusion and depth models trained for one or two epochs (seconds on a CPU)."""
    from cad3d.training.engine import train_model

    root = tmp_path_factory.mktemp("runs")
    common = dict(preset="tiny", progress=False, seed=0, device="cpu")
    train_model("vit", tiny_dataset, out_dir=root / "vit", epochs=2, **common)
    train_model("diffusion", tiny_dataset, out_dir=root / "diffusion", epochs=2, **common)
    onnx = root / "models" / "cad3d_depth_256.onnx"
    train_model("depth", tiny_dataset, out_dir=root / "depth", epochs=1, task_overrides={"publish_onnx": str(onnx)}, **common)
    assert onnx.is_file()
    return {
        "vit": root / "vit" / "final_model.pth",
        "diffusion": root / "diffusion" / "diffusion_best.pth",
        "depth": onnx,
        "empty_models": tmp_path_factory.mktemp("no_models"),
    }


def drawing(tiny_dataset, k=0) -> Path:
    return sorted((tiny_dataset / "images").glob("*.png"))[k]


def check_cloud(points, n):
    assert points.shape == (n, 3) and points.dtype == np.float32
    assert np.isfinite(points).all()


def test_no_weights_falls_back_to_geometry(tiny_dataset, runs):
    conv = HybridCAD3DConverter("cpu", enable_learning=False, models_dir=runs["empty_models"], num_points=1024)
    assert conv.available_methods() == ["geometric"]
    res = conv.convert(drawing(tiny_dataset))
    assert res.method == "geometric" and res.trained is False
    check_cloud(res.points, 1024)
    assert np.linalg.norm(res.points, axis=1).max() <= 1.0 + 1e-5
    with pytest.raises(ConversionError, match="not available"):
        conv.convert(drawing(tiny_dataset), method="vit")


def test_depth_only(tiny_dataset, runs):
    conv = HybridCAD3DConverter("cpu", enable_learning=False, depth_model_path=runs["depth"], num_points=800)
    assert conv.available_methods() == ["depth", "geometric"]
    res = conv.convert(drawing(tiny_dataset))
    assert (res.method, res.trained, res.weights) == ("depth", True, {"depth": str(runs["depth"])})
    check_cloud(res.points, 800)


def test_vit_only(tiny_dataset, runs):
    conv = HybridCAD3DConverter("cpu", vit_model_path=runs["vit"], enable_learning=False,
                                models_dir=runs["empty_models"], num_points=700)
    res = conv.convert_batch([drawing(tiny_dataset, 0), drawing(tiny_dataset, 1)])
    assert [r.method for r in res] == ["vit", "vit"] and all(r.trained for r in res)
    for r in res:
        check_cloud(r.points, 700)
    assert not np.array_equal(res[0].points, res[1].points)  # the drawing matters


def test_all_weights_auto_follows_stored_scores_and_every_path_runs(tiny_dataset, runs):
    conv = HybridCAD3DConverter("cpu", vit_model_path=runs["vit"], diffusion_model_path=runs["diffusion"],
                                enable_learning=False, depth_model_path=runs["depth"], num_points=600)
    assert conv.available_methods() == ["diffusion", "vit", "depth", "geometric"]
    # Each trained path stored its validation Chamfer with its weights: auto takes the lowest.
    assert {"vit", "diffusion"} <= set(conv.scores)
    assert conv.resolve_method("auto") == min(conv.scores, key=conv.scores.get)
    for method in ("diffusion", "vit", "depth", "geometric"):
        res = conv.convert(drawing(tiny_dataset), method=method, steps=4)
        assert res.method == method
        check_cloud(res.points, 600)
    # Seeded sampling: same seed, same cloud; another seed, another cloud.
    a = conv.convert(drawing(tiny_dataset), "diffusion", steps=4, seed=3).points
    b = conv.convert(drawing(tiny_dataset), "diffusion", steps=4, seed=3).points
    c = conv.convert(drawing(tiny_dataset), "diffusion", steps=4, seed=4).points
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_missing_and_corrupt_weights(tiny_dataset, runs, tmp_path):
    with pytest.warns(UserWarning, match="not found"):
        conv = HybridCAD3DConverter("cpu", vit_model_path=tmp_path / "nope.pth", enable_learning=False,
                                    models_dir=runs["empty_models"])
    assert conv.vit is None
    # Learning without weights: an untrained diffusion model exists, but auto does not use it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = HybridCAD3DConverter("cpu", enable_learning=True, models_dir=runs["empty_models"],
                                    learning_path=tmp_path / "hybrid" / "continuous_learning.pth")
    assert conv.resolve_method("auto") == "geometric"
    res = conv.convert(drawing(tiny_dataset), method="diffusion", steps=2, num_points=64)
    assert res.trained is False and res.weights == {"diffusion": "initial"}
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        HybridCAD3DConverter("cpu", vit_model_path=bad, enable_learning=False)


def test_learn_save_reload(tiny_dataset, runs, tmp_path):
    from cad3d.data.dataset import load_points

    path = tmp_path / "hybrid" / "continuous_learning.pth"
    conv = HybridCAD3DConverter("cpu", diffusion_model_path=runs["diffusion"], enable_learning=True,
                                models_dir=runs["empty_models"], learning_path=path)
    before = {k: v.clone() for k, v in conv.diffusion.unet.state_dict().items()}
    size_before = len(conv.replay_buffer)
    image = drawing(tiny_dataset, 2)
    points = load_points(tiny_dataset / "pointclouds" / f"{image.stem}.npy")
    report = conv.learn(image, points, steps=3, replay=2)
    assert report["total_steps"] == 3
    assert len(conv.replay_buffer) == min(size_before + 1, conv.replay_buffer.capacity)
    after = conv.diffusion.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it fine-tuned
    assert conv.save() == path and path.is_file()
    assert main(["ckpt", "verify", str(path)]) == 0

    # A new converter with learning on picks the learned state up by itself.
    again = HybridCAD3DConverter("cpu", enable_learning=True, models_dir=runs["empty_models"], learning_path=path)
    assert again.weights["diffusion"] == str(path) and again.trained["diffusion"]
    assert len(again.replay_buffer) == len(conv.replay_buffer)
    for k, v in again.diffusion.unet.state_dict().items():
        assert torch.equal(v, after[k].cpu())
    with pytest.raises(ConversionError, match="finite"):
        conv.learn(image, np.full((10, 3), np.nan))


def write_inputs(folder: Path, good: Path) -> dict[str, Path]:
    from PIL import Image

    folder.mkdir()
    gray = Image.open(good).convert("L")
    files = {"good": folder / "good.png"}
    gray.save(files["good"])
    rgba = Image.new("RGBA", gray.size, (0, 0, 0, 0))
    rgba.putalpha(Image.eval(gray, lambda v: 255 - v))  # black lines on transparent paper
    files["rgba"] = folder / "rgba.png"
    rgba.save(files["rgba"])
    files["palette"] = folder / "palette.png"
    gray.convert("P").save(files["palette"])
    files["sixteen_bit"] = folder / "sixteen_bit.png"
    Image.fromarray((np.asarray(gray, dtype=np.uint16) * 257)).save(files["sixteen_bit"])
    files["not_image"] = folder / "notes.png"
    files["not_image"].write_text("this is text, not a drawing")
    files["empty"] = folder / "empty.png"
    files["empty"].write_bytes(b"")
    data = files["good"].read_bytes()
    files["truncated"] = folder / "truncated.png"
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["huge"] = folder / "huge.png"
    Image.new("1", (9000, 9000), 1).save(files["huge"])
    files["blank"] = folder / "blank.png"
    Image.new("L", (256, 256), 255).save(files["blank"])
    files["cmyk"] = folder / "cmyk.jpg"
    gray.convert("CMYK").save(files["cmyk"])
    return files


def test_cli_converts_the_good_inputs_and_names_each_bad_one(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no trained_models/ or models/ here: the geometric path
    files = write_inputs(tmp_path / "in", drawing(tiny_dataset))
    (tmp_path / "empty_folder").mkdir()
    out = tmp_path / "out"
    code = main(["convert", str(tmp_path / "in"), str(tmp_path / "empty_folder"), "-o", str(out),
                 "--num-points", "256", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    ok = {"good", "rgba", "palette", "sixteen_bit"}
    for name in ok:
        stem = files[name].stem
        assert (out / f"{stem}.ply").is_file() and (out / f"{stem}_preview.png").is_file()
    causes = {"not_image": "not an image", "empty": "empty file", "truncated": "truncated", "huge": "too large",
              "blank": "blank", "cmyk": "unsupported image mode"}
    for name, cause in causes.items():
        line = next(l for l in captured.err.splitlines() if files[name].name in l)
        assert cause in line.lower() or cause in line, line
        assert not list(out.glob(f"{files[name].stem}*"))
    assert "empty_folder" in captured.err and "no images" in captured.err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial files
    assert f"converted {len(ok)}, failed {len(causes) + 1}" in captured.out
    # RGBA (transparent paper), palette and 16-bit files are read as the same drawing.
    from cad3d.conversion.drawing import read_drawing

    images = {n: read_drawing(files[n]) for n in ok}
    assert all(np.abs(images["good"] - images[n]).max() < 1 / 255 + 1e-6 for n in ok)


def test_cli_formats_and_unwritable_output(tiny_dataset, tmp_path, capsys, monkeypatch):
    import trimesh

    monkeypatch.chdir(tmp_path)
    src = drawing(tiny_dataset)
    assert main(["convert", str(src), "-o", "npy_out", "--format", "npy", "--num-points", "300", "--no-preview"]) == 0
    arr = np.load(tmp_path / "npy_out" / f"{src.stem}.npy")
    assert arr.shape == (300, 3) and arr.dtype == np.float32
    assert not (tmp_path / "npy_out" / f"{src.stem}_preview.png").exists()
    assert main(["convert", str(src), "-o", "obj_out", "--format", "obj"]) == 0
    mesh = trimesh.load(tmp_path / "obj_out" / f"{src.stem}.obj")
    assert len(mesh.faces) > 100 and mesh.is_watertight
    (tmp_path / "a_file").write_text("x")
    capsys.readouterr()
    assert main(["convert", str(src), "-o", str(tmp_path / "a_file" / "sub")]) == 1
    assert "cannot create output folder" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
    from cad3d.pipeline import DemoConfig, run_demo

    cfg = DemoConfig(num_samples=20, workers=2, progress=False,
                     epochs={"vae": 1, "vit": 1, "diffusion": 1, "depth": 1, "refine": 1})
    result = run_demo(tmp_path, cfg)
    for key in ("dataset", "dataset preview", "depth ONNX", "converted ply", "converted preview", "evaluation"):
        assert Path(result.artefacts[key]).exists(), key
    assert set(result.reports) == {"vae", "vit", "diffusion", "depth", "refine"}
    assert result.conversion["method"] in ("diffusion", "vit", "refine", "depth")  # auto: the best stored validation score
    assert result.conversion["trained"]
    assert (tmp_path / "outputs" / "eval" / "eval.md").is_file()
    assert {"diffusion", "vit", "refine", "depth", "geometric", "retrieval", "mean"} <= set(result.evaluation["methods"])
    assert "| method |" in result.evaluation_markdown
    for name in ("vae/vae_best.pth", "vit/final_model.pth", "diffusion/diffusion_best.pth", "depth/depth_best.pth",
                 "refine/refine_best.pth"):
        assert (tmp_path / "trained_models" / name).is_file(), name


def test_three_view_sheets_are_carved_from_every_panel(tmp_path):
    """A three-view sheet is recognised and its panels carve a visual hull close to the part."""
    from cad3d.conversion.drawing import read_drawing
    from cad3d.conversion.fallback import is_three_view_sheet
    from cad3d.data.synth import create_synthetic_training_data
    from cad3d.geometry.ops import chamfer_distance

    create_synthetic_training_data(tmp_path / "tv", 3, view="three_view", num_points=1024, progress=False)
    create_synthetic_training_data(tmp_path / "iso", 3, num_points=1024, progress=False)
    conv = HybridCAD3DConverter("cpu", enable_learning=False, models_dir=tmp_path, num_points=1024)
    for k in range(3):
        sheet = tmp_path / "tv" / "images" / f"synthetic_{k:04d}.png"
        assert is_three_view_sheet(read_drawing(sheet))
        assert not is_three_view_sheet(read_drawing(tmp_path / "iso" / "images" / f"synthetic_{k:04d}.png"))
        cloud = torch.from_numpy(conv.convert(sheet).points)[None]
        gt = torch.from_numpy(np.load(tmp_path / "tv" / "pointclouds" / f"synthetic_{k:04d}.npy"))[None]
        assert chamfer_distance(cloud, gt).item() < 0.02  # a single-view guess is ~0.07


def test_a_cloud_does_not_depend_on_its_batch(tiny_dataset, runs):
    conv = HybridCAD3DConverter("cpu", diffusion_model_path=runs["diffusion"], enable_learning=False,
                                depth_model_path=runs["depth"])
    a, b = drawing(tiny_dataset, 0), drawing(tiny_dataset, 1)
    for method in ("diffusion", "depth", "geometric"):
        alone = conv.convert(b, method=method, steps=3).points
        batched = conv.convert_batch([a, b], method=method, steps=3)[1].points
        # Equal up to float rounding: batched matrix products may sum in another order.
        assert np.allclose(alone, batched, atol=1e-4), method
    assert len(conv.convert(a, method="diffusion", steps=2).points) == conv.native_points("diffusion")


def test_robust_normalization_ignores_stray_points():
    from cad3d.conversion.fallback import normalize_cloud

    rng = np.random.default_rng(0)
    cube = rng.uniform(-0.5, 0.5, size=(1000, 3))
    strays = np.array([[5.0, 5.0, 5.0], [-4.0, 0.0, 0.0]])
    alone = np.abs(normalize_cloud(cube)).max()  # about 1/sqrt(3): the corners touch the sphere
    plain = np.abs(normalize_cloud(np.concatenate([cube, strays]))[:1000]).max()
    robust = np.abs(normalize_cloud(np.concatenate([cube, strays]), robust=True)[:1000]).max()
    assert plain < 0.85 * alone  # two strays squeezed the cube
    assert abs(robust - alone) < 0.15 * alone  # the cube keeps about its size


def test_auto_takes_the_path_with_the_best_stored_validation_score(tmp_path):
    conv = HybridCAD3DConverter(device="cpu", enable_learning=False, models_dir=tmp_path)
    # Pretend both learned paths are loaded and trained; only `resolve_method` is under test.
    conv.diffusion, conv.vit = object(), object()
    conv.trained.update(diffusion=True, vit=True)
    assert conv.resolve_method("auto") == "diffusion"  # no score stored: the fixed order
    conv.scores.update(diffusion=0.02, vit=0.01)
    assert conv.resolve_method("auto") == "vit"  # the lower validation Chamfer wins
    conv.scores["diffusion"] = 0.005
    assert conv.resolve_method("auto") == "diffusion"
    conv.trained["diffusion"] = False  # untrained weights never win by a score
    assert conv.resolve_method("auto") == "vit"


def test_a_clean_and_a_varied_drawing_of_one_part_convert_alike(tmp_path):
    """The converter finds the part on a sheet (border, title block, dimensions, scan noise)
    before its models see it; a drawing framed like the training data is left as it is."""
    from cad3d.conversion.fallback import frame_part, geometric_fallback
    from cad3d.data.dataset import index_dataset, load_drawing
    from cad3d.data.synth import create_synthetic_training_data
    from cad3d.evaluation.metrics import score_clouds

    for style in ("clean", "varied"):
        create_synthetic_training_data(tmp_path / style, 3, seed=5, style=style, image_size=256, num_points=256,
                                       dense_points=0, layers=0, progress=False)
    conv = HybridCAD3DConverter(device="cpu", enable_learning=False, models_dir=tmp_path / "none")
    framed, raw = [], []
    for rec in index_dataset(tmp_path / "clean"):
        clean = load_drawing(rec.image, 256)
        varied = load_drawing(tmp_path / "varied" / "images" / f"{rec.stem}.png", 256)
        assert np.array_equal(frame_part(clean), clean)
        a = conv.convert(clean, "geometric", num_points=1024).points
        framed.append(score_clouds([a], [conv.convert(varied, "geometric", num_points=1024).points])[0]["chamfer_l2"])
        # The varied sheet as drawn, without finding the part first:
        raw.append(score_clouds([a], [geometric_fallback(varied, 1024, np.random.default_rng(0))])[0]["chamfer_l2"])
    assert np.mean(framed) < 0.005 and np.mean(framed) < 0.5 * np.mean(raw), (framed, raw)


def test_cli_never_overwrites_outputs_when_names_collide(tiny_dataset, tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)  # the geometric path
    d = tmp_path / "d"
    d.mkdir()
    with Image.open(drawing(tiny_dataset)) as im:
        for ext in ("png", "jpg", "bmp"):
            im.convert("RGB").save(d / f"x.{ext}")
    assert main(["convert", str(d), str(d / "x.png"), "-o", "out", "--num-points", "128", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "converted 3, failed 0" in out  # x.png given twice is converted once
    clouds = sorted(p.name for p in (tmp_path / "out").glob("*.ply"))
    assert clouds == ["x.ply", "x_jpg.ply", "x_png.ply"]  # inputs in name order: x.bmp keeps "x"
    assert len(list((tmp_path / "out").glob("*_preview.png"))) == 3
    assert out.count("(renamed: another input has the same name)") == 2
    assert f"{d / 'x.jpg'} -> out/x_jpg.ply" in out
