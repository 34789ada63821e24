"""Synthetic and imported CAD datasets: parts -> normalized mesh -> drawing, depth, cloud, metadata.

On-disk layout of a dataset folder (pairing by identical stem):

    images/<stem>.png        256x256 grayscale technical drawing (black lines on white)
    pointclouds/<stem>.npy   (num_points, 3) float32 surface samples, normalized
    depth/<stem>.npy         (H, W) float32 camera depth of the drawing's view(s), 0 = background
    dense/<stem>.npy         (M, 3) float16 dense surface sample (ground truth for scoring), normalized
    meta/<stem>.json         family, parameters, cameras, normalization, split
    manifest.json            samples with their split (a shard writes manifest_shard_I_of_N.json)

Sample ``i`` of seed ``s`` depends on ``(s, i)`` alone, its split included (not on the number of
samples), so the same seed gives byte-identical files whatever the worker count or sharding, and
growing a dataset never moves a part between train, val and test.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import multiprocessing as mp
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cad3d.data.layers import DEFAULT_LAYERS
from cad3d.errors import DatasetError
from cad3d.io import atomic_write_bytes
from cad3d.geometry.camera import DEFAULT_PROJECTION, PROJECTIONS, OrthoCamera, iso_camera, random_camera, three_view_cameras

log = logging.getLogger(__name__)

FORMAT_NAME = "cad3d-dataset"
# 2: splits follow (seed, index) alone, and dense/ holds the dense ground truth. Version 1 datasets
# are still read; their recorded splits stay as recorded.
FORMAT_VERSION = 2
VIEWS = ("iso", "three_view", "random")
STYLES = ("clean", "varied")
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
MANIFEST = "manifest.json"
SUBDIRS = ("images", "pointclouds", "depth", "layers", "meta", "dense")
# Dense ground truth: with 32768 points a perfect prediction loses < 0.2% precision at the 1%
# F-score threshold (16384 lose 2.5%); float16 moves a point by < 2.5e-4, 1/60 of that threshold.
DENSE_POINTS = 32768
DENSE_STREAM = 0xD3  # the dense sample's own random stream, so the other files do not change
SPLIT_BLOCK = 10  # consecutive indices whose splits are drawn together (stratified)


@dataclass(frozen=True)
class RenderSettings:
    """How every sample of a dataset is drawn and sampled (recorded in the manifest)."""

    view: str = "iso"  # iso | three_view | random
    num_points: int = 4096
    image_size: int = 256
    hidden: str = "none"  # none | dashed
    layers: int = DEFAULT_LAYERS  # layered depth maps of the drawing's cameras (0: none)
    split_fractions: tuple = DEFAULT_SPLIT_FRACTIONS
    dense_points: int = DENSE_POINTS  # 0 = no dense ground truth
    projection: str = DEFAULT_PROJECTION  # first-angle | third-angle (three-view sheet layout)
    style: str = "clean"  # clean | varied (cad3d.data.style)

    def __post_init__(self):
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")
        if self.hidden not in ("none", "dashed"):
            raise ValueError(f"hidden must be 'none' or 'dashed', got {self.hidden!r}")
        if self.num_points < 1:
            raise ValueError(f"num_points must be positive, got {self.num_points}")
        if self.dense_points < 0:
            raise ValueError(f"dense_points must be >= 0, got {self.dense_points}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        fr = tuple(float(f) for f in self.split_fractions)
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {fr}")
        object.__setattr__(self, "split_fractions", fr)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N) with 0 <= I < N; None stays None."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return i, n


def stem_for(prefix: str, index: int, num_samples: int) -> str:
    return f"{prefix}_{index:0{max(4, len(str(num_samples - 1)))}d}"


@functools.lru_cache(maxsize=1024)
def _block_splits(seed: int, block: int, fractions: tuple) -> tuple[str, ...]:
    """Splits of indices ``block * SPLIT_BLOCK ...`` (one value per index of the block)."""
    rng = np.random.default_rng([seed, block, 0x5B1])
    # Stratified: one uniform value per tenth of [0, 1), so each block of 10 holds exactly the
    # fractions when they are multiples of 0.1 (8/1/1 by default), and about them otherwise.
    u = (rng.permutation(SPLIT_BLOCK) + rng.random(SPLIT_BLOCK)) / SPLIT_BLOCK  # (B,)
    edges = np.round(np.cumsum(fractions)[:2], 12)  # (2,) rounded so 0.8 + 0.1 is 0.9
    labels = [SPLITS[int(np.searchsorted(edges, x, side="right"))] for x in u]
    if block == 0:
        # Every split with a share gets one of the first three indices: a set of >= 3 samples
        # always has held-out drawings. Swaps inside the block keep its counts.
        for name, share in zip(SPLITS, fractions):
            if share <= 0 or name in labels[:3]:
                continue
            spare = next(i for i in range(3) if labels[:3].count(labels[i]) > 1)
            donor = next((j for j in range(3, SPLIT_BLOCK) if labels[j] == name), None)
            if donor is None:
                labels[spare] = name
            else:
                labels[spare], labels[donor] = labels[donor], labels[spare]
    return tuple(labels)


def split_for(seed: int, index: int, fractions=DEFAULT_SPLIT_FRACTIONS) -> str:
    """The split of sample ``index`` of seed ``seed``: a function of (seed, index) alone, so a
    part keeps its split whatever the size of the dataset, and every shard and worker agrees.

    Indices come in blocks of `SPLIT_BLOCK`, each a seeded stratified draw of the fractions (so
    every 10 consecutive samples hold 8 train, 1 val, 1 test by default), and the first three
    indices cover every split, so sets of 3 or more samples have held-out drawings.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    fr = tuple(float(f) for f in fractions)
    return _block_splits(int(seed), index // SPLIT_BLOCK, fr)[index % SPLIT_BLOCK]


def cameras_for(view: str, rng: np.random.Generator, image_size: int,
                projection: str = DEFAULT_PROJECTION) -> list[OrthoCamera]:
    size = (image_size, image_size)
    if view == "iso":
        return [iso_camera(size)]
    if view == "three_view":
        return three_view_cameras(size, projection)
    return [random_camera(rng, size)]


def normalize_mesh(mesh):
    """Copy of ``mesh`` centred at its bounding-box centre and scaled into the unit sphere.

    Returns (mesh, {"center": [3], "scale": s}) with ``normalized = (original - center) / scale``:
    the convention of `cad3d.geometry.transforms.normalize`, in numpy so that synthesis workers need
    not import torch (seconds of start-up per worker).
    """
    v = np.asarray(mesh.vertices, dtype=np.float64)
    if len(v) == 0:
        raise ValueError("mesh has no vertices")
    center = (v.min(axis=0) + v.max(axis=0)) / 2.0  # (3,)
    scale = float(np.linalg.norm(v - center, axis=1).max())
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError("mesh has no extent")
    out = mesh.copy()
    out.vertices = (v - center) / scale
    return out, {"center": [float(x) for x in center], "scale": scale}


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def json_dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)


def write_sample(
    out_dir: Path,
    stem: str,
    mesh,
    *,
    family: str,
    params: dict,
    rng: np.random.Generator,
    settings: RenderSettings,
    split: str,
    dense_rng: np.random.Generator | None = None,
    source: dict | None = None,
) -> dict:
    """Normalize ``mesh``, draw it, sample its surface and write the sample's files.

    Returns the manifest entry of the sample. Used for synthetic parts and imported meshes alike,
    so both are rendered and sampled exactly the same way. The dense ground truth (when
    ``settings.dense_points`` > 0) is drawn from ``dense_rng``, independent of the stored cloud.
    """
    from cad3d.data.layers import depth_layers
    from cad3d.data.render import render_drawing
    from cad3d.geometry.sampling import sample_surface

    norm_mesh, normalization = normalize_mesh(mesh)
    style = None
    if settings.style == "varied":
        from cad3d.data.style import draw_varied

        drawing = draw_varied(norm_mesh, settings.view, rng, settings.image_size, projection=settings.projection,
                              mm_per_unit=normalization["scale"])
        style = drawing.record
    else:
        cameras = cameras_for(settings.view, rng, settings.image_size, settings.projection)
        drawing = render_drawing(norm_mesh, cameras, hidden=settings.hidden)
        style = {"name": "clean"}
    points = np.asarray(sample_surface(norm_mesh, settings.num_points, rng), dtype=np.float32)  # (P, 3)
    dense = None
    if settings.dense_points > 0:
        if dense_rng is None:
            raise ValueError("dense_rng is required when settings.dense_points > 0")
        dense = np.asarray(sample_surface(norm_mesh, settings.dense_points, dense_rng), dtype=np.float16)  # (M, 3)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "stem": stem,
        "family": family,
        "parameters": params,
        "split": split,
        "cameras": [c.to_dict() for c in drawing.cameras],
        "view": settings.view,
        "hidden": style.get("hidden", settings.hidden),
        "style": style,
        "normalization": normalization,
        "num_points": int(points.shape[0]),
        "dense_points": 0 if dense is None else int(dense.shape[0]),
        "mesh": {
            "vertices": int(len(mesh.vertices)),
            "faces": int(len(mesh.faces)),
            "watertight": bool(mesh.is_watertight),
        },
    }
    if settings.view == "three_view":
        meta["projection"] = settings.projection
    if source is not None:
        meta["source"] = source
    atomic_write_bytes(out_dir / "images" / f"{stem}.png", _png_bytes(drawing.image), durable=False)
    atomic_write_bytes(out_dir / "pointclouds" / f"{stem}.npy", _npy_bytes(points), durable=False)
    atomic_write_bytes(out_dir / "depth" / f"{stem}.npy", _npy_bytes(drawing.depth.astype(np.float32)), durable=False)
    if settings.layers:  # the cameras' viewports are disjoint: their layers add up
        layers = sum(depth_layers(norm_mesh.vertices, norm_mesh.faces, cam, settings.layers) for cam in drawing.cameras)
        atomic_write_bytes(out_dir / "layers" / f"{stem}.npy", _npy_bytes(layers.astype(np.float16)), durable=False)
    if dense is not None:
        atomic_write_bytes(out_dir / "dense" / f"{stem}.npy", _npy_bytes(dense), durable=False)
    atomic_write_bytes(out_dir / "meta" / f"{stem}.json", (json_dumps(meta) + "\n").encode(), durable=False)
    return {"stem": stem, "split": split, "family": family}


@dataclass(frozen=True)
class _SynthJob:
    out_dir: str
    seed: int
    num_samples: int
    prefix: str
    settings: RenderSettings
    families: tuple | None


def synthetic_part(seed: int, index: int, families: Sequence[str] | None = None):
    """(family, mesh, params, rng) of part ``index`` of seed ``seed``, as synthesis makes it
    (before normalization); ``rng`` goes on to draw the sample's cameras and cloud."""
    from cad3d.data.parts import FAMILIES, make_part

    rng = np.random.default_rng([seed, index])
    families = families or FAMILIES
    family = families[int(rng.integers(len(families)))]
    mesh, params = make_part(family, rng)
    return family, mesh, params, rng


def _synth_one(job: _SynthJob, index: int) -> dict:
    family, mesh, params, rng = synthetic_part(job.seed, index, job.families)
    stem = stem_for(job.prefix, index, job.num_samples)
    split = split_for(job.seed, index, job.settings.split_fractions)
    entry = write_sample(
        Path(job.out_dir), stem, mesh, family=family, params=params, rng=rng, settings=job.settings, split=split,
        dense_rng=np.random.default_rng([job.seed, index, DENSE_STREAM]),
    )
    return {**entry, "index": index}


_WORKER_JOB: _SynthJob | None = None


def _init_worker(job: _SynthJob) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _worker_synth(index: int) -> dict:
    assert _WORKER_JOB is not None
    return _synth_one(_WORKER_JOB, index)


def _pool_context():
    # fork is quickest to start, but unsafe once torch (with its thread pools) is loaded.
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        return mp.get_context("fork")
    return mp.get_context("spawn")


def run_parallel(func_init, func, items: Sequence, job, workers: int, desc: str, progress: bool) -> list:
    """Map ``func`` over ``items`` in ``workers`` processes (in-process for 1), in order, with a bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="sample", disable=not progress)
    results = []
    try:
        if workers <= 1:
            func_init(job)
            for item in items:
                results.append(func(item))
                bar.update(1)
        else:
            with _pool_context().Pool(workers, initializer=func_init, initargs=(job,)) as pool:
                chunk = max(1, min(8, len(items) // (workers * 8) or 1))
                for res in pool.imap(func, items, chunksize=chunk):
                    results.append(res)
                    bar.update(1)
    finally:
        bar.close()
    return results


def manifest_name(shard: tuple[int, int] | None) -> str:
    return MANIFEST if shard is None else f"manifest_shard_{shard[0]}_of_{shard[1]}.json"


def write_manifest(out_dir: Path, entries: list[dict], *, shard, info: dict, name: str | None = None) -> Path:
    counts = {s: sum(e["split"] == s for e in entries) for s in SPLITS}
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **info, "shard": list(shard) if shard else None,
                "counts": counts, "samples": sorted(entries, key=lambda e: e["stem"])}
    path = out_dir / (name or manifest_name(shard))
    atomic_write_bytes(path, (json_dumps(manifest) + "\n").encode(), durable=False)
    return path


def prepare_output(out_dir: Path, settings: RenderSettings) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"{out_dir}: exists and is not a folder")
    for sub in SUBDIRS:
        if sub != "dense" or settings.dense_points > 0:  # `data check` expects dense/ to be complete
            (out_dir / sub).mkdir(parents=True, exist_ok=True)


def create_synthetic_training_data(
    output_dir: str | os.PathLike = "training_data/diffusion_synthetic",
    num_samples: int = 500,
    *,
    seed: int = 0,
    view: str = "iso",
    num_points: int = 4096,
    image_size: int = 256,
    hidden: str = "none",
    dense_points: int = DENSE_POINTS,
    layers: int = DEFAULT_LAYERS,
    projection: str = DEFAULT_PROJECTION,
    style: str = "clean",
    workers: int = 1,
    shard: tuple[int, int] | str | None = None,
    families: Iterable[str] | None = None,
    prefix: str = "synthetic",
    progress: bool = True,
) -> Path:
    """Generate ``num_samples`` paired drawings and point clouds into ``output_dir``.

    Same ``seed`` => byte-identical files, whatever ``workers`` is. ``shard=(i, n)`` (or "i/n")
    makes samples ``k`` with ``k % n == i`` and writes ``manifest_shard_i_of_n.json``; the shards
    of one seed together equal the unsharded dataset. Returns the manifest path.
    """
    from cad3d.data.parts import ALL_FAMILIES, FAMILIES

    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    shard = parse_shard(shard) if isinstance(shard, str) else (tuple(shard) if shard is not None else None)
    fams = tuple(families) if families else None
    unknown = sorted(set(fams or ()) - set(ALL_FAMILIES))
    if unknown:
        raise ValueError(f"unknown part families {unknown}; known: {list(ALL_FAMILIES)}")
    settings = RenderSettings(view=view, num_points=num_points, image_size=image_size, hidden=hidden,
                              dense_points=dense_points, layers=layers, projection=projection, style=style)
    out_dir = Path(output_dir)
    prepare_output(out_dir, settings)
    indices = list(range(num_samples)) if shard is None else list(range(shard[0], num_samples, shard[1]))
    job = _SynthJob(str(out_dir), int(seed), int(num_samples), prefix, settings, fams)
    desc = "synth" if shard is None else f"synth {shard[0]}/{shard[1]}"
    entries = run_parallel(_init_worker, _worker_synth, indices, job, min(workers, max(1, len(indices))), desc, progress)
    info = {
        "source": "synthetic",
        "seed": int(seed),
        "num_samples": int(num_samples),
        "prefix": prefix,
        "families": list(fams or FAMILIES),
        "settings": {**asdict(settings), "split_fractions": list(settings.split_fractions)},
    }
    path = write_manifest(out_dir, entries, shard=shard, info=info)
    log.info("wrote %d samples to %s (%s)", len(entries), out_dir, path.name)
    return path
