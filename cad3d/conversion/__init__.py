"""Conversion: drawings in (`drawing`), point clouds out — the hybrid converter (`converter`), the
geometric fallback and visual hull (`fallback`), ONNX depth lifting (`depth`), the VAE converter
(`vae`), output files and previews (`outputs`) and batch conversion of files (`batch`)."""
