"""Reference import path of the VAE converter; the code lives in `cad3d.conversion.vae`."""

from cad3d.conversion.vae import UntrainedModelWarning, VAEConverter

__all__ = ["UntrainedModelWarning", "VAEConverter"]
