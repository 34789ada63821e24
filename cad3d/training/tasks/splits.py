"""The (train, val) datasets of a dataset folder, the same way for every task."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)


def split_datasets(data_dir, make: Callable[[Optional[str], bool], Any]) -> tuple[Any, Optional[Any]]:
    """``(make("train", True), make("val", False))`` for a folder with a manifest (``make(split,
    augment)`` builds one split's dataset); val is None when the manifest has no val sample. A
    folder without a manifest has no splits: all of it trains (``make(None, True)``), no val."""
    from cad3d.data.dataset import read_manifests

    entries = read_manifests(Path(data_dir))
    if entries is None:
        return make(None, True), None
    train = make("train", True)
    if not any(e.get("split") == "val" for e in entries):
        logger.warning("%s has no val split: training without validation", data_dir)
        return train, None
    return train, make("val", False)
