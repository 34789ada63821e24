"""What the web app does, without the web: one converter loaded once, uploads checked and
converted into every output format, example drawings, and the evaluation and training figures.

Invariants: a request never raises for a bad drawing; each drawing comes back as a
`DrawingResult` that holds either its files or the converter's one-line `ConversionError` text
(the same as `cad3d convert` prints, with the upload's temporary folder replaced by its name).
Uploads over ``max_upload_mb`` or ``max_pixels`` are refused before they are decoded. Outputs go
to a fresh folder per request under ``work_dir``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cad3d.conversion.outputs import FORMATS
from cad3d.errors import Cad3dError, ConversionError

log = logging.getLogger(__name__)

CLOUD_FORMATS = tuple(f for f in FORMATS if f != "obj")  # the OBJ mesh is written on its own (`_write_mesh`)
EXAMPLE_FAMILIES = ("l_bracket", "flange_bolt_circle", "gear", "hex_nut")


@dataclass
class AppConfig:
    """Settings of `cad3d serve` (see its --help)."""

    models_dir: str = "models"
    vit: str | None = None  # checkpoint; None = trained_models/vit/final_model.pth when it exists
    diffusion: str | None = None  # None = trained_models/diffusion/diffusion_best.pth when it exists
    refine: str | None = None  # None = trained_models/refine/refine_best.pth when it exists
    depth_model: str | None = None  # ONNX; None = the first known file in models_dir
    device: str = "auto"
    eval_dir: str = "outputs/eval"  # eval.md and eval_chart.png shown in the second tab
    runs_dir: str = "trained_models"  # training runs whose loss curves are shown
    work_dir: str | None = None  # outputs and figures; None = a temporary folder
    max_files: int = 6  # drawings per request
    max_upload_mb: float = 20.0
    max_pixels: int = 16_000_000  # a 4000x4000 drawing
    max_points: int = 16384
    num_examples: int = 3


@dataclass
class DrawingResult:
    """One drawing of a request: its files, or why it failed."""

    name: str
    error: str | None = None
    method: str | None = None
    trained: bool = False
    weights: dict = field(default_factory=dict)
    seconds: float = 0.0  # model time for this drawing
    note: str | None = None  # e.g. why there is no OBJ
    files: dict[str, str] = field(default_factory=dict)  # ply, obj, npy, glb, preview, view -> path

    def as_dict(self) -> dict:
        return {"name": self.name, "error": self.error, "method": self.method, "trained": self.trained,
                "weights": dict(self.weights), "seconds": round(self.seconds, 4), "note": self.note,
                "files": {k: Path(v).name for k, v in self.files.items()}}


class ConversionService:
    """The converter, loaded once, and everything the app's pages ask of it."""

    def __init__(self, config: AppConfig | None = None, converter=None):
        from cad3d.conversion.converter import (DEFAULT_DIFFUSION_PATH, DEFAULT_REFINE_PATH, DEFAULT_VIT_PATH,
                                                HybridCAD3DConverter, weights_path)

        self.config = config or AppConfig()
        c = self.config
        if converter is None:
            converter = HybridCAD3DConverter(
                device=c.device, vit_model_path=weights_path(c.vit, DEFAULT_VIT_PATH),
                diffusion_model_path=weights_path(c.diffusion, DEFAULT_DIFFUSION_PATH),
                depth_model_path=c.depth_model, models_dir=c.models_dir, enable_learning=False,
                refine_model_path=weights_path(c.refine, DEFAULT_REFINE_PATH))
        self.converter = converter
        if c.work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cad3d_app_")
            self.work_dir = Path(self._tmp.name)
        else:
            self._tmp = None
            self.work_dir = Path(c.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._figures: tuple[list, list] | None = None  # loss_figures, drawn on first use

    # -- choices shown in the form ----------------------------------------------------------
    def methods(self) -> list[str]:
        return ["auto", *self.converter.available_methods()]

    def describe_methods(self) -> str:
        """One line per path that can run: its weights and whether they are trained."""
        conv = self.converter
        auto = conv.resolve_method("auto")
        lines = [f"auto = **{auto}** (the best path with trained weights; a three-view sheet: its visual hull)"]
        for m in conv.available_methods():
            weights = "no weights" if m == "geometric" else f"{'trained' if conv.trained[m] else 'untrained'}: `{conv.weights.get(m)}`"
            lines.append(f"- {m}: {weights}")
        return "\n".join(lines)

    def default_points(self) -> int:
        return int(self.converter.num_points or self.converter.native_points(self.converter.resolve_method("auto")))

    def default_guidance(self) -> float:
        """The diffusion model's own guidance scale (1.0 without a diffusion model)."""
        diffusion = self.converter.diffusion
        return float(diffusion.config.guidance_scale) if diffusion is not None else 1.0

    # -- converting -----------------------------------------------------------------------------
    def check_upload(self, path: Path) -> str | None:
        """Why an upload is refused before decoding (too many bytes or pixels), else None."""
        from PIL import Image

        c = self.config
        size = path.stat().st_size if path.is_file() else 0
        if size > c.max_upload_mb * 1e6:
            return f"{path}: file too large ({size / 1e6:.1f} MB; at most {c.max_upload_mb:g} MB)"
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (OSError, Image.DecompressionBombError):
            return None  # not an image at all: read_drawing says so in its own words
        if w * h > c.max_pixels:
            return f"{path}: image too large ({w}x{h} pixels; at most {c.max_pixels:,} pixels)"
        return None

    def convert(self, paths: Sequence[str | os.PathLike], method: str = "auto", *, num_points: int | None = None,
                steps: int = 50, guidance: float | None = None, seed: int = 0) -> tuple[list[DrawingResult], str]:
        """Convert uploaded drawings into every format (`FORMATS`) plus a preview.

        Returns one `DrawingResult` per input, in input order (at most ``max_files``), and a
        one-paragraph summary. Raises nothing for bad drawings; a bad setting (an unknown method,
        too many points) is reported in the summary with no result."""
        from cad3d.conversion.batch import convert_files

        t0 = time.perf_counter()
        paths = [Path(p) for p in paths]
        c = self.config
        notes = []
        if len(paths) > c.max_files:
            notes.append(f"only the first {c.max_files} drawings were converted ({len(paths) - c.max_files} more left out)")
            paths = paths[:c.max_files]
        if not paths:
            return [], "Upload a drawing (PNG, JPG, ...) or pick an example, then press **Convert**."
        if num_points is not None and not 1 <= int(num_points) <= c.max_points:
            return [], f"points must be from 1 to {c.max_points}, got {num_points}"
        results = {p: DrawingResult(name=p.name) for p in paths}
        todo = []
        for p in paths:
            why = self.check_upload(p)
            if why:
                results[p].error = why.replace(str(p), p.name)
            else:
                todo.append(p)
        out_dir = self.work_dir / "results" / uuid.uuid4().hex[:12]
        if todo:
            try:
                report = convert_files(self.converter, todo, out_dir, method=method, fmt=CLOUD_FORMATS,
                                       num_points=int(num_points) if num_points else None, steps=int(steps),
                                       guidance=guidance, batch_size=len(todo), seed=int(seed), progress=False)
            except Cad3dError as exc:  # the request as a whole (e.g. a method that is not available)
                return [], str(exc)
            except Exception as exc:  # never a stack trace in the page; the log keeps it
                log.exception("conversion failed")
                return [], f"internal error while converting ({type(exc).__name__}: {exc})"
            for src, why in report.failed:
                p = Path(src)
                results[p].error = why.replace(src, p.name)
            for r in report.results:
                d = results[Path(r["input"])]
                d.method, d.trained, d.weights, d.seconds = r["method"], r["trained"], r["weights"], r["seconds"]
                d.files = {k: str(v) for k, v in r["outputs"].items()}
                d.files["view"], d.note = self._write_extras(Path(d.files["npy"]))
                if d.note is None:
                    d.files["obj"] = str(Path(d.files["npy"]).with_suffix(".obj"))
        done = list(results.values())
        ok = sum(d.error is None for d in done)
        summary = f"converted {ok}, failed {len(done) - ok} in {time.perf_counter() - t0:.2f} s"
        return done, "; ".join([summary, *notes])

    @staticmethod
    def _write_extras(npy: Path) -> tuple[str, str | None]:
        """Beside a cloud's .npy: ``<stem>_view.glb`` (the cloud as small markers, for the 3D
        view) and the OBJ mesh when one can be built around the cloud. Returns (view path, why
        there is no OBJ or None); the OBJ is apart from the other formats so that a scattered
        cloud still gets them."""
        import numpy as np

        from cad3d.conversion.outputs import cloud_bytes, glb_bytes
        from cad3d.io import atomic_write_bytes

        points = np.load(npy, allow_pickle=False)
        view = npy.with_name(f"{npy.stem}_view.glb")
        atomic_write_bytes(view, glb_bytes(points, marker_size=min(0.03, 0.9 / np.sqrt(len(points)))), durable=False)
        try:
            atomic_write_bytes(npy.with_suffix(".obj"), cloud_bytes(points, "obj"), durable=False)
        except ConversionError as exc:
            return str(view), f"no OBJ: {exc}"
        return str(view), None

    # -- examples and figures -------------------------------------------------------------------
    def make_examples(self) -> list[Path]:
        """A few drawings from the synthetic generator (one per family in `EXAMPLE_FAMILIES`
        as drawn by the seed), copied to ``work_dir/examples/<family>_<k>.png``."""
        from cad3d.data.dataset import index_dataset
        from cad3d.data.synth import create_synthetic_training_data

        n = self.config.num_examples
        if n < 1:
            return []
        tmp = self.work_dir / "example_data"
        create_synthetic_training_data(tmp, n, seed=1, num_points=64, image_size=256, families=EXAMPLE_FAMILIES,
                                       progress=False)
        out = self.work_dir / "examples"
        out.mkdir(exist_ok=True)
        found = []
        for k, rec in enumerate(index_dataset(tmp)):
            dst = out / f"{rec.family or 'part'}_{k + 1}.png"
            shutil.copyfile(rec.image, dst)
            found.append(dst)
        shutil.rmtree(tmp, ignore_errors=True)
        return found

    def evaluation_page(self) -> tuple[str, str | None]:
        """(eval.md text or a note where it would be, a copy of eval_chart.png or None)."""
        ev = Path(self.config.eval_dir)
        md = ev / "eval.md"
        text = md.read_text(encoding="utf-8") if md.is_file() else (
            f"No evaluation yet: `{md}` does not exist. Run `cad3d eval --data DATASET -o {ev}` and reload.")
        chart = ev / "eval_chart.png"
        if not chart.is_file():
            return text, None
        # A copy in the work folder: the page serves files from there only, wherever eval_dir is.
        shown = self.work_dir / "eval_chart.png"
        shutil.copyfile(chart, shown)
        return text, str(shown)

    def loss_figures(self, refresh: bool = False) -> tuple[list[tuple[str, str]], list[str]]:
        """Loss curves of every run under ``runs_dir`` drawn into ``work_dir/plots``:
        ([(png path, run name)], [notes on runs that could not be drawn]). Drawn once, again
        with ``refresh``."""
        from cad3d.errors import EvaluationError
        from cad3d.evaluation.curves import find_runs
        from cad3d.evaluation.plots import plot_loss_curves

        if self._figures is not None and not refresh:
            return self._figures

        root = Path(self.config.runs_dir)
        figures, notes = [], []
        for run in (find_runs(root) if root.is_dir() else []):
            name = "_".join(run.relative_to(root).parts) or run.name
            try:
                figures.append((str(plot_loss_curves(run, self.work_dir / "plots" / f"loss_{name}.png")), name))
            except EvaluationError as exc:
                notes.append(str(exc))
        if not figures and not notes:
            notes.append(f"no training runs under `{root}`")
        self._figures = (figures, notes)
        return self._figures

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
