"""Tiny registered training tasks for the engine tests (importable from subprocesses and torchrun).

`ToyTask` ("toy") regresses y = x·w with a small MLP. It uses every source of randomness the engine
must restore: dropout (global torch RNG), input noise from ``ctx.generator``, and a dataset whose
augmentation is drawn per (seed, epoch, index). The schema toys ("toy_vae", "toy_diffusion",
"toy_vit") use the seed-000 file names and keys of each model; the real models replace them.

Data folder for ``cad3d train toy --data DIR``: ``DIR/toy.json`` = {"num_train": N, "num_val": M}.
Set ``CAD3D_TASK_MODULES=toy_task`` (with tests/ on PYTHONPATH) to make the CLI know these tasks.
``TOY_SIGNAL_AT_STEP=K`` makes the toy send SIGTERM to its own process in step K (0-based
global step) — a real signal at a deterministic point.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from cad3d.errors import DatasetError
from cad3d.training.tasks.base import CheckpointSchema, StepContext, TrainTask, register_task

IN_DIM = 4


class ToyDataset(Dataset):
    """``(x (4,), y (1,))``; x is jittered per (seed, epoch, index) when ``augment``."""

    def __init__(self, num_samples: int, *, seed: int = 0, split: int = 0, augment: bool = True):
        g = torch.Generator().manual_seed(1234 + split)
        self.x = torch.randn(num_samples, IN_DIM, generator=g)
        w = torch.tensor([[0.5], [-1.0], [2.0], [0.25]])
        self.y = self.x @ w + 0.01 * torch.randn(num_samples, 1, generator=g)
        self.seed, self.augment, self.epoch = seed, augment, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.augment:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
            x = x + 0.01 * torch.randn(IN_DIM, generator=g)
        return x, self.y[i]


@dataclass
class ToyConfig:
    hidden: int = 16
    dropout: float = 0.1
    noise: float = 0.05  # input noise drawn from ctx.generator
    signal_at_step: Optional[int] = None


@register_task
class ToyTask(TrainTask):
    name = "toy"
    config_class = ToyConfig
    display_name = "Toy regressor"
    architecture = "MLP"
    schema = CheckpointSchema(
        model="toy",
        module_keys={"model": "model_state"},
        epoch_file="toy_epoch_{epoch}.pth",
        last_file="toy_last.pth",
        best_file="toy_best.pth",
        epoch_log_file="toy_epoch_log.json",
        report_file="toy_report.json",
        engine_keys={"val_loss": "val_loss", "loss_history": "loss_history"},
    )

    def __init__(self, config=None):
        super().__init__(config)
        if self.config.signal_at_step is None and os.environ.get("TOY_SIGNAL_AT_STEP"):
            self.config.signal_at_step = int(os.environ["TOY_SIGNAL_AT_STEP"])

    @classmethod
    def presets(cls):
        return {"tiny": ToyConfig(hidden=8), "full": ToyConfig()}

    @classmethod
    def engine_presets(cls):
        return {"tiny": {"epochs": 2, "batch_size": 4}, "full": {"epochs": 3}}

    def build_datasets(self, data_dir, *, seed=0):
        spec = Path(data_dir) / "toy.json"
        if not spec.is_file():
            raise DatasetError(f"{spec}: missing (the toy data description)")
        d = json.loads(spec.read_text())
        return ToyDataset(d["num_train"], seed=seed), ToyDataset(d["num_val"], seed=seed, split=1, augment=False)

    def build_modules(self):
        c = self.config
        return {"model": nn.Sequential(nn.Linear(IN_DIM, c.hidden), nn.Tanh(), nn.Dropout(c.dropout), nn.Linear(c.hidden, 1))}

    def _loss(self, modules, x, y):
        pred = modules["model"](x)  # (B, 1)
        return ((pred.float() - y) ** 2).mean()

    def training_step(self, modules, batch, ctx: StepContext):
        if self.config.signal_at_step is not None and ctx.global_step == self.config.signal_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        x, y = batch
        x = x + self.config.noise * torch.randn(x.shape, generator=ctx.generator, device=x.device)
        loss = self._loss(modules, x, y)
        return loss, {"mse": loss.detach(), "abs_mean": float(x.abs().mean())}

    def validation_step(self, modules, batch, ctx):
        x, y = batch
        return {"val_loss": float(self._loss(modules, x, y))}

    def example_batch(self, batch_size=2, generator=None):
        return torch.randn(batch_size, IN_DIM, generator=generator), torch.zeros(batch_size, 1)

    def forward_check(self, modules, batch):
        return modules["model"](batch[0])


@register_task
class ToyVAETask(ToyTask):
    """Seed-000 VAE layout: vae_epoch_N.pth each epoch, vae_best.pth, vae_epoch_log.json,
    vae_training_report.json; keys epoch, state_dict, opt, scheduler, val_loss, loss_history,
    last_parts, kl_weight."""

    name = "toy_vae"
    schema = CheckpointSchema(
        model="vae",
        module_keys={"model": "state_dict"},
        epoch_file="vae_epoch_{epoch}.pth",
        last_file="vae_last.pth",
        best_file="vae_best.pth",
        optimizer_key="opt",
        scheduler_key="scheduler",
        epoch_log_file="vae_epoch_log.json",
        report_file="vae_training_report.json",
        engine_keys={"val_loss": "val_loss", "loss_history": "loss_history"},
    )

    def __init__(self, config=None):
        super().__init__(config)
        self.kl_weight = 0.0
        self.last_parts: dict = {}

    def on_epoch_start(self, epoch, total_epochs):
        self.kl_weight = 1e-4 * epoch

    def training_step(self, modules, batch, ctx):
        loss, parts = super().training_step(modules, batch, ctx)
        self.last_parts = {"chamfer": float(loss.detach()), "kl": 0.0, "voxel": 0.0, "smooth": 0.0}
        return loss, parts

    def checkpoint_extras(self):
        return {"last_parts": dict(self.last_parts), "kl_weight": self.kl_weight}

    def load_checkpoint_extras(self, payload):
        self.last_parts = dict(payload["last_parts"])
        self.kl_weight = payload["kl_weight"]

    def epoch_log_extras(self):
        return {"kl_weight": self.kl_weight}


@register_task
class ToyDiffusionTask(ToyTask):
    """Seed-000 diffusion layout: diffusion_epoch_N.pth every N (here 2), diffusion_best.pth,
    training_report.json; keys epoch, global_step, image_encoder_state, unet_state,
    optimizer_state, scheduler_state, loss, best_loss, loss_history. Best by train loss."""

    name = "toy_diffusion"
    display_name = "3D Diffusion Model"
    architecture = "DDPM with U-Net + PointNet++"
    schema = CheckpointSchema(
        model="diffusion",
        module_keys={"image_encoder": "image_encoder_state", "unet": "unet_state"},
        epoch_file="diffusion_epoch_{epoch}.pth",
        last_file="diffusion_last.pth",
        best_file="diffusion_best.pth",
        every_n_epochs=2,
        report_file="training_report.json",
        monitor="train_loss",
        engine_keys={"loss": "train_loss", "best_loss": "best_metric", "loss_history": "loss_history"},
    )

    def build_modules(self):
        return {"image_encoder": nn.Linear(IN_DIM, 8), "unet": nn.Sequential(nn.Tanh(), nn.Linear(8, 1))}

    def _loss(self, modules, x, y):
        pred = modules["unet"](modules["image_encoder"](x))
        return ((pred.float() - y) ** 2).mean()

    def forward_check(self, modules, batch):
        return modules["unet"](modules["image_encoder"](batch[0]))

    def report_extras(self):
        return {"replay_buffer_size": 0}


@register_task
class ToyViTTask(ToyTask):
    """Seed-000 ViT layout: checkpoint_epoch_N.pth every 5 epochs, final_model.pth,
    training_history.json; keys epoch, model_state_dict, optimizer_state_dict, best_val_loss,
    model_config, train_config, scheduler_state_dict."""

    name = "toy_vit"
    schema = CheckpointSchema(
        model="vit",
        module_keys={"model": "model_state_dict"},
        epoch_file="checkpoint_epoch_{epoch}.pth",
        last_file="checkpoint_last.pth",
        final_file="final_model.pth",
        every_n_epochs=5,
        optimizer_key="optimizer_state_dict",
        scheduler_key="scheduler_state_dict",
        epoch_log_file="training_history.json",
        engine_keys={"best_val_loss": "best_metric", "model_config": "task_config", "train_config": "engine_config"},
    )


def full_disk_write(budget: int):
    """A replacement for `cad3d.io.HashingWriter.write` (through which checkpoints, manifests and
    logs are written): ENOSPC once ``budget`` bytes have gone through, as a full disk fails."""
    import errno

    from cad3d.io import HashingWriter

    left = {"bytes": budget}
    real_write = HashingWriter.write

    def write(self, b):
        left["bytes"] -= len(b)
        if left["bytes"] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, b)

    return write


def ddp_main(work: Path) -> None:
    """Run under torchrun (2 CPU processes, gloo) by tests/test_ddp.py. In one process group:

    - ``plain``: no dropout or input noise, batch 4 per process (comparable to 1 process x 8);
    - ``straight``: the full toy (dropout, generator noise) for 3 epochs;
    - ``resumed``: the same, interrupted by a SIGTERM that only rank 1 receives (mid-epoch 2),
      then resumed with resume="auto".
    Each rank saves its final weights to ``work/<run>_rank<r>.pt``.
    """
    import torch.distributed as dist

    from cad3d.training.engine import Engine, EngineConfig, TrainingInterrupted

    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def fit(run, config, **overrides):
        cfg = EngineConfig(epochs=3, batch_size=4, lr=1e-2, out_dir=str(work / run), progress=False, **overrides)
        engine = Engine(ToyTask(config), ToyDataset(24, seed=1), ToyDataset(8, split=1, augment=False), cfg)
        engine.fit()
        torch.save(engine.modules["model"].state_dict(), work / f"{run}_rank{rank}.pt")

    fit("plain", ToyConfig(dropout=0.0, noise=0.0))
    fit("straight", ToyConfig())
    try:
        fit("resumed", ToyConfig(signal_at_step=4 if rank == 1 else None))
        raise SystemExit("SIGTERM did not stop training")
    except TrainingInterrupted as exc:
        assert (exc.path is not None) == (rank == 0), exc.path
    fit("resumed", ToyConfig(), resume="auto")
    dist.destroy_process_group()


if __name__ == "__main__":
    import sys

    ddp_main(Path(sys.argv[1]))
