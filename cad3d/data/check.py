"""`cad3d data check`: every problem of a dataset folder, with counts (nothing stops at the first)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cad3d.data.dataset import load_cameras, load_dense_points, load_depth, load_drawing, load_points, read_manifests
from cad3d.errors import DatasetError


@dataclass
class CheckReport:
    data_dir: Path
    num_samples: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)

    def add(self, kind: str, message: str) -> None:
        self.problems.append((kind, message))

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(k for k, _ in self.problems).items()))


def _kind(message: str) -> str:
    for needle, kind in (
        ("missing", "missing file"),
        ("no partner", "missing partner"),
        ("too large", "oversized file"),
        ("too elongated", "oversized file"),
        ("corrupt", "corrupt file"),
        ("NaN", "non-finite values"),
        ("shape", "wrong shape"),
        ("empty", "empty file"),
    ):
        if needle in message:
            return kind
    return "invalid file"


def check_dataset(data_dir: str | os.PathLike) -> CheckReport:
    """Load every file of the dataset with the same loaders training uses; collect all problems."""
    data_dir = Path(data_dir)
    report = CheckReport(data_dir)
    if not data_dir.is_dir():
        report.add("missing folder", f"{data_dir}: dataset folder does not exist")
        return report
    folders = {name: data_dir / name for name in ("images", "pointclouds", "depth", "meta", "dense")}
    for name in ("images", "pointclouds"):
        if not folders[name].is_dir():
            report.add("missing folder", f"{folders[name]}: missing folder")
    if not report.ok:
        return report

    def stems(folder: Path, suffix: str) -> set[str]:
        return {p.stem for p in folder.glob(f"*{suffix}")} if folder.is_dir() else set()

    images, clouds = stems(folders["images"], ".png"), stems(folders["pointclouds"], ".npy")
    depths, metas = stems(folders["depth"], ".npy"), stems(folders["meta"], ".json")
    denses = stems(folders["dense"], ".npy")
    manifest_problems: list[tuple[str, str]] = []
    entries = read_manifests(data_dir, problems=manifest_problems)
    for kind, message in manifest_problems:
        report.add(kind, message)
    listed = {e["stem"] for e in entries} if entries is not None else images | clouds
    for stem in sorted(images - clouds):
        report.add("missing partner", f"{folders['images'] / (stem + '.png')}: no partner point cloud")
    for stem in sorted(clouds - images):
        report.add("missing partner", f"{folders['pointclouds'] / (stem + '.npy')}: no partner drawing")
    if entries is not None:
        for stem in sorted(listed - (images & clouds)):
            report.add("missing file", f"{data_dir}: manifest lists {stem} but its drawing or cloud is missing")
        # An unreadable manifest may have listed them: unlisted samples are only known when none is.
        readable = not any(kind == "corrupt manifest" for kind, _ in manifest_problems)
        for stem in sorted((images & clouds) - listed) if readable else ():
            report.add("unlisted sample", f"{data_dir}: sample {stem} is in no manifest")
    if folders["depth"].is_dir():
        for stem in sorted((images & clouds) - depths):
            report.add("missing file", f"{folders['depth'] / (stem + '.npy')}: missing depth map")
    if folders["meta"].is_dir():
        for stem in sorted((images & clouds) - metas):
            report.add("missing file", f"{folders['meta'] / (stem + '.json')}: missing metadata")
    if folders["dense"].is_dir():  # datasets made before dense ground truth existed have none
        for stem in sorted((images & clouds) - denses):
            report.add("missing file", f"{folders['dense'] / (stem + '.npy')}: missing dense ground truth")

    from tqdm.auto import tqdm

    all_stems = sorted(images | clouds)
    report.num_samples = len(images & clouds)
    for stem in tqdm(all_stems, desc="check", unit="sample", disable=len(all_stems) < 200):
        image_shape = None
        checks = []
        if stem in images:
            checks.append(("image", lambda: load_drawing(folders["images"] / f"{stem}.png")))
        if stem in clouds:
            checks.append(("points", lambda: load_points(folders["pointclouds"] / f"{stem}.npy")))
        if stem in depths:
            checks.append(("depth", lambda: load_depth(folders["depth"] / f"{stem}.npy")))
        if stem in denses:
            checks.append(("dense", lambda: load_dense_points(data_dir, stem, fallback=False)))
        if stem in metas:
            checks.append(("meta", lambda: load_cameras(folders["meta"] / f"{stem}.json")))
        for what, load in checks:
            try:
                value = load()
            except DatasetError as exc:
                report.add(_kind(str(exc)), str(exc))
                continue
            if what == "image":
                image_shape = value.shape
            elif what == "depth" and image_shape is not None and value.shape != image_shape:
                report.add(
                    "wrong shape",
                    f"{folders['depth'] / (stem + '.npy')}: depth map {value.shape} does not match drawing {image_shape}",
                )
    return report


def format_report(report: CheckReport) -> str:
    lines = [f"{report.data_dir}: {report.num_samples} paired samples"]
    if report.ok:
        lines.append("no problems found")
        return "\n".join(lines)
    counts = report.counts()
    lines.append(f"{len(report.problems)} problem(s): " + ", ".join(f"{k}: {n}" for k, n in counts.items()))
    for kind in counts:
        lines.append(f"[{kind}]")
        lines.extend(f"  {msg}" for k, msg in report.problems if k == kind)
    return "\n".join(lines)
