"""Models: plain `nn.Module`s, each with its dataclass config and presets in one file — `vae`,
`vit`, `pointnet2_unet`, `diffusion` (schedule and samplers), `image_encoders`,
`diffusion_model` (the wrapper), `depth_net` and `depth_contract` (the ONNX file contract)."""
