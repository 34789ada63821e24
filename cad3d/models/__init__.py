"""Models: plain `nn.Module`s with dataclass configs (VAE, diffusion, ViT, depth).

Seed-000 import paths (e.g. `cad3d.vision_transformer_cad`) stay where users expect them.
"""
