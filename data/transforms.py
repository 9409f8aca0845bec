"""Image augmentation for training and the plain resize for testing (paper §4.2).

Training: resize to the preset's input size, pad 10 + random crop back to that size, horizontal flip
(p = 0.5) and random erasing (p = 0.5, switchable for the Table 3 baselines), on the RGB image only.
DSAP images are never augmented: the two streams are fused after pooling, so no spatial
correspondence between them has to be kept.

The transforms work on uint8 tensors and return uint8 [3, H, W]: the batch crosses process and device
boundaries four times smaller than as float, and conversion + normalisation (``dsa.transforms``)
happen on the device, outside the model.  Erased rectangles are filled with the ImageNet mean colour,
so that they become zero after normalisation (as in Zhong et al.'s random erasing).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from dsa.transforms import IMAGENET_MEAN

#: ImageNet mean as uint8 RGB (124, 116, 104): the fill of padding and erased rectangles.
MEAN_RGB_UINT8 = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB array → uint8 tensor [3, H, W] (a copy, contiguous)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def build_train_transform(height: int, width: int, *, pad: int = 10, flip_p: float = 0.5,
                          erasing_p: float = 0.5) -> v2.Compose:
    """The paper's training augmentation: uint8 HxWx3 array → uint8 tensor [3, height, width].

    ``erasing_p = 0`` leaves random erasing out (the Table 3 baselines without RE)."""
    steps: list = [
        v2.Lambda(to_tensor),
        v2.Resize((height, width), antialias=True),
        v2.Pad(pad, fill=MEAN_RGB_UINT8),
        v2.RandomCrop((height, width)),
        v2.RandomHorizontalFlip(flip_p),
    ]
    if erasing_p > 0:
        steps.append(v2.RandomErasing(p=erasing_p, value=list(MEAN_RGB_UINT8)))
    return v2.Compose(steps)


def build_test_transform(height: int, width: int) -> v2.Compose:
    """Resize only: uint8 HxWx3 array → uint8 tensor [3, height, width]."""
    return v2.Compose([v2.Lambda(to_tensor), v2.Resize((height, width), antialias=True)])
