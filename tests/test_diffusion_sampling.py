"""What sampling shares instead of recomputing: the neighbourhoods of guided sampling's two passes
over the same points, and one image encoding for several clouds of a drawing."""

from __future__ import annotations

import pytest
import torch

from cad3d.models.diffusion_model import create_diffusion_model, iso_projection


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_diffusion_model(num_points=96, preset="tiny", image_size=32).eval()
    with torch.no_grad():  # the head starts at zero; make the output depend on everything
        for p in m.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return m


@pytest.mark.parametrize("grouping", ["knn", "ball"])
def test_shared_geometry_gives_the_same_noise_prediction(model, grouping):
    unet = model.unet
    for sa in unet.down:
        sa.grouping = grouping
    try:
        x = torch.randn(3, 96, 3, generator=torch.Generator().manual_seed(1)) * 0.5
        t = torch.tensor([5, 50, 150])
        with torch.no_grad():
            feats = model.image_encoder(torch.rand(3, 3, 32, 32))
            cond = torch.cat([feats.vector, feats.vector])
            drop = torch.tensor([False] * 3 + [True] * 3)
            cams, views = iso_projection(6)
            projection = (torch.cat([feats.fmap, feats.fmap]), cams, views)  # the drawing read at each point
            plain = unet(torch.cat([x, x]), t.repeat(2), cond, None, drop, projection)  # (6, 96, 3)
            shared = unet(torch.cat([x, x]), t.repeat(2), cond, None, drop, projection, unet.geometry(x, repeat=2))
        assert torch.equal(plain, shared)
        assert not torch.allclose(plain[:3], plain[3:])  # the two passes differ (condition kept / dropped)
    finally:
        for sa in unet.down:
            sa.grouping = "knn"


def test_several_clouds_per_drawing_equal_one_call_per_cloud(model):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(2, 3, 96, 3, generator=torch.Generator().manual_seed(3))  # (B, R, N, 3)
    together = model.sample(images, steps=3, guidance=2.0, x_T=noise.reshape(6, 96, 3))  # rows b * R + r
    for r in range(3):
        alone = model.sample(images, steps=3, guidance=2.0, x_T=noise[:, r])
        # Batches of 6 and 2 round differently in float32 (up to ~4e-5 after 3 guided steps on
        # this machine); a cloud paired with the other drawing's features is off by ~2.
        assert torch.allclose(together.view(2, 3, 96, 3)[:, r], alone, atol=2e-4)
    with pytest.raises(ValueError, match="multiple"):
        model.sample(images, steps=1, x_T=noise.reshape(6, 96, 3)[:5])
