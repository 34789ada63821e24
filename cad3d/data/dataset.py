"""Reading datasets: validated file loaders, the sample index, and `CAD2D3DDataset`.

Every loader raises `DatasetError` naming the file and the cause, and nothing else, whatever the
bytes on disk (`cad3d.data.files`); `cad3d data check` runs the same loaders over every file and
reports all problems at once. Manifest stems are plain file names: no sample is read from outside
its dataset folder.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cad3d.data.files import describe, plain_stem, read_json, read_npy
from cad3d.data.synth import FORMAT_VERSION, MANIFEST, SPLITS
from cad3d.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png",)
# Decoded size cap, checked from the header before decoding: an 8000x8000 drawing.
MAX_DRAWING_PIXELS = 64_000_000
# Raster formats a drawing may be in; Pillow's other plugins (EPS runs Ghostscript; PSD, FITS and
# font formats have had decoder advisories) are never reached from a drawing file.
DRAWING_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")


def load_drawing(path: Path, image_size: int | None = None) -> np.ndarray:
    """A drawing as (H, W) float32 in [0, 1] (1 = white paper), padded with paper to a square
    (centred) when it is not one, then resized to ``image_size``.

    Memory stays bounded by the file's own pixel count (at most `MAX_DRAWING_PIXELS`) and the
    output: an elongated drawing is shrunk before it is padded, never padded to its long side.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; the cap below turns that into an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=DRAWING_FORMATS)
        with im:
            w, h = im.size
            if w < 1 or h < 1:
                raise DatasetError(f"{path}: empty image ({w}x{h} pixels)")
            if w * h > MAX_DRAWING_PIXELS:
                raise DatasetError(f"{path}: image too large ({w}x{h} pixels; at most {MAX_DRAWING_PIXELS:,})")
            side = image_size or max(w, h)
            if image_size is None and side * side > MAX_DRAWING_PIXELS:
                raise DatasetError(f"{path}: image too elongated to pad to a square ({w}x{h} pixels)")
            im.load()
            if im.mode not in ("L", "RGB", "RGBA", "P", "I;16", "I", "LA", "1"):
                raise DatasetError(f"{path}: unsupported image mode {im.mode}")
            if im.mode in ("I;16", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / max(float(arr.max()), 1.0)
                im = Image.fromarray((arr * 255).astype(np.uint8), mode="L")
            elif im.mode in ("RGBA", "LA", "P"):
                # Transparent paper is white paper.
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba).convert("L")
            else:
                im = im.convert("L")
            if im.size != (side, side):
                if max(w, h) != side:
                    # Scale the long side to the output first, keeping the proportions.
                    scale = side / max(w, h)
                    im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
                # Pad with paper to a square, centred, so the drawing keeps its proportions.
                square = Image.new("L", (side, side), 255)
                square.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
                im = square
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing drawing") from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: image too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: corrupt or unreadable image ({exc})") from None
    return arr


def load_points(path: Path) -> np.ndarray:
    """A point cloud (N, 3) float32, finite, N >= 1."""
    return _checked_cloud(path, read_npy(path, "point cloud"), "point cloud")


def _checked_cloud(path: Path, arr: np.ndarray, what: str) -> np.ndarray:
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DatasetError(f"{path}: {what} must have shape (N, 3), got {arr.shape}")
    if arr.shape[0] == 0:
        raise DatasetError(f"{path}: {what} is empty")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: {what} contains NaN or infinite values")
    return arr.astype(np.float32, copy=False)


_warned_sparse: set[str] = set()


def load_dense_points(root: str | os.PathLike, stem: str, *, fallback: bool = True) -> np.ndarray:
    """The dense ground truth of sample ``stem`` of dataset ``root``: (M, 3) float32 surface
    samples in the normalized frame of its cloud (``dense/<stem>.npy``, M = 32768 by default).

    Datasets made before the dense ground truth existed (format 1, or ``--dense-points 0``) have
    no ``dense/`` file: with ``fallback`` the stored cloud is returned instead and a warning says
    so once per dataset (its F-scores are then capped by the cloud's own sparsity); without it,
    DatasetError.
    """
    root = Path(root)
    stem = plain_stem(stem, str(root))
    path = root / "dense" / f"{stem}.npy"
    if not path.exists():
        if not fallback:
            raise DatasetError(f"{path}: missing dense ground truth (re-create the dataset to get one)")
        if str(root) not in _warned_sparse:
            _warned_sparse.add(str(root))
            log.warning("%s: no dense ground truth (dense/); scoring against the stored point clouds, "
                        "whose spacing caps F-scores (re-create the dataset for honest scores)", root)
        return load_points(root / "pointclouds" / f"{stem}.npy")
    return _checked_cloud(path, read_npy(path, "dense ground truth"), "dense ground truth")


def load_depth(path: Path) -> np.ndarray:
    """A depth map (H, W) float32, finite, >= 0 (0 = background)."""
    arr = read_npy(path, "depth map")
    if arr.ndim != 2:
        raise DatasetError(f"{path}: depth map must have shape (H, W), got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise DatasetError(f"{path}: depth map contains NaN, infinite or negative values")
    return arr.astype(np.float32, copy=False)


def load_layers(path: Path) -> np.ndarray:
    """Layered depth maps (K, H, W) float32 (see `cad3d.data.layers`), finite, >= 0."""
    arr = read_npy(path, "layered depth maps (datasets made before layers/ have none)")
    if arr.ndim != 3:
        raise DatasetError(f"{path}: layered depth must have shape (K, H, W), got {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise DatasetError(f"{path}: layered depth contains NaN, infinite or negative values")
    return arr


def load_meta(path: Path) -> dict:
    meta = read_json(path, "metadata")
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: metadata must be a JSON object")
    return meta


def load_cameras(path: Path) -> list:
    """The cameras recorded in metadata file ``path`` (a list of `OrthoCamera`, maybe empty)."""
    from cad3d.geometry.camera import OrthoCamera

    cams = load_meta(path).get("cameras", [])
    if not isinstance(cams, list):
        raise DatasetError(f"{path}: 'cameras' must be a list, got {describe(cams)}")
    try:
        cameras = [OrthoCamera.from_dict(c) for c in cams]
        for cam in cameras:
            parts = {"rotation": (3, 3), "eye": (3,), "principal": (2,), "image_size": (2,), "viewport": (4,)}
            for name, shape in parts.items():
                value = np.asarray(getattr(cam, name), dtype=np.float64)
                if value.shape != shape or not np.isfinite(value).all():
                    raise ValueError(f"{name} must be {shape} finite numbers, got {describe(getattr(cam, name))}")
            if not (np.isfinite(cam.scale) and cam.scale > 0) or min(cam.image_size) < 1:
                raise ValueError("scale and image size must be positive")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise DatasetError(f"{path}: invalid camera ({type(exc).__name__}: {exc})") from None
    return cameras


@dataclass(frozen=True)
class SampleRecord:
    stem: str
    split: str | None
    family: str | None
    image: Path
    points: Path
    depth: Path | None
    meta: Path | None
    dense: Path | None = None


def _manifest_entries(path: Path) -> tuple[list[dict], list[str]]:
    """(valid entries, problems with the others) of one manifest; DatasetError when the manifest
    as a whole is unusable."""
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: corrupt manifest (a JSON object expected, got {type(manifest).__name__})")
    version = manifest.get("version", 1)
    if type(version) is not int or version < 1:
        raise DatasetError(f"{path}: corrupt manifest (version {describe(version)})")
    if version > FORMAT_VERSION:
        raise DatasetError(f"{path}: dataset format {version} is newer than this cad3d reads "
                           f"({FORMAT_VERSION}); update cad3d")
    samples = manifest.get("samples")
    if not isinstance(samples, list):
        raise DatasetError(f"{path}: corrupt manifest ('samples' must be a list, got {describe(samples)})")
    entries, problems = [], []
    for k, entry in enumerate(samples):
        where = f"{path}: sample {k}"
        try:
            if not isinstance(entry, dict):
                raise DatasetError(f"{where}: entry must be a JSON object, got {describe(entry)}")
            plain_stem(entry.get("stem"), where)
            if entry.get("split") is not None and entry["split"] not in SPLITS:
                raise DatasetError(f"{where}: split must be one of {SPLITS}, got {describe(entry['split'])}")
            if entry.get("family") is not None and not isinstance(entry["family"], str):
                raise DatasetError(f"{where}: family must be a string, got {describe(entry['family'])}")
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        entries.append(entry)
    return entries, problems


def read_manifests(data_dir: Path, problems: list | None = None) -> list[dict] | None:
    """Entries of manifest.json and every manifest_shard_*.json, merged; None without any.

    The first problem raises DatasetError; with a ``problems`` list, every problem is appended to
    it as (kind, message) instead and the usable entries are returned.
    """
    paths = sorted(Path(data_dir).glob("manifest*.json"))
    if not paths:
        return None

    def report(kind: str, message: str) -> None:
        if problems is None:
            raise DatasetError(message)
        problems.append((kind, message))

    merged: dict[str, dict] = {}
    for path in paths:
        try:
            entries, bad = _manifest_entries(path)
        except DatasetError as exc:
            report("corrupt manifest", str(exc))
            continue
        for message in bad:
            report("invalid manifest entry", message)
        for entry in entries:
            stem = entry["stem"]
            if stem in merged and merged[stem] != entry:
                report("corrupt manifest", f"{path}: sample {stem} disagrees with another manifest")
                continue
            merged[stem] = entry
    return [merged[s] for s in sorted(merged)]


def index_dataset(data_dir: str | os.PathLike, split: str | None = None) -> list[SampleRecord]:
    """The samples of a dataset folder, paired by stem, optionally of one split.

    With a manifest, its entries define the samples (and splits); without one (a folder of
    images/ and pointclouds/ made by other tools) every paired stem is a sample and asking for
    a split is an error. A drawing without its cloud (or the reverse) is an error naming it.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: dataset folder does not exist")
    images_dir, points_dir = data_dir / "images", data_dir / "pointclouds"
    for d in (images_dir, points_dir):
        if not d.is_dir():
            raise DatasetError(f"{d}: missing folder (a dataset has images/ and pointclouds/)")
    if split is not None and split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    depth_dir, meta_dir = data_dir / "depth", data_dir / "meta"
    entries = read_manifests(data_dir)
    if entries is None:
        if split is not None:
            raise DatasetError(f"{data_dir}: no {MANIFEST}, so there is no '{split}' split (use split=None)")
        image_stems = {p.stem for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
        point_stems = {p.stem for p in points_dir.glob("*.npy")}
        for stem in sorted(image_stems - point_stems):
            raise DatasetError(f"{images_dir / (stem + '.png')}: no partner point cloud {points_dir / (stem + '.npy')}")
        for stem in sorted(point_stems - image_stems):
            raise DatasetError(f"{points_dir / (stem + '.npy')}: no partner drawing {images_dir / (stem + '.png')}")
        entries = [{"stem": s, "split": None, "family": None} for s in sorted(image_stems)]
    records = []
    for e in entries:
        if split is not None and e.get("split") != split:
            continue
        stem = e["stem"]
        dense = data_dir / "dense" / f"{stem}.npy"
        rec = SampleRecord(
            stem=stem,
            split=e.get("split"),
            family=e.get("family"),
            image=images_dir / f"{stem}.png",
            points=points_dir / f"{stem}.npy",
            depth=(depth_dir / f"{stem}.npy") if (depth_dir / f"{stem}.npy").exists() else None,
            meta=(meta_dir / f"{stem}.json") if (meta_dir / f"{stem}.json").exists() else None,
            dense=dense if dense.exists() else None,
        )
        if not rec.image.exists():
            raise DatasetError(f"{rec.image}: missing drawing of sample {stem}")
        if not rec.points.exists():
            raise DatasetError(f"{rec.points}: missing point cloud of sample {stem}")
        records.append(rec)
    if not records:
        where = f"split '{split}' of {data_dir}" if split else str(data_dir)
        raise DatasetError(f"{where}: no samples")
    return records


def choose_points(points: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """``num_points`` rows of ``points`` (N, 3): a random subset, or with repetition if N is smaller."""
    n = points.shape[0]
    idx = rng.permutation(n)[:num_points] if n >= num_points else rng.integers(0, n, size=num_points)
    return points[idx]


class CAD2D3DDataset(torch.utils.data.Dataset):
    """Pairs of (drawing, point cloud) from a dataset folder.

    ``dataset[i]`` is ``(image, points)``: image (3, H, W) float32 in [0, 1] (grayscale repeated
    over RGB, 1 = white paper), points (num_points, 3) float32 in the normalized object frame.

    Augmentation (``augment=True``), seeded by ``(seed, epoch, i)`` so it is reproducible and
    the same whatever the number of loader workers (call ``set_epoch`` each epoch):

    * a mirror of single-view drawings about the optical axis, applied to the cloud too (the
      recorded camera says which world plane that is), so drawing and cloud stay consistent;
    * a fresh random subset of the ground-truth surface samples;
    * pen changes that leave the geometry alone: line thickening and faint paper noise.

    Without augmentation the subset of points is fixed per sample.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        image_size: int = 256,
        num_points: int = 2048,
        augment: bool = True,
        split: str | None = None,
        seed: int = 0,
    ):
        self.data_dir = Path(data_dir)
        self.image_size = int(image_size)
        self.num_points = int(num_points)
        self.augment = bool(augment)
        self.split = split
        self.seed = int(seed)
        self.epoch = 0
        self.records = index_dataset(self.data_dir, split)
        families = sorted({r.family for r in self.records if r.family})
        self.families = families

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def meta(self, i: int) -> dict:
        rec = self.records[i]
        if rec.meta is None:
            raise DatasetError(f"{self.data_dir}: sample {rec.stem} has no meta/{rec.stem}.json")
        return load_meta(rec.meta)

    def depth(self, i: int) -> np.ndarray:
        rec = self.records[i]
        if rec.depth is None:
            raise DatasetError(f"{self.data_dir}: sample {rec.stem} has no depth/{rec.stem}.npy")
        return load_depth(rec.depth)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.records[i]
        image = load_drawing(rec.image, self.image_size)  # (H, W)
        cloud = load_points(rec.points)  # (N, 3)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, cloud = self._augment(i, image, cloud, rng)
        else:
            rng = np.random.default_rng([self.seed, i])
        points = choose_points(cloud, self.num_points, rng)  # (P, 3)
        img = torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0).expand(3, -1, -1).contiguous()
        return img, torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))

    def _augment(self, i: int, image: np.ndarray, cloud: np.ndarray, rng: np.random.Generator):
        if rng.random() < 0.5:
            mirrored = self._mirror(i, image, cloud)
            if mirrored is not None:
                image, cloud = mirrored
        if rng.random() < 0.3:
            # Thicker pen: a 3x3 minimum filter darkens the pixels around each line.
            padded = np.pad(image, 1, mode="edge")
            h, w = image.shape
            image = np.min([padded[r : r + h, c : c + w] for r in range(3) for c in range(3)], axis=0)
        if rng.random() < 0.5:
            image = np.clip(image - rng.uniform(0, 0.08) * rng.random(image.shape, dtype=np.float32), 0.0, 1.0)
        return image.astype(np.float32, copy=False), cloud

    def _mirror(self, i: int, image: np.ndarray, cloud: np.ndarray):
        rec = self.records[i]
        if rec.meta is None:
            return None
        cams = load_cameras(rec.meta)
        if len(cams) != 1:
            return None  # a three-view sheet would change its layout
        cam = cams[0]
        h, w = cam.image_size
        if abs(cam.principal[0] - w / 2.0) > 1e-6:
            return None
        right = cam.R[0]  # (3,) world direction of image columns
        # Flipping columns about the centre maps c_x -> -c_x: reflect the cloud in the plane
        # through the eye with normal `right` (eye . right = target . right = 0 for our cameras).
        offset = float(np.dot(cam.eye_array, right))
        d = cloud.astype(np.float64) @ right - offset  # (N,)
        mirrored = cloud - 2.0 * d[:, None] * right[None, :]
        return image[:, ::-1].copy(), mirrored.astype(np.float32)


def part_identity(record: SampleRecord) -> str:
    """What makes a sample's part that part: its family, parameters and source (hash of the
    canonical JSON), the same for the same geometry whatever the dataset, its size or the stem."""
    import hashlib
    import json

    meta = load_meta(record.meta) if record.meta is not None else {}
    key = {k: meta.get(k) for k in ("family", "parameters", "source")}
    if not any(key.values()):  # no metadata: the stem is all there is
        key = {"stem": record.stem}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
