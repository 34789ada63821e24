"""`cad3d data import`: users' own CAD meshes drawn and sampled exactly like synthetic parts."""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cad3d.data.synth import (
    DENSE_POINTS,
    DENSE_STREAM,
    RenderSettings,
    prepare_output,
    run_parallel,
    split_for,
    write_manifest,
    write_sample,
)
from cad3d.data.layers import DEFAULT_LAYERS
from cad3d.errors import DatasetError

log = logging.getLogger(__name__)

MESH_EXTENSIONS = (".stl", ".obj", ".ply", ".off", ".glb", ".gltf")


@dataclass
class ImportReport:
    manifest: Path | None = None
    imported: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (file, what)


def load_user_mesh(path: Path):
    """Load one mesh file as a single trimesh.Trimesh; repair what is safely repairable.

    Returns (mesh, notes). Raises DatasetError for files that cannot be drawn soundly: unreadable,
    no faces, zero area, non-finite vertices.
    """
    import trimesh

    try:
        loaded = trimesh.load(path, force="mesh", process=True)
    except Exception as exc:  # trimesh raises many types for bad files
        raise DatasetError(f"{path}: cannot read mesh ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise DatasetError(f"{path}: no triangles in the file")
    mesh = loaded
    if not np.isfinite(mesh.vertices).all():
        raise DatasetError(f"{path}: vertices contain NaN or infinite values")
    mesh.remove_unreferenced_vertices()
    if mesh.area <= 0 or np.ptp(mesh.vertices, axis=0).max() <= 0:
        raise DatasetError(f"{path}: mesh has no area")
    notes = []
    if not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
        trimesh.repair.fix_normals(mesh)
        if mesh.is_watertight:
            notes.append("holes filled to make it watertight")
        else:
            # Drawing and surface sampling stay sound for open meshes; only solids are lost.
            notes.append("not watertight; drawn and sampled as a surface")
    return mesh, notes


def stem_from_path(path: Path, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).strip("._") or "part"
    stem, k = base, 1
    while stem in used:
        k += 1
        stem = f"{base}_{k}"
    used.add(stem)
    return stem


@dataclass(frozen=True)
class _ImportJob:
    out_dir: str
    seed: int
    settings: RenderSettings


_JOB: _ImportJob | None = None


def _init(job: _ImportJob) -> None:
    global _JOB
    _JOB = job


def _import_one(item: tuple[int, str, str]):
    index, path_str, stem = item
    path = Path(path_str)
    assert _JOB is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mesh, notes = load_user_mesh(path)
        rng = np.random.default_rng([_JOB.seed, index])
        entry = write_sample(
            Path(_JOB.out_dir), stem, mesh, family="imported",
            params={"file": path.name, "notes": notes}, rng=rng, settings=_JOB.settings,
            split=split_for(_JOB.seed, index, _JOB.settings.split_fractions), source={"file": str(path)},
            dense_rng=np.random.default_rng([_JOB.seed, index, DENSE_STREAM]),
        )
        return entry, notes, None
    except DatasetError as exc:
        return None, [], str(exc)
    except Exception as exc:  # a mesh that breaks the renderer must not stop the others
        return None, [], f"{path}: cannot be drawn ({type(exc).__name__}: {exc})"


def import_meshes(
    mesh_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    view: str = "iso",
    num_points: int = 4096,
    image_size: int = 256,
    hidden: str = "none",
    dense_points: int = DENSE_POINTS,
    layers: int = DEFAULT_LAYERS,
    projection: str = "first-angle",
    style: str = "clean",
    workers: int = 1,
    progress: bool = True,
) -> ImportReport:
    """Render and sample every mesh file in ``mesh_dir`` (recursively) into ``output_dir``.

    Unreadable or degenerate meshes are skipped and reported by name; open meshes are drawn with
    a warning. Samples are ordered by file path, so the result does not depend on ``workers``.
    """
    mesh_dir, out_dir = Path(mesh_dir), Path(output_dir)
    if not mesh_dir.is_dir():
        raise DatasetError(f"{mesh_dir}: mesh folder does not exist")
    files = sorted(p for p in mesh_dir.rglob("*") if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS)
    if not files:
        raise DatasetError(f"{mesh_dir}: no mesh files ({', '.join(MESH_EXTENSIONS)})")
    settings = RenderSettings(view=view, num_points=num_points, image_size=image_size, hidden=hidden,
                              dense_points=dense_points, layers=layers, projection=projection, style=style)
    prepare_output(out_dir, settings)
    used: set[str] = set()
    items = [(i, str(p), stem_from_path(p, used)) for i, p in enumerate(files)]
    results = run_parallel(_init, _import_one, items, _ImportJob(str(out_dir), seed, settings),
                           min(workers, len(items)), "import", progress)
    report = ImportReport()
    entries = []
    for (_, path, _), (entry, notes, error) in zip(items, results):
        if error:
            report.skipped.append((path, error))
            log.warning("skipped %s", error)
            continue
        entries.append(entry)
        report.imported.append(entry["stem"])
        for note in notes:
            report.warnings.append((path, note))
            log.warning("%s: %s", path, note)
    if entries:
        info = {"source": "imported", "seed": int(seed), "mesh_dir": str(mesh_dir),
                "settings": {**asdict(settings), "split_fractions": list(settings.split_fractions)}}
        # Its own manifest name, so importing into a folder of synthetic samples keeps theirs.
        report.manifest = write_manifest(out_dir, entries, shard=None, info=info, name="manifest_imported.json")
    return report

