"""cad3d: turn 2D CAD drawings into 3D point clouds, and train the models that do it.

Stages, each a package, in the order they may import each other (import-linter checks it):
geometry -> data -> models -> training -> conversion -> evaluation -> pipeline -> app -> cli.
`errors`, `io`, `config` and `devices` serve every stage. The reference API's modules
(`vae_integration`, `diffusion_3d_model`, `diffusion_trainer`, `vit_trainer`,
`vision_transformer_cad`, `hybrid_vit_diffusion`) only re-export; nothing inside imports them.
"""

__version__ = "0.1.0"
