"""One device resolution for training, conversion and the converters."""

import pytest
import torch

from cad3d.devices import DeviceError, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto", local_rank=1) == expected
    assert resolve_device(None) == resolve_device("auto")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
        # The converters of seed 000 degrade to the CPU with a warning instead.
        from cad3d.vae_integration import VAEConverter

        with pytest.warns(UserWarning, match="using CPU"):
            assert VAEConverter(device="cuda").device == torch.device("cpu")
