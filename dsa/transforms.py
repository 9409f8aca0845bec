"""Image normalisation for the networks: ImageNet mean/std, outside the model, never in place."""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Return (x - mean) / std per RGB channel as a new float32 tensor.

    ``images``: [..., 3, H, W], uint8 in 0..255 or float in [0, 1].  The input is never modified;
    the memory format (e.g. channels_last) is kept.
    """
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected [..., 3, H, W] RGB images, got shape {list(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std
