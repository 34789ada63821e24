"""Every checkpoint of every model stays within 5% of what it must hold: weights, optimizer state
and EMA weights (bulky run state such as the diffusion replay buffer lives in one file per run).

A file also has a fixed cost per tensor (zip entry, 64-byte alignment, pickled key: < 400 bytes)
and metadata/RNG state (< 32 KiB); for the smallest tiny model (depth, 0.35 MB of weights) that
alone is ~7%, so the bound is 5% or that fixed cost, whichever is larger."""

from __future__ import annotations

import pytest
import torch

from cad3d.training.engine import train_model
from cad3d.training.inspect import weight_bytes
from cad3d.training.tasks.base import get_task_class


def count_tensors(value) -> int:
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, dict):
        return sum(count_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(count_tensors(v) for v in value)
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vae", "vit", "diffusion", "depth"])
def test_checkpoint_bytes_within_5_percent_of_weights_optimizer_and_ema(tiny_dataset, tmp_path, model):
    overrides = {"export_onnx": False} if model == "depth" else None
    train_model(model, tiny_dataset, preset="tiny", out_dir=tmp_path / model, epochs=2, progress=False, device="cpu",
                task_overrides=overrides)
    schema = get_task_class(model).schema
    files = sorted((tmp_path / model).glob("*.pth"))
    assert files
    for path in files:
        payload = torch.load(path, weights_only=True, map_location="cpu")
        budget = weight_bytes(payload, schema)
        assert budget["optimizer"] > budget["weights"] > 0, path.name
        size = path.stat().st_size
        fixed = 400 * count_tensors(payload) + 32 * 1024
        assert size - budget["total"] <= max(0.05 * budget["total"], fixed), f"{path.name}: {size} bytes, {budget}"
    if model == "diffusion":  # the replay buffer: one grey file for the run, that of the newest checkpoint
        from cad3d.training.run_files import load_run_state

        states = list((tmp_path / model).glob("*.state"))
        last = torch.load(tmp_path / model / schema.last_file, weights_only=True)
        assert [p.name for p in states] == [last["cad3d_run_state"]["file"]]
        older = tmp_path / model / schema.epoch_name(1)
        with pytest.warns(UserWarning, match="replaced"):
            state = load_run_state(older, torch.load(older, weights_only=True), schema.run_state_file)
        assert state["replay_buffer"]["images"].dtype == torch.uint8 and state["replay_buffer"]["images"].shape[1] == 1
