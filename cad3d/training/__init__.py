"""Training: one engine, one checkpoint manager; every model plugs in as a task.

`engine` (the loop: precision, resume, signals, DDP), `rng`, `sampler`, `distributed`;
`checkpoint_io` (file format, metadata, safe loading), `checkpoint` (the manager), `loader`
(`load_trained`: the one way to rebuild a trained model), `inspect`, `verify`, `migrate` (the
``cad3d ckpt`` commands); `tasks/` (one file per model), `trainers` (the reference API's
facades), `replay` (continual learning), `depth_export` (ONNX).

Nothing is imported here, so importing one part does not pull in the others.
"""
