"""Converting files and folders of drawings into an output folder (what ``cad3d convert`` runs):
every bad input is reported with its cause while the others go on; nothing partial is written;
two inputs never write the same output (``d/x.png`` and ``d/x.jpg`` give ``x`` and ``x_jpg``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cad3d.conversion.converter import HybridCAD3DConverter
from cad3d.conversion.drawing import collect_inputs, read_drawing
from cad3d.conversion.outputs import write_result
from cad3d.errors import ConversionError


@dataclass
class ConvertReport:
    results: list[dict] = field(default_factory=list)  # input, outputs, method, trained, seconds, renamed
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, why)


def convert_files(converter: HybridCAD3DConverter, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  method: str = "auto", fmt: str | tuple[str, ...] = "ply", num_points: int | None = None,
                  steps: int = 50, guidance: float | None = None, batch_size: int = 16, seed: int = 0,
                  preview: bool = True, progress: bool = True) -> ConvertReport:
    """Convert files and folders of drawings into ``out_dir`` (``<name>.<fmt>`` for one format or
    several, and a preview).

    Each bad input is recorded in ``report.failed`` with its cause and the others go on; nothing
    partial is ever written. Drawings are read first, then converted ``batch_size`` at a time.
    """
    from tqdm.auto import tqdm

    report = ConvertReport()
    paths, folder_errors = collect_inputs(list(inputs))
    paths = list(dict.fromkeys(paths))  # the same file given twice is converted once
    stems = output_stems(paths)
    report.failed.extend((str(p), why) for p, why in folder_errors)
    chosen = converter.resolve_method(method)  # an unknown or unavailable method fails here, before any reading
    readable = []
    for p in paths:
        try:
            readable.append((p, read_drawing(p)))
        except ConversionError as exc:
            report.failed.append((str(p), str(exc)))
    bar = tqdm(total=len(readable), desc=f"convert ({chosen})", unit="drawing", disable=not progress or len(readable) < 2)
    for start in range(0, len(readable), batch_size):
        chunk = readable[start:start + batch_size]
        try:
            results = converter.convert_batch([img for _, img in chunk], method, num_points=num_points, steps=steps,
                                              guidance=guidance, seed=seed)
        except ConversionError as exc:
            report.failed.extend((str(p), f"{p}: {exc}") for p, _ in chunk)
            bar.update(len(chunk))
            continue
        for (p, img), res in zip(chunk, results):
            stem = stems[p]
            try:
                outputs = write_result(res, Path(out_dir), stem, fmt, drawing=img, preview=preview)
            except ConversionError as exc:
                report.failed.append((str(p), str(exc)))
                continue
            report.results.append({"input": str(p), "outputs": outputs, "method": res.method, "trained": res.trained,
                                   "weights": res.weights, "seconds": res.seconds, "renamed": stem != p.stem})
        bar.update(len(chunk))
    bar.close()
    return report


def output_stems(paths: Sequence[Path]) -> dict[Path, str]:
    """A distinct output name per input (compared case-insensitively, as some filesystems do):
    its stem, else ``stem_<suffix>``, else ``<folder>_stem[_<suffix>]``, else a number. Inputs
    are named in order, so the first ``x.*`` keeps ``x``."""
    used: set[str] = set()
    out: dict[Path, str] = {}
    for p in paths:
        ext = p.suffix.lstrip(".").lower()
        options = [p.stem, f"{p.stem}_{ext}", f"{p.parent.name}_{p.stem}", f"{p.parent.name}_{p.stem}_{ext}"]
        name, n = next((o for o in options if o.casefold() not in used), None), 1
        while name is None:
            n += 1
            name = f"{p.stem}_{n}" if f"{p.stem}_{n}".casefold() not in used else None
        used.add(name.casefold())
        out[p] = name
    return out
