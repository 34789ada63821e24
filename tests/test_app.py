"""The web app without a browser: GLB export (`cad3d convert --format glb`, round trip through
trimesh), the app's conversion service (every format, per-file errors, caps, examples, the
evaluation tab), and `cad3d serve` driven through gradio_client as a script would."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from cad3d.app.service import AppConfig, ConversionService
from cad3d.cli import main
from cad3d.conversion.outputs import glb_bytes, mesh_from_cloud
from cad3d.errors import ConversionError
from cad3d.conversion.converter import HybridCAD3DConverter


def drawings(tiny_dataset, k=2):
    return sorted((tiny_dataset / "images").glob("*.png"))[:k]


def load_glb(data: bytes) -> trimesh.Scene:
    scene = trimesh.load(io.BytesIO(data), file_type="glb")
    assert isinstance(scene, trimesh.Scene)
    return scene


def from_y_up(v):
    """Back from the GLB's (x, z, -y) to our z-up frame."""
    v = np.asarray(v)
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)


# -- GLB ---------------------------------------------------------------------------------------
def test_glb_round_trip_through_trimesh_points_and_mesh(tiny_dataset):
    from cad3d.data.dataset import load_points

    pts = load_points(sorted((tiny_dataset / "pointclouds").glob("*.npy"))[0])
    scene = load_glb(glb_bytes(pts))
    cloud, mesh = scene.geometry["points"], scene.geometry["mesh"]
    assert isinstance(cloud, trimesh.PointCloud) and np.array_equal(from_y_up(cloud.vertices), pts)
    assert cloud.colors.shape == (len(pts), 4) and len(np.unique(cloud.colors, axis=0)) > 10  # coloured by height
    # The mesh is the one an OBJ gets, turned y-up: same bounds once turned back.
    obj = mesh_from_cloud(pts)
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) == len(obj.faces)
    np.testing.assert_allclose(np.sort(from_y_up(mesh.bounds), axis=0), obj.bounds, atol=1e-5)
    # Upright: the part's height (our z) is the GLB's y.
    assert np.isclose(cloud.vertices[:, 1].max(), pts[:, 2].max())

    # Scattered points: no mesh can be built, the GLB keeps the points; an OBJ is an error.
    scattered = np.random.default_rng(0).choice([-1.0, 1.0], size=(300, 3)).astype(np.float32)
    assert list(load_glb(glb_bytes(scattered)).geometry) == ["points"]
    with pytest.raises(ConversionError, match="too scattered"):
        mesh_from_cloud(scattered)


def test_cad3d_convert_format_glb(tiny_dataset, tmp_path, capsys):
    src = drawings(tiny_dataset, 1)[0]
    assert main(["convert", str(src), "-o", str(tmp_path), "--format", "glb", "--num-points", "700",
                 "--models-dir", str(tmp_path / "none"), "--device", "cpu", "--no-progress"]) == 0
    out = tmp_path / f"{src.stem}.glb"
    assert f"-> {out}" in capsys.readouterr().out
    scene = load_glb(out.read_bytes())
    assert len(scene.geometry["points"].vertices) == 700 and len(scene.geometry["mesh"].faces) > 100


# -- the conversion service ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    work = tmp_path_factory.mktemp("app_work")
    converter = HybridCAD3DConverter(device="cpu", enable_learning=False, models_dir=work / "no_models")
    svc = ConversionService(AppConfig(work_dir=str(work), max_pixels=300 * 300, max_upload_mb=1, max_files=3,
                                      eval_dir=str(work / "no_eval"), runs_dir=str(work / "no_runs")), converter)
    yield svc
    svc.close()


def test_service_writes_every_format_and_reports_bad_files_like_the_cli(service, tiny_dataset, tmp_path, capsys):
    good = drawings(tiny_dataset, 2)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not a png at all")
    huge = tmp_path / "huge.png"
    Image.new("L", (400, 400), 255).save(huge)
    done, summary = service.convert([good[0], bad, huge, good[1]], "auto", num_points=600, seed=3)
    assert summary.startswith("converted 1, failed 2") and "only the first 3" in summary
    ok, not_image, too_big = done
    assert ok.error is None and ok.method == "geometric" and ok.trained is False and ok.seconds > 0
    assert set(ok.files) == {"ply", "npy", "glb", "obj", "preview", "view"}
    assert np.load(ok.files["npy"]).shape == (600, 3)
    assert len(trimesh.load(ok.files["ply"]).vertices) == 600
    assert len(load_glb(open(ok.files["glb"], "rb").read()).geometry["points"].vertices) == 600
    assert trimesh.load(ok.files["obj"]).is_watertight
    # The same message as `cad3d convert` prints, with the upload's name instead of its path.
    assert main(["convert", str(bad), "-o", str(tmp_path / "cli"), "--device", "cpu", "--no-progress",
                 "--models-dir", str(tmp_path / "none")]) == 1
    cli = capsys.readouterr().err.strip().removeprefix("cad3d: error: ").splitlines()[0]
    assert not_image.error == cli.replace(str(bad), "notes.png") and not_image.error.startswith("notes.png: not an image")
    assert too_big.error == "huge.png: image too large (400x400 pixels; at most 90,000 pixels)" and not too_big.files
    json.dumps([d.as_dict() for d in done])  # what the API returns is plain JSON

    # Same drawing, same seed: the same cloud as the library gives.
    again = service.converter.convert(good[0], num_points=600, seed=3)
    assert np.array_equal(np.load(ok.files["npy"]), again.points)
    # Whole-request problems come back as a summary line, never as an exception.
    assert service.convert([good[0]], "vit") == ([], "method 'vit' is not available: no vit model was loaded")
    assert service.convert([])[0] == [] and service.convert([good[0]], num_points=10**6)[0] == []


def test_service_examples_and_empty_evaluation_tab(service):
    examples = service.make_examples()
    assert len(examples) == 3 and all(p.suffix == ".png" for p in examples)
    done, _ = service.convert(examples)
    assert [d.error for d in done] == [None] * 3
    text, chart = service.evaluation_page()
    assert "No evaluation yet" in text and chart is None
    figures, notes = service.loss_figures()
    assert figures == [] and "no training runs" in notes[0]


def test_serve_binds_to_localhost_unless_told(tmp_path):
    from cad3d.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.models_dir) == ("127.0.0.1", 7860, "models")
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "0", "--models-dir", str(tmp_path)])
    assert (args.host, args.port, args.models_dir) == ("0.0.0.0", 0, str(tmp_path))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-upload-mb", "0"])


# -- `cad3d serve` through gradio_client -----------------------------------------------------------
@pytest.mark.slow
def test_gradio_client_converts_through_the_running_app(app_server, tiny_dataset, tmp_path):
    from gradio_client import Client, handle_file

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    client = Client(app_server.url, verbose=False)
    summary, results, files = client.predict(
        [handle_file(str(drawings(tiny_dataset, 1)[0])), handle_file(str(bad))], [], "depth", 1024, 10, None, 0,
        api_name="/convert")
    assert summary.startswith("converted 1, failed 1")
    good, broken = results
    assert good["method"] == "depth" and good["trained"] is True and good["weights"]["depth"].endswith(".onnx")
    assert broken["error"].startswith("broken.png: ") and "Traceback" not in broken["error"]
    by_suffix = {f.rsplit(".", 1)[-1]: f for f in files}
    assert set(by_suffix) == {"glb", "ply", "obj", "npy"}
    assert np.load(by_suffix["npy"]).shape == (1024, 3)
    assert len(load_glb(open(by_suffix["glb"], "rb").read()).geometry["points"].vertices) == 1024
