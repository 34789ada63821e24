"""Reading datasets: validated file loaders, the sample index, and `CAD2D3DDataset`.

Every loader raises `DatasetError` naming the file and the cause; `cad3d data check` runs the
same loaders over every file and reports all problems at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cad3d.data.synth import MANIFEST, SPLITS
from cad3d.errors import DatasetError

IMAGE_EXTENSIONS = (".png",)


def load_drawing(path: Path, image_size: int | None = None) -> np.ndarray:
    """A drawing as (H, W) float32 in [0, 1] (1 = white paper), padded with paper to a square
    (centred) when it is not one, then resized to ``image_size``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
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
            if im.size[0] != im.size[1]:
                # Pad with paper to a square, centred, so the drawing keeps its proportions.
                side = max(im.size)
                square = Image.new("L", (side, side), 255)
                square.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
                im = square
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing drawing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: corrupt or unreadable image ({exc})") from None
    if arr.size == 0:
        raise DatasetError(f"{path}: empty image")
    return arr


def load_points(path: Path) -> np.ndarray:
    """A point cloud (N, 3) float32, finite, N >= 1."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing point cloud") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: corrupt or unreadable .npy ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise DatasetError(f"{path}: point cloud must have shape (N, 3), got {arr.shape}")
    if arr.shape[0] == 0:
        raise DatasetError(f"{path}: point cloud is empty")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DatasetError(f"{path}: point cloud must be floating point, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: point cloud contains NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def load_depth(path: Path) -> np.ndarray:
    """A depth map (H, W) float32, finite, >= 0 (0 = background)."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing depth map") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: corrupt or unreadable .npy ({exc})") from None
    if arr.ndim != 2:
        raise DatasetError(f"{path}: depth map must have shape (H, W), got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise DatasetError(f"{path}: depth map contains NaN, infinite or negative values")
    return arr.astype(np.float32, copy=False)


def load_layers(path: Path) -> np.ndarray:
    """Layered depth maps (K, H, W) float32 (see `cad3d.data.layers`), finite, >= 0."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing layered depth maps (datasets made before layers/ have none)") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: corrupt or unreadable .npy ({exc})") from None
    if arr.ndim != 3:
        raise DatasetError(f"{path}: layered depth must have shape (K, H, W), got {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise DatasetError(f"{path}: layered depth contains NaN, infinite or negative values")
    return arr


def load_meta(path: Path) -> dict:
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing metadata") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{path}: corrupt metadata JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: metadata must be a JSON object")
    return meta


@dataclass(frozen=True)
class SampleRecord:
    stem: str
    split: str | None
    family: str | None
    image: Path
    points: Path
    depth: Path | None
    meta: Path | None


def read_manifests(data_dir: Path) -> list[dict] | None:
    """Entries of manifest.json and every manifest_shard_*.json, merged; None without any."""
    paths = sorted(data_dir.glob("manifest*.json"))
    if not paths:
        return None
    merged: dict[str, dict] = {}
    for path in paths:
        try:
            manifest = json.loads(path.read_text())
            samples = manifest["samples"]
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: corrupt manifest ({exc})") from None
        for entry in samples:
            stem = entry.get("stem") if isinstance(entry, dict) else None
            if not stem:
                raise DatasetError(f"{path}: manifest entry without a stem: {entry!r}")
            if stem in merged and merged[stem] != entry:
                raise DatasetError(f"{path}: sample {stem} disagrees with another manifest")
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
        rec = SampleRecord(
            stem=stem,
            split=e.get("split"),
            family=e.get("family"),
            image=images_dir / f"{stem}.png",
            points=points_dir / f"{stem}.npy",
            depth=(depth_dir / f"{stem}.npy") if (depth_dir / f"{stem}.npy").exists() else None,
            meta=(meta_dir / f"{stem}.json") if (meta_dir / f"{stem}.json").exists() else None,
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
        cams = load_meta(rec.meta).get("cameras") or []
        if len(cams) != 1:
            return None  # a three-view sheet would change its layout
        from cad3d.geometry.camera import OrthoCamera

        cam = OrthoCamera.from_dict(cams[0])
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

    meta = load_meta(record.meta) if record.meta is not None else {}
    key = {k: meta.get(k) for k in ("family", "parameters", "source")}
    if not any(key.values()):  # no metadata: the stem is all there is
        key = {"stem": record.stem}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
