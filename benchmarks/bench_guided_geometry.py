"""Guided sampling's two U-Net passes with their neighbourhoods found once (`PointNet2UNet.geometry`,
"shared") or once per pass ("plain"), in one process, alternating; also the share of the
neighbourhood search in one pass and the image encoder's time. Prints; the figures are in the
``convert_profile`` section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_guided_geometry.py --preset full --batch 1 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch

from cad3d.models.diffusion_model import create_diffusion_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = create_diffusion_model(num_points=512 if args.preset == "tiny" else 4096, preset=args.preset).eval()
    B, S, N = args.batch, m.config.image_size, m.config.num_points
    x = torch.randn(B, N, 3) * 0.5  # (B, N, 3)
    with torch.no_grad():
        feats = m.image_encoder(torch.rand(B, 3, S, S))
        both = dict(t=torch.full((2 * B,), 500), cond=torch.cat([feats.vector, feats.vector]),
                    tokens=None if feats.tokens is None else torch.cat([feats.tokens, feats.tokens]),
                    drop=torch.tensor([False] * B + [True] * B))
        fns = {
            "plain": lambda: m.unet(torch.cat([x, x]), **both),
            "shared": lambda: m.unet(torch.cat([x, x]), **both, geometry=m.unet.geometry(x, repeat=2)),
            "one pass": lambda: m.unet(x, both["t"][:B], feats.vector, feats.tokens),
            "geometry": lambda: m.unet.geometry(x),
            "encoder": lambda: m.image_encoder(torch.rand(B, 3, S, S)),
        }
        best = {k: float("inf") for k in fns}
        for f in fns.values():
            f()
        for _ in range(args.repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t0)
    print(f"{args.preset} batch {B}: " + ", ".join(f"{k} {v:.3f} s" for k, v in best.items())
          + f"; shared / plain {best['shared'] / best['plain']:.2f}; geometry / one pass {best['geometry'] / best['one pass']:.2f}")


if __name__ == "__main__":
    main()
