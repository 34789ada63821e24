"""Synthetic data, the dataset reader, checks, previews and mesh import, as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cad3d.cli import main
from cad3d.data.check import check_dataset
from cad3d.data.dataset import CAD2D3DDataset, index_dataset
from cad3d.data.synth import create_synthetic_training_data
from cad3d.errors import DatasetError
from cad3d.geometry.camera import OrthoCamera

from conftest import TINY


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_and_metadata(tiny_dataset):
    stems = sorted(p.stem for p in (tiny_dataset / "images").glob("*.png"))
    assert len(stems) == 16 and stems[0] == "synthetic_0000"
    for sub, suffix in (("pointclouds", ".npy"), ("depth", ".npy"), ("meta", ".json"), ("dense", ".npy")):
        assert sorted(p.stem for p in (tiny_dataset / sub).glob(f"*{suffix}")) == stems
    pts = np.load(tiny_dataset / "pointclouds" / "synthetic_0003.npy")
    assert pts.shape == (512, 3) and pts.dtype == np.float32
    assert np.linalg.norm(pts, axis=1).max() <= 1.0 + 1e-5  # normalized into the unit sphere
    meta = json.loads((tiny_dataset / "meta" / "synthetic_0003.json").read_text())
    assert {"family", "parameters", "cameras", "normalization", "split"} <= set(meta)
    assert meta["normalization"]["scale"] > 0 and len(meta["normalization"]["center"]) == 3
    dense = np.load(tiny_dataset / "dense" / "synthetic_0003.npy")
    assert dense.shape == (32768, 3) and dense.dtype == np.float16 and meta["dense_points"] == 32768
    assert np.abs(dense.astype(np.float32)).max() <= 1.0 + 1e-3
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert manifest["version"] == 2
    assert [s["stem"] for s in manifest["samples"]] == stems
    assert sum(manifest["counts"].values()) == 16
    assert len({s["family"] for s in manifest["samples"]}) >= 5  # families are mixed


def test_depth_map_lifts_onto_the_cloud(tiny_dataset):
    """The recorded camera and depth map put the drawing's pixels on the part's surface."""
    from scipy.spatial import cKDTree

    meta = json.loads((tiny_dataset / "meta" / "synthetic_0001.json").read_text())
    cam = OrthoCamera.from_dict(meta["cameras"][0])
    depth = np.load(tiny_dataset / "depth" / "synthetic_0001.npy")
    rows, cols = np.nonzero(depth > 0)
    assert len(rows) > 100
    world = cam.unproject(np.stack([cols + 0.5, rows + 0.5], 1), depth[rows, cols])
    cloud = np.load(tiny_dataset / "pointclouds" / "synthetic_0001.npy")
    dist, _ = cKDTree(cloud).query(world)
    # 512 samples over the whole surface: lifted pixels lie within a few sample spacings.
    assert np.median(dist) < 0.08


def test_same_seed_is_byte_identical_whatever_the_workers(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    create_synthetic_training_data(a, 6, workers=1, progress=False, **TINY)
    create_synthetic_training_data(b, 6, workers=2, progress=False, **TINY)
    create_synthetic_training_data(c, 6, workers=1, progress=False, **{**TINY, "seed": 8})
    assert files_of(a) == files_of(b)
    assert files_of(a) != files_of(c)


def test_shards_together_equal_the_whole(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    create_synthetic_training_data(whole, 5, workers=1, progress=False, **TINY)
    for i in range(3):
        create_synthetic_training_data(parts, 5, shard=f"{i}/3", workers=1, progress=False, **TINY)
    manifests = {k for k in files_of(parts) if k.startswith("manifest")}
    assert manifests == {f"manifest_shard_{i}_of_3.json" for i in range(3)}
    data_whole = {k: v for k, v in files_of(whole).items() if not k.startswith("manifest")}
    data_parts = {k: v for k, v in files_of(parts).items() if not k.startswith("manifest")}
    assert data_whole == data_parts
    assert [r.stem for r in index_dataset(parts)] == [r.stem for r in index_dataset(whole)]
    assert [r.split for r in index_dataset(parts)] == [r.split for r in index_dataset(whole)]


def test_dataset_items_and_splits(tiny_dataset):
    ds = CAD2D3DDataset(tiny_dataset, image_size=64, num_points=300, augment=False)
    image, points = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert points.shape == (300, 3) and points.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.min() < 0.5  # lines on white paper
    assert torch.equal(ds[0][1], points)  # no augmentation: fixed subset
    splits = {s: len(CAD2D3DDataset(tiny_dataset, split=s, augment=False)) for s in ("train", "val", "test") if
              any(r.split == s for r in ds.records)}
    assert sum(splits.values()) == len(ds) and splits["train"] >= len(ds) // 2
    # Repetition when a cloud has fewer points than asked.
    assert CAD2D3DDataset(tiny_dataset, num_points=1000, augment=False)[0][1].shape == (1000, 3)


def test_augmentation_is_seeded_and_keeps_drawing_and_cloud_consistent(tiny_dataset):
    ds = CAD2D3DDataset(tiny_dataset, image_size=128, num_points=512, augment=True, seed=3)
    first = [ds[i] for i in range(4)]
    again = [ds[i] for i in range(4)]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(first, again))
    ds.set_epoch(1)
    assert any(not torch.equal(x[1], ds[i][1]) for i, x in enumerate(first))

    # The mirror flips the image and reflects the cloud so that its projection flips too.
    depth = ds.depth(2)
    image = np.asarray(first[2][0][0])
    cloud = np.load(ds.records[2].points)
    flipped_image, mirrored = ds._mirror(2, image, cloud)
    cam = OrthoCamera.from_dict(ds.meta(2)["cameras"][0])
    uv, _ = cam.project(mirrored)
    cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    flipped_mask = depth[:, ::-1] > 0
    assert flipped_mask[rows, cols].mean() > 0.95
    assert np.array_equal(flipped_image, image[:, ::-1])


@pytest.fixture()
def broken_copy(tiny_dataset, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(tiny_dataset, d)
    return d


def test_bad_data_raises_dataset_error_naming_the_file(broken_copy, tmp_path):
    d = broken_copy
    (d / "images" / "synthetic_0000.png").write_bytes(b"not a png at all")
    np.save(d / "pointclouds" / "synthetic_0001.npy", np.full((10, 3), np.nan, dtype=np.float32))
    np.save(d / "pointclouds" / "synthetic_0002.npy", np.zeros((10, 2), dtype=np.float32))
    (d / "pointclouds" / "synthetic_0003.npy").write_bytes(b"\x93NUMPY garbage")
    png = (d / "images" / "synthetic_0004.png").read_bytes()
    (d / "images" / "synthetic_0004.png").write_bytes(png[: len(png) // 2])  # truncated
    ds = CAD2D3DDataset(d, augment=False)
    cases = {0: "synthetic_0000.png", 1: "synthetic_0001.npy", 2: "synthetic_0002.npy", 3: "synthetic_0003.npy",
             4: "synthetic_0004.png"}
    for i, name in cases.items():
        with pytest.raises(DatasetError, match=name):
            ds[i]
    (d / "pointclouds" / "synthetic_0005.npy").unlink()
    with pytest.raises(DatasetError, match="synthetic_0005"):
        CAD2D3DDataset(d)
    with pytest.raises(DatasetError, match="does not exist"):
        CAD2D3DDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "pointclouds").mkdir()
    with pytest.raises(DatasetError, match="no samples"):
        CAD2D3DDataset(tmp_path / "empty")


def test_check_lists_every_problem_with_counts(broken_copy, capsys):
    d = broken_copy
    assert main(["data", "check", str(d)]) == 0
    (d / "images" / "synthetic_0000.png").write_bytes(b"")
    np.save(d / "pointclouds" / "synthetic_0001.npy", np.full((4, 3), np.inf, dtype=np.float32))
    (d / "pointclouds" / "synthetic_0002.npy").unlink()
    (d / "images" / "synthetic_0003.png").unlink()
    report = check_dataset(d)
    assert not report.ok
    counts = report.counts()
    assert counts["missing partner"] == 2 and counts["non-finite values"] == 1
    assert sum(counts.values()) >= 4
    capsys.readouterr()
    assert main(["data", "check", str(d)]) == 1
    out = capsys.readouterr().out
    for name in ("synthetic_0000.png", "synthetic_0001.npy", "synthetic_0002", "synthetic_0003"):
        assert name in out


def test_preview_contact_sheet(tiny_dataset, tmp_path):
    from PIL import Image

    out = tmp_path / "sheet.png"
    assert main(["data", "preview", str(tiny_dataset), "-o", str(out), "-n", "4"]) == 0
    im = np.asarray(Image.open(out).convert("L"))
    assert im.shape[0] > 100 and im.shape[1] > 300
    assert (im < 128).mean() > 0.002  # drawings and clouds are on it


def test_cli_synth_three_view_and_seed000_import_path(tmp_path, capsys):
    from cad3d.diffusion_trainer import CAD2D3DDataset as Seed000Dataset
    from cad3d.diffusion_trainer import create_synthetic_training_data as seed000_create

    out = tmp_path / "tv"
    assert main(["data", "synth", "--out", str(out), "--num-samples", "3", "--view", "three_view",
                 "--hidden", "dashed", "--num-points", "256", "--workers", "1", "--no-progress"]) == 0
    meta = json.loads((out / "meta" / "synthetic_0000.json").read_text())
    assert len(meta["cameras"]) == 4
    assert seed000_create is create_synthetic_training_data
    image, points = Seed000Dataset(out, image_size=256, num_points=2048, augment=True)[0]
    assert image.shape == (3, 256, 256) and points.shape == (2048, 3)
    with pytest.raises(SystemExit) as exc:
        main(["data", "synth", "--out", str(out), "--num-samples", "0"])
    assert exc.value.code == 2
    assert main(["data", "synth", "--out", str(out), "--num-samples", "2", "--families", "no_such_part"]) == 1
    assert "no_such_part" in capsys.readouterr().err


def test_import_user_meshes(tmp_path):
    import trimesh

    from cad3d.data.importer import import_meshes

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.box((2.0, 1.0, 0.5)).export(meshes / "bracket.stl")
    trimesh.creation.cylinder(0.5, 2.0, sections=32).export(meshes / "pin.obj")
    open_box = trimesh.creation.box((1, 1, 1))
    open_box.update_faces(np.arange(len(open_box.faces)) != 0)
    open_box.export(meshes / "open.ply")
    (meshes / "broken.stl").write_bytes(b"solid nothing\nendsolid\n")
    (meshes / "notes.txt").write_text("not a mesh")
    report = import_meshes(meshes, tmp_path / "real_cad", num_points=256, image_size=96, progress=False)
    assert sorted(report.imported) == ["bracket", "open", "pin"]
    assert [Path(p).name for p, _ in report.skipped] == ["broken.stl"]
    assert any("open.ply" in p for p, _ in report.warnings)
    ds = CAD2D3DDataset(tmp_path / "real_cad", image_size=96, num_points=128, augment=False)
    assert len(ds) == 3 and ds[0][1].shape == (128, 3)
    assert check_dataset(tmp_path / "real_cad").ok


def test_mesh_normalization_follows_the_geometry_convention():
    import trimesh

    from cad3d.data.synth import normalize_mesh
    from cad3d.geometry.transforms import normalize

    mesh = trimesh.creation.box((4.0, 2.0, 1.0))
    mesh.apply_translation((10.0, -3.0, 2.0))
    norm_mesh, info = normalize_mesh(mesh)
    expected, center, scale = normalize(np.asarray(mesh.vertices))
    np.testing.assert_allclose(norm_mesh.vertices, expected, atol=1e-9)
    np.testing.assert_allclose(info["center"], center, atol=1e-9)
    assert info["scale"] == pytest.approx(float(scale))


def test_split_is_a_function_of_seed_and_index_alone():
    """Growing a dataset never moves a part between splits; fractions hold; small sets keep
    held-out samples. (The rule used to cut a seeded permutation of all N samples at exact
    counts, so a part's split changed with N; exact counts now hold per block of 10 indices.)"""
    from collections import Counter

    from cad3d.data.synth import split_for

    counts = Counter(split_for(0, i) for i in range(2000))
    assert counts == {"train": 1600, "val": 200, "test": 200}  # 8/1/1 in every block of 10
    other = Counter(split_for(5, i, (0.75, 0.15, 0.1)) for i in range(2000))
    assert abs(other["val"] / 2000 - 0.15) < 0.03 and abs(other["test"] / 2000 - 0.1) < 0.03
    for seed in range(100):  # any set of >= 3 samples has a val and a test sample
        assert sorted(split_for(seed, i) for i in range(3)) == ["test", "train", "val"]
    for n in (5, 10, 20):  # the counts the old exact rule gave these sizes
        c = Counter(split_for(1, i) for i in range(n))
        assert (c["train"], c["val"], c["test"]) == (n - 2 * max(1, round(n / 10)),) + (max(1, round(n / 10)),) * 2
    assert [split_for(3, i) for i in range(50)] != [split_for(4, i) for i in range(50)]
    with pytest.raises(ValueError):
        split_for(0, -1)


def test_split_and_files_of_a_part_do_not_depend_on_the_dataset_size(tmp_path):
    """The same (seed, index) in a 30- and a 90-sample set: same split, same files (made as
    shards, so only the shared indices are drawn)."""
    small, large = tmp_path / "n30", tmp_path / "n90"
    tiny = {**TINY, "image_size": 64, "num_points": 64, "dense_points": 256}
    create_synthetic_training_data(small, 30, shard="0/13", workers=1, progress=False, **tiny)  # 0, 13, 26
    create_synthetic_training_data(large, 90, shard="0/13", workers=1, progress=False, **tiny)  # 0, 13, ..., 78
    entries = {m: {e["stem"]: e for e in json.loads((d / "manifest_shard_0_of_13.json").read_text())["samples"]}
               for m, d in (("small", small), ("large", large))}
    shared = sorted(entries["small"])
    assert shared == ["synthetic_0000", "synthetic_0013", "synthetic_0026"] and set(shared) < set(entries["large"])
    for stem in shared:
        assert entries["small"][stem] == entries["large"][stem]  # split, family and index
        for sub in ("images/{}.png", "pointclouds/{}.npy", "dense/{}.npy", "meta/{}.json"):
            assert (small / sub.format(stem)).read_bytes() == (large / sub.format(stem)).read_bytes()


def test_non_square_drawings_are_padded_not_stretched(tmp_path):
    from PIL import Image

    from cad3d.data.dataset import load_drawing

    im = Image.new("L", (200, 100), 255)
    im.paste(0, (90, 40, 110, 60))  # a 20x20 black square in the middle
    im.save(tmp_path / "wide.png")
    arr = load_drawing(tmp_path / "wide.png", 100)
    assert arr.shape == (100, 100)
    rows, cols = np.nonzero(arr < 0.5)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1  # still a square
    assert arr[:20].min() == 1.0 and arr[-20:].min() == 1.0  # paper above and below
