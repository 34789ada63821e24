"""One file per model's training task (vae, vit, diffusion, depth, refine) and the contract they follow
(`cad3d.training.tasks.base`: `TrainTask`, `CheckpointSchema`, the registry)."""
