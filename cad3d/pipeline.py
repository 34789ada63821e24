"""The demo pipeline behind `make demo`: every stage that is built, on a small default."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    data_dir: Path
    preview: Path
    num_samples: int
    artefacts: dict[str, Path] = field(default_factory=dict)


def run_demo(out_dir: str | os.PathLike = ".", *, num_samples: int = 64, workers: int | None = None,
             seed: int = 0, progress: bool = True) -> DemoResult:
    """Synthesize a small dataset under ``out_dir/training_data``, check it, and preview it."""
    from cad3d.data.check import check_dataset, format_report
    from cad3d.data.preview import contact_sheet
    from cad3d.data.synth import create_synthetic_training_data
    from cad3d.errors import DatasetError

    out_dir = Path(out_dir)
    data_dir = out_dir / "training_data" / "diffusion_synthetic"
    workers = workers or min(os.cpu_count() or 1, 8)
    log.info("1/3 synthesizing %d samples into %s", num_samples, data_dir)
    create_synthetic_training_data(data_dir, num_samples, seed=seed, workers=workers, progress=progress)
    log.info("2/3 checking the dataset")
    report = check_dataset(data_dir)
    if not report.ok:
        raise DatasetError(format_report(report))
    log.info("3/3 drawing a contact sheet")
    preview = contact_sheet(data_dir, out_dir / "outputs" / "demo_dataset_preview.png", num_samples=12)
    return DemoResult(data_dir=data_dir, preview=preview, num_samples=num_samples,
                      artefacts={"dataset": data_dir, "dataset preview": preview})
