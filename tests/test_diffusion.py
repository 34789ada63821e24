"""The diffusion model: schedule math, the U-Net, sampling, the replay buffer, training through the
engine with checkpoints and exact resume, and that a trained model uses its drawing (tiny models
on tiny synthetic sets, CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cad3d.data.dataset import CAD2D3DDataset
from cad3d.diffusion_3d_model import (
    CNNImageEncoder,
    DiffusionConfig,
    ImageEncoderConfig,
    ViTImageEncoder,
    create_diffusion_model,
)
from cad3d.diffusion_trainer import DiffusionTrainer
from cad3d.geometry.ops import chamfer_distance
from cad3d.models.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, NoiseScheduleConfig, spaced_timesteps
from cad3d.models.pointnet2_unet import PointNet2UNet, PointNet2UNetConfig
from cad3d.training.replay import ReplayBuffer
from cad3d.training.tasks.diffusion import DiffusionTask
from cad3d.training.tasks.base import get_task_class, known_tasks

SEED_000_KEYS = {
    "epoch", "global_step", "image_encoder_state", "unet_state", "optimizer_state", "scheduler_state", "loss",
    "best_loss", "loss_history",
}
# A model small enough for CPU tests: 64-point clouds, 32 px drawings, 2 SA levels.
MICRO = dict(
    image_size=32,
    schedule={"timesteps": 200},
    encoder={"backbone": "small", "small_widths": (8, 16, 32), "out_dim": 64},
    unet={"sa_ratios": (0.25, 0.25), "sa_neighbors": (16, 16), "sa_radii": (0.2, 0.4), "sa_widths": (32, 64),
          "fp_widths": (32, 64), "in_width": 32, "emb_dim": 64, "time_dim": 32},
)


def micro_model(num_points=64, seed=0, **kw):
    torch.manual_seed(seed)
    return create_diffusion_model(num_points=num_points, device="cpu", preset="tiny", **{**MICRO, **kw})


# -- schedule math --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_cumprod_monotone_and_bounded(kind):
    s = NoiseSchedule(NoiseScheduleConfig(timesteps=1000, beta_schedule=kind))
    abar = s.alphas_cumprod
    assert abar.shape == (1000,)
    assert torch.all(abar[1:] < abar[:-1])
    assert 0.99 < float(abar[0]) < 1.0 and float(abar[-1]) < 1e-3
    assert torch.all((s.betas > 0) & (s.betas < 1))
    assert torch.allclose(abar, torch.cumprod(1 - s.betas.double(), 0).float())


def test_add_noise_matches_the_chain_of_single_steps():
    # Closed form q(x_t | x_0) vs t single steps x_s = sqrt(1-b_s) x_{s-1} + sqrt(b_s) eps_s on many
    # samples: same mean and standard deviation.
    s = NoiseSchedule(NoiseScheduleConfig(timesteps=100, beta_schedule="cosine"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 1), 0.7)
    t = 60
    x = x0.clone()
    for k in range(t + 1):
        x = (1 - s.betas[k]).sqrt() * x + s.betas[k].sqrt() * torch.randn(x.shape, generator=g)
    closed = s.add_noise(x0, torch.randn(x0.shape, generator=g), torch.full((20000,), t))
    abar = float(s.alphas_cumprod[t])
    for sample in (x, closed):
        assert abs(float(sample.mean()) - math.sqrt(abar) * 0.7) < 0.02
        assert abs(float(sample.std()) - math.sqrt(1 - abar)) < 0.02
    exact = s.add_noise(x0[:2], torch.ones(2, 1, 1), torch.tensor([0, t]))
    assert torch.allclose(exact[1], torch.tensor(math.sqrt(abar) * 0.7 + math.sqrt(1 - abar)))


def oracle(schedule, x0):
    """The exact noise predictor of a one-point data distribution at x0 (B, N, 3)."""
    def eps(x, t):
        abar = schedule.abar_at(t)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()
    return eps


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("steps", [200, 13])
def test_samplers_land_on_the_data_with_the_exact_noise(sampler, steps):
    s = NoiseSchedule(NoiseScheduleConfig(timesteps=200))
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 32, 3, generator=g) * 2 - 1
    smp = DDPMSampler(s) if sampler == "ddpm" else DDIMSampler(s)
    smp.set_timesteps(steps)
    assert smp.timesteps[0] == 199 and smp.timesteps[-1] == 0 and len(set(smp.timesteps)) == steps
    x = torch.randn(x0.shape, generator=g)
    eps = oracle(s, x0)
    for t, t_prev in smp.pairs():
        x = smp.step(eps(x, t), t, t_prev, x, generator=g)
    assert torch.allclose(x, x0, atol=1e-3)


def test_ddim_inversion_round_trip_and_eta_one_is_ddpm():
    s = NoiseSchedule(NoiseScheduleConfig(timesteps=1000))
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 3, generator=g) * 0.3
    eps_fn = lambda x, t: torch.tanh(x @ A)  # any smooth deterministic predictor  # noqa: E731
    x0 = torch.rand(1, 64, 3, generator=g) * 2 - 1
    errors = []
    for steps in (100, 1000):
        ddim = DDIMSampler(s)
        ddim.set_timesteps(steps)
        xT = ddim.invert(eps_fn, x0)
        x = xT
        for t, t_prev in ddim.pairs():
            x = ddim.step(eps_fn(x, t), t, t_prev, x)
        errors.append(float((x - x0).abs().max()))
    assert errors[1] < 0.02 and errors[1] < 0.5 * errors[0], errors  # first-order: error falls with steps
    # DDIM with eta = 1 is the DDPM posterior: same step for the same noise draw.
    x = torch.randn(1, 64, 3, generator=g)
    e = eps_fn(x, 500)
    a = DDPMSampler(s).step(e, 500, 480, x, generator=torch.Generator().manual_seed(5))
    b = DDIMSampler(s, eta=1.0).step(e, 500, 480, x, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, b, atol=1e-5)


def test_spaced_timesteps():
    assert spaced_timesteps(1000, 1) == [999]
    assert spaced_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError):
        spaced_timesteps(10, 11)


# -- the networks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("grouping", ["knn", "ball"])
def test_unet_shapes_guidance_and_null_condition(grouping):
    cfg = PointNet2UNetConfig(sa_ratios=(0.5, 0.25), sa_neighbors=(8, 8), sa_radii=(0.3, 0.6), sa_widths=(16, 32),
                              fp_widths=(16, 32), in_width=16, emb_dim=32, time_dim=16, cond_dim=8, grouping=grouping,
                              token_dim=12, cross_attention_levels=1, attn_heads=4)
    torch.manual_seed(0)
    unet = PointNet2UNet(cfg)
    with torch.no_grad():  # leave the zero-initialized FiLM/attention/output layers
        for p in unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, t = torch.randn(2, 50, 3), torch.tensor([3, 100])
    cond, tokens = torch.randn(2, 8), torch.randn(2, 5, 12)
    out = unet(x, t, cond, tokens)
    assert out.shape == (2, 50, 3) and torch.isfinite(out).all()
    dropped = unet(x, t, cond, tokens, torch.tensor([True, False]))
    assert not torch.allclose(dropped[0], out[0]) and torch.allclose(dropped[1], out[1], atol=1e-6)
    other = unet(x, t, torch.randn(2, 8) * 5, tokens, torch.tensor([True, False]))
    assert torch.allclose(other[0], dropped[0], atol=1e-6)  # a dropped condition is ignored
    with pytest.raises(ValueError, match="tokens"):
        unet(x, t, cond)


def test_image_encoders_interface():
    images = torch.rand(2, 3, 64, 64)
    small = CNNImageEncoder(ImageEncoderConfig(backbone="small", out_dim=24, tokens=True, small_widths=(8, 16)))
    f = small(images)
    assert f.vector.shape == (2, 24) and f.tokens.shape == (2, 16 * 16, 16) and small.token_dim == 16
    resnet = CNNImageEncoder(ImageEncoderConfig(backbone="resnet18", out_dim=32))
    f = resnet(images)
    assert f.vector.shape == (2, 32) and f.tokens is None

    class FakeViT(torch.nn.Module):
        def forward_features(self, x):
            return torch.randn(x.shape[0], 1 + 9, 20)

    f = ViTImageEncoder(FakeViT(), width=20, out_dim=24)(images)
    assert f.vector.shape == (2, 24) and f.tokens.shape == (2, 9, 20)


def test_seeded_sampling_is_reproducible():
    model = micro_model()
    torch.nn.init.normal_(model.unet.head[-1].weight, std=0.1)
    images = torch.rand(2, 3, 32, 32)
    a = model.sample(images, steps=5, guidance=2.0, seed=3)
    b = model.sample(images, steps=5, guidance=2.0, seed=3)
    c = model.sample(images, steps=5, guidance=2.0, seed=4)
    d = model.sample(images, steps=5, sampler="ddpm", seed=3)
    e = model.sample(images, steps=5, sampler="ddpm", seed=3)
    assert a.shape == (2, 64, 3) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(d, e)


def test_config_round_trip_and_task_is_registered():
    cfg = micro_model().config
    again = DiffusionConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert "diffusion" in known_tasks() and get_task_class("diffusion") is DiffusionTask
    assert set(DiffusionTask.presets()) >= {"tiny", "full"}
    full = DiffusionTask.presets()["full"].model
    assert full.num_points == 4096 and full.schedule.timesteps == 1000


# -- replay buffer ----------------------------------------------------------------------------------
def test_replay_buffer_is_a_uniform_reservoir_and_round_trips():
    counts = torch.zeros(40)
    for trial in range(300):
        buf = ReplayBuffer(10, seed=trial)
        for start in range(0, 40, 4):  # 40 samples in batches of 4; sample i has value i
            ids = torch.arange(start, start + 4, dtype=torch.float32)
            buf.add(torch.zeros(4, 1, 2, 2), ids.view(4, 1, 1).expand(4, 1, 3))
        assert len(buf) == 10 and buf.seen == 40
        kept = buf.points[:, 0, 0].long()
        assert len(set(kept.tolist())) == 10
        counts[kept] += 1
    p = counts / 300  # each sample kept with probability 10/40
    assert float((p - 0.25).abs().max()) < 0.1, p
    assert float(p[:20].mean() - p[20:].mean()) < 0.05  # old and new alike

    state = buf.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    copy = ReplayBuffer(10)
    copy.load_state_dict(state)
    assert torch.equal(copy.sample(5)[1], buf.sample(5)[1])
    with pytest.raises(ValueError):
        buf.add(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3))


# -- training through the engine ------------------------------------------------------------------
class InMemory(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.base = dataset
        self.epoch = 0

    def set_epoch(self, epoch):
        self.base.set_epoch(epoch)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i]


def trainer_for(out, **kw):
    model = micro_model()
    base = dict(device="cpu", learning_rate=2e-3, batch_size=4, epochs=2, save_dir=out, replay_buffer_size=6,
                replay_ratio=0.5, save_every=1, progress=False, seed=0)
    return DiffusionTrainer(model=model, **{**base, **kw})


@pytest.mark.slow
def test_checkpoints_report_and_bit_exact_resume(tiny_dataset, tmp_path):
    data = CAD2D3DDataset(tiny_dataset, image_size=32, num_points=64, augment=True, seed=0)

    straight = trainer_for(tmp_path / "a")
    report = straight.train(data)
    out = tmp_path / "a"
    for name in ("diffusion_epoch_1.pth", "diffusion_epoch_2.pth", "diffusion_best.pth", "diffusion_last.pth", "training_report.json"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "training_report.json").read_text())
    assert on_disk["model"] == "3D Diffusion Model" and on_disk["architecture"] == "DDPM with U-Net + PointNet++"
    for k in ("total_epochs", "total_steps", "best_loss", "final_loss", "training_time_hours", "loss_history", "device"):
        assert k in on_disk, k
    assert on_disk["replay_buffer_size"] == 6 and on_disk["total_steps"] == 8
    hp = on_disk["hyperparameters"]
    assert hp["timesteps"] == 200 and hp["num_points"] == 64 and hp["learning_rate"] == 2e-3
    assert report["loss_history"] == on_disk["loss_history"]

    # Interrupted after 3 of 4 steps of epoch 1, then resumed: the same weights, losses and buffer.
    trainer_for(tmp_path / "b").train(data, max_steps=3)
    resumed = trainer_for(tmp_path / "b", replay_buffer_size=6)
    resumed.train(data, resume="auto")
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert straight.loss_history == resumed.loss_history
    sa, sb = straight.replay_buffer.state_dict(), resumed.replay_buffer.state_dict()
    assert int(sa["seen"]) == 16 * 2
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k

    # Loading: seed-000 keys, weights, buffer and the same samples.
    fresh = DiffusionTrainer(model=create_diffusion_model(num_points=64, preset="tiny"), device="cpu", progress=False)
    payload = fresh.load_checkpoint(out / "diffusion_last.pth")
    assert SEED_000_KEYS <= set(payload) and "model_config" in payload
    # The buffer is stored once per run, grey, in the run-state file the checkpoints refer to.
    assert "replay_buffer" not in payload and payload["cad3d_run_state"]["global_step"] == 8
    assert [p.name for p in out.glob("*.state")] == ["diffusion_replay_step_8.state"]
    assert sorted(p.name for p in (tmp_path / "b").glob("*.state")) == ["diffusion_replay_step_8.state"]
    assert torch.load(out / "diffusion_replay_step_8.state", weights_only=True)["replay_buffer"]["images"].shape[1] == 1
    assert fresh.model.config == straight.model.config and fresh.epoch == 2 and fresh.global_step == 8
    assert fresh.loss_history == straight.loss_history and fresh.best_loss == min(straight.loss_history)
    assert len(fresh.replay_buffer) == 6
    images = torch.stack([data[i][0] for i in range(2)])
    assert torch.equal(fresh.sample(images, steps=4, seed=1), straight.sample(images, steps=4, seed=1))


# -- it learns and uses the drawing --------------------------------------------------------------
FAMILIES3 = ["plate_hole_pattern", "stepped_shaft", "l_bracket"]
LEARN_POINTS = 128


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """One drawing of each of three very different families; a micro model overfit on them."""
    from cad3d.data.synth import create_synthetic_training_data

    images, points = [], []
    for family in FAMILIES3:
        out = tmp_path_factory.mktemp(f"diffusion_{family}")
        create_synthetic_training_data(out, 1, seed=3, num_points=512, image_size=64, workers=1, progress=False, families=[family])
        ds = CAD2D3DDataset(out, image_size=32, num_points=LEARN_POINTS, augment=False)
        assert ds.records[0].family == family
        images.append(ds[0][0])
        points.append(ds[0][1])
    images, points = torch.stack(images), torch.stack(points)  # (3, 3, 32, 32), (3, 128, 3)
    model = micro_model(num_points=LEARN_POINTS, cond_drop_prob=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    history = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster than two contended ones
    try:
        for _ in range(600):
            loss, _ = model.get_loss(images.repeat(2, 1, 1, 1), points.repeat(2, 1, 1), g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    return model, images, points, history


@pytest.mark.slow
def test_loss_falls(overfit):
    _, _, _, history = overfit
    first, last = sum(history[:30]) / 30, sum(history[-30:]) / 30
    assert last < 0.5 * first, (first, last)


@pytest.mark.slow
def test_condition_is_used_and_fast_sampler_matches_ancestral(overfit):
    model, images, points, _ = overfit

    def cd(a):
        return chamfer_distance(a, points, reduction="none")  # (3,)

    cond, uncond, ancestral = [], [], []
    for seed in (1, 2):
        c = model.sample(images, steps=20, seed=seed)
        cond.append(cd(c))
        uncond.append(cd(model.sample(images, steps=20, seed=seed, condition=False)))
        ancestral.append(cd(model.sample(images, steps=200, sampler="ddpm", seed=seed)))
        # Each drawing's cloud is nearer to its own shape than to the other two.
        cross = torch.stack([chamfer_distance(c[i : i + 1].expand(3, -1, -1), points, reduction="none") for i in range(3)])
        assert torch.equal(cross.argmin(dim=1), torch.arange(3)), cross
    cond_cd, uncond_cd, ddpm_cd = (float(torch.stack(v).mean()) for v in (cond, uncond, ancestral))
    assert cond_cd < 0.75 * uncond_cd, (cond_cd, uncond_cd)
    assert 0.5 * ddpm_cd < cond_cd < 2.0 * ddpm_cd, (cond_cd, ddpm_cd)
    assert ddpm_cd < 0.75 * uncond_cd, (ddpm_cd, uncond_cd)


@pytest.mark.slow
def test_projection_features_are_used(overfit):
    """The U-Net reads the drawing at each point's projection: giving every cloud the feature map
    of another drawing (global vector kept) pulls its samples away from its own shape."""
    model, images, points, _ = overfit
    assert model.unet.config.proj_dim > 0

    class ShuffledMap(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, x):
            f = self.encoder(x)
            return f._replace(fmap=f.fmap.roll(1, dims=0))

    own = [chamfer_distance(model.sample(images, steps=20, seed=s), points) for s in (1, 2)]
    encoder = model.image_encoder
    model.image_encoder = ShuffledMap(encoder)
    try:
        shuffled = [chamfer_distance(model.sample(images, steps=20, seed=s), points) for s in (1, 2)]
    finally:
        model.image_encoder = encoder
    own_cd, shuffled_cd = float(torch.stack(own).mean()), float(torch.stack(shuffled).mean())
    assert own_cd < 0.8 * shuffled_cd, (own_cd, shuffled_cd)


def test_refinement_starts_from_the_given_cloud():
    """strength -> 0 keeps the initial cloud; strength 1 ignores it."""
    model = micro_model()
    images = torch.ones(2, 3, 32, 32)
    init = torch.rand(2, 64, 3) - 0.5
    near = model.sample(images, steps=10, init=init, strength=0.02, seed=0)
    far = model.sample(images, steps=10, init=init, strength=1.0, seed=0)
    assert float(chamfer_distance(near, init)) < 0.1 * float(chamfer_distance(far, init))


@pytest.mark.slow
def test_the_hybrid_a_trained_vit_encodes_the_drawings(tiny_dataset, tmp_path, capsys):
    """`cad3d train diffusion --vit-encoder` builds the diffusion model on the trained ViT (its
    patch tokens are the projected features); the checkpoint rebuilds that model by itself."""
    from cad3d.cli import main
    from cad3d.models.image_encoders import ViTImageEncoder
    from cad3d.training.loader import load_trained

    common = ["--data", str(tiny_dataset), "--preset", "tiny", "--device", "cpu", "--epochs", "1", "--max-steps", "1",
              "--no-progress"]
    assert main(["train", "vit", "--out", str(tmp_path / "vit"), *common]) == 0
    vit_file = tmp_path / "vit" / "checkpoint_last.pth"
    assert main(["train", "diffusion", "--out", str(tmp_path / "diffusion"), "--vit-encoder", str(vit_file), *common]) == 0
    trained = load_trained(tmp_path / "diffusion" / "diffusion_last.pth")
    model = trained.model
    assert isinstance(model.image_encoder, ViTImageEncoder) and model.unet.config.proj_dim == model.image_encoder.fmap_dim
    images = torch.ones(1, 3, model.config.image_size, model.config.image_size)
    assert model.sample(images, steps=2, num_points=64).shape == (1, 64, 3)
    with pytest.raises(SystemExit) as info:
        main(["train", "vae", "--out", str(tmp_path / "vae"), "--vit-encoder", str(vit_file), *common])
    assert info.value.code == 2 and "--vit-encoder is an option of the diffusion model" in capsys.readouterr().err
