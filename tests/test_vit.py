"""The Vision Transformer: model shapes, its loss, training through the engine, checkpoints and
resume, as a user runs them (tiny models on tiny synthetic sets, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from cad3d.data.dataset import CAD2D3DDataset
from cad3d.errors import CheckpointError
from cad3d.geometry.ops import chamfer_distance
from cad3d.training.tasks.base import StepContext, get_task_class, known_tasks
from cad3d.models.vit import VisionTransformer, VisionTransformerConfig
from cad3d.training.tasks.vit import IGNORE_FAMILY, FamilyLabeledDataset, ViTTask, ViTTaskConfig, family_cross_entropy
from cad3d.training.trainers import TrainingConfig, VisionTransformerTrainer

MICRO = VisionTransformerConfig(
    image_size=32, patch_size=8, width=32, depth=1, num_heads=2, num_points=64, head_hidden=64
)
SEED_000_KEYS = {
    "epoch", "model_state_dict", "optimizer_state_dict", "best_val_loss", "model_config", "train_config",
    "scheduler_state_dict",
}


class InMemory(torch.utils.data.Dataset):
    """All samples of a dataset read once (no augmentation), so tiny training runs are compute-bound."""

    def __init__(self, dataset):
        self.samples = [dataset[i] for i in range(len(dataset))]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def labeled(data_dir, config: VisionTransformerConfig, *, augment=False, split=None, seed=0):
    base = CAD2D3DDataset(data_dir, image_size=config.image_size, num_points=config.num_points, augment=augment, split=split, seed=seed)
    return FamilyLabeledDataset(base)


def train_config(tmp_path, **kw) -> TrainingConfig:
    base = dict(batch_size=4, learning_rate=1e-3, weight_decay=0.0, num_epochs=2, checkpoint_dir=str(tmp_path),
                device="cpu", progress=False, augment=False)
    return TrainingConfig(**{**base, **kw})


def stacked(dataset):
    images, points, families = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.stack(points), torch.stack(families)


# -- the model ---------------------------------------------------------------------------------
def test_forward_features_and_heads_shapes():
    torch.manual_seed(0)
    model = VisionTransformer(MICRO)
    x = torch.rand(3, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (3, 1 + (32 // 8) ** 2, 32)  # (B, 1+P, D)
    out = model.forward_head(tokens)
    assert out["points"].shape == (3, 64, 3) and out["family_logits"].shape == (3, MICRO.num_families)
    assert torch.equal(model(x)["points"], out["points"])
    with pytest.raises(ValueError, match="expected drawings of shape"):
        model.forward_features(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionTransformerConfig(image_size=30, patch_size=8)


def test_configs_round_trip_and_task_is_registered():
    assert VisionTransformerConfig.from_dict(json.loads(json.dumps(MICRO.to_dict()))) == MICRO
    tc = TrainingConfig(batch_size=3, learning_rate=2e-4, num_epochs=7, checkpoint_dir="x/vit", family_loss_weight=0.5)
    assert TrainingConfig.from_dict(json.loads(json.dumps(tc.to_dict()))) == tc
    engine = tc.engine_config()
    assert (engine.batch_size, engine.lr, engine.epochs, engine.out_dir) == (3, 2e-4, 7, "x/vit")
    assert TrainingConfig.from_dict(engine.to_dict()).learning_rate == 2e-4  # train_config of `cad3d train`
    task = ViTTask(ViTTaskConfig(model=MICRO, family_loss_weight=0.3))
    again = ViTTask.from_config_dict(json.loads(json.dumps(task.config_dict())))
    assert again.config == task.config
    assert "vit" in known_tasks() and get_task_class("vit") is ViTTask
    presets = ViTTask.presets()
    assert presets["tiny"].model.image_size == 64 and presets["full"].model.width == 384


def test_build_datasets_gives_splits_with_family_labels(tiny_dataset):
    task = ViTTask(ViTTaskConfig(model=MICRO))
    train, val = task.build_datasets(tiny_dataset, seed=1)
    assert len(train) + len(val) <= 16 and {r.split for r in train.records} == {"train"}
    image, points, family = val[0]
    assert image.shape == (3, 32, 32) and points.shape == (64, 3)
    from cad3d.data.parts import FAMILIES

    assert FAMILIES[int(family)] == val.records[0].family


def test_family_cross_entropy_skips_unknown_families():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    both = family_cross_entropy(logits, torch.tensor([0, 1]))
    assert torch.allclose(family_cross_entropy(logits, torch.tensor([0, IGNORE_FAMILY])), both)
    assert family_cross_entropy(logits, torch.tensor([IGNORE_FAMILY, IGNORE_FAMILY])) == 0  # no NaN


def test_loss_falls(tiny_dataset):
    torch.manual_seed(0)
    task = ViTTask(ViTTaskConfig(model=MICRO))
    modules = task.build_modules()
    batch = stacked(InMemory(labeled(tiny_dataset, MICRO)))  # all 16 samples
    opt = task.configure_optimizer(modules, lr=2e-3, weight_decay=0.0)
    ctx = StepContext(1, 0, torch.device("cpu"), torch.Generator())
    losses = []
    for _ in range(25):
        loss, parts = task.training_step(modules, batch, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert {"chamfer", "family_ce"} <= set(parts)
    assert losses[-1] < 0.6 * losses[0], losses


# -- checkpoints through the engine ---------------------------------------------------------------
def test_checkpoint_files_keys_and_config_round_trip(tiny_dataset, tmp_path):
    data = InMemory(labeled(tiny_dataset, MICRO))
    tc = train_config(tmp_path / "vit", num_epochs=5, batch_size=8)
    trainer = VisionTransformerTrainer(MICRO, tc)
    report = trainer.fit(data, data)
    out = tmp_path / "vit"
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint_epoch_5.pth", "final_model.pth", "training_history.json", "checkpoint_last.pth"} <= names
    assert not any(f"checkpoint_epoch_{e}.pth" in names for e in (1, 2, 3, 4))  # every 5 epochs
    history = json.loads((out / "training_history.json").read_text())
    assert [e["epoch"] for e in history] == [1, 2, 3, 4, 5] and report["total_epochs"] == 5
    assert {"train_loss", "val_loss", "val_chamfer", "family_acc", "fscore_1pct"} <= set(history[-1])

    # A fresh trainer with default configs takes both configs and the weights from the file.
    other = VisionTransformerTrainer(VisionTransformerConfig(), TrainingConfig())
    payload = other.load_checkpoint(out / "final_model.pth")
    assert SEED_000_KEYS <= set(payload)
    assert isinstance(payload["model_config"], dict) and isinstance(payload["train_config"], dict)
    assert other.config == MICRO and other.train_config == tc
    assert other.epoch == 5 and other.best_val_loss == pytest.approx(min(e["val_loss"] for e in history))
    x = stacked(data)[0][:2]
    assert torch.equal(other.predict(x), trainer.predict(x))

    bad = tmp_path / "tampered.pth"
    raw = bytearray((out / "checkpoint_epoch_5.pth").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="tampered.pth"):
        other.load_checkpoint(bad)


def test_resume_is_bit_exact(tiny_dataset, tmp_path):
    # Augmented data: the resumed run must also replay the augmentation and data order.
    def run(out, **fit_kw):
        trainer = VisionTransformerTrainer(MICRO, train_config(out, num_epochs=2, augment=True))
        trainer.fit(labeled(tiny_dataset, MICRO, augment=True), **fit_kw)
        return trainer

    straight = run(tmp_path / "a")
    run(tmp_path / "b", max_steps=3)  # stops mid-epoch 1 (4 steps per epoch), saves checkpoint_last.pth
    assert json.loads((tmp_path / "b" / "checkpoints_manifest.json").read_text())["files"]["checkpoint_last.pth"]["epoch_complete"] is False
    resumed = run(tmp_path / "b", resume="auto")
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    ha = json.loads((tmp_path / "a" / "training_history.json").read_text())
    hb = json.loads((tmp_path / "b" / "training_history.json").read_text())
    assert [e["train_loss"] for e in ha] == [e["train_loss"] for e in hb]


# -- it learns ------------------------------------------------------------------------------------
FAMILIES3 = ["tube", "l_bracket", "hex_nut"]
LEARN = VisionTransformerConfig(
    image_size=32, patch_size=8, width=48, depth=2, num_heads=4, num_points=128, head_hidden=128
)


@pytest.fixture(scope="module")
def three_family_sets(tmp_path_factory):
    """Train and held-out sets of three families, made from different seeds (no shared parts)."""
    from cad3d.data.synth import create_synthetic_training_data

    root = tmp_path_factory.mktemp("vit_three_families")
    kw = dict(num_points=LEARN.num_points, image_size=64, workers=1, progress=False, families=FAMILIES3)
    create_synthetic_training_data(root / "train", 48, seed=11, **kw)
    create_synthetic_training_data(root / "heldout", 24, seed=12, **kw)
    return root / "train", root / "heldout"


@pytest.mark.slow
def test_learns_clouds_and_families(three_family_sets, tmp_path):
    train_dir, heldout_dir = three_family_sets
    train = InMemory(labeled(train_dir, LEARN))  # every split of the train folder
    heldout = InMemory(labeled(heldout_dir, LEARN))
    trainer = VisionTransformerTrainer(LEARN, train_config(tmp_path, num_epochs=12, batch_size=8, learning_rate=2e-3))
    trainer.fit(train, heldout)
    history = trainer.history
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]

    _, train_points, train_families = stacked(train)
    images, points, families = stacked(heldout)
    predicted = trainer.predict(images)
    model_cd = float(chamfer_distance(predicted, points))
    mean_cloud = train_points.mean(dim=0)  # (N, 3) point-wise mean of the training clouds
    mean_cd = float(chamfer_distance(mean_cloud.expand_as(points), points))
    assert model_cd < 0.5 * mean_cd, (model_cd, mean_cd)
    # A stronger constant baseline: the training cloud closest (Chamfer) to all the others.
    pairwise = torch.stack([chamfer_distance(train_points, c.expand_as(train_points), reduction="none") for c in train_points])
    medoid = train_points[pairwise.mean(dim=1).argmin()]
    medoid_cd = float(chamfer_distance(medoid.expand_as(points), points))
    assert model_cd < medoid_cd, (model_cd, medoid_cd)

    accuracy = float((trainer.model(images)["family_logits"].argmax(-1) == families).float().mean())
    majority = float(torch.bincount(train_families).max()) / len(train_families)
    assert accuracy > max(1 / 3, majority) + 0.1, (accuracy, majority)


def test_point_query_head_predicts_every_point_natively_and_learns():
    config = VisionTransformerConfig(image_size=32, patch_size=8, width=32, depth=1, num_heads=2, num_points=300,
                                     point_head="queries", decoder_depth=1)
    torch.manual_seed(0)
    model = VisionTransformer(config)
    images = torch.rand(2, 3, 32, 32)
    target = torch.rand(2, 300, 3) - 0.5
    out = model(images)["points"]
    assert out.shape == (2, 300, 3)
    assert len(torch.unique(out[0].detach(), dim=0)) == 300  # one distinct point per query, none repeated
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = chamfer_distance(model(images)["points"], target)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
