"""Training: one engine, one checkpoint manager; models plug in as tasks.

- `cad3d.training.task`: the contract a model implements (`TrainTask`, `CheckpointSchema`,
  `StepContext`, the task registry).
- `cad3d.training.engine`: `EngineConfig` and `Engine(task, train, val, config).fit()` — the loop,
  precision, resume, signals, DDP; `TrainingInterrupted`.
- `cad3d.training.checkpoint`: `CheckpointManager`, atomic writes, safe loading.
- `cad3d.training.sampler` / `cad3d.training.distributed`: data order and torchrun helpers.

Nothing is imported here, so importing one part does not pull in the others.
"""
