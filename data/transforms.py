"""Image augmentation for training and the plain resize for testing (paper §4.2).

Training: resize to the preset's input size, pad 10 + random crop back to that size, horizontal flip
(p = 0.5) and random erasing (p = 0.5, switchable for the Table 3 baselines), on the RGB image.  The
transform says whether it flipped the image, so that the image's DSAP images can be flipped with it
(``dsa.parts.flip_dsap``: left and right parts swapped, charts mirrored; ``data.joint``).  The crop and
the erasing are left out of the DSAP images on purpose: DSAP images live in the body's own (u, v) charts,
so moving the crop moves no cell (only the few body pixels pushed out of the frame are lost), and the
two streams are fused after pooling, so an erased rectangle in the image needs no matching hole in d.

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


class TrainTransform:
    """The paper's training augmentation: uint8 HxWx3 array → ``(uint8 tensor [3, height, width], flipped)``.

    The random draws are torchvision's, in torchvision's order (crop, flip, erasing): the flip is one
    ``torch.rand(1) < flip_p`` draw, as ``v2.RandomHorizontalFlip`` makes it, so a seed gives the same
    image as the ``v2.Compose`` of the same steps.  ``erasing_p = 0`` leaves random erasing out (the
    Table 3 baselines without RE)."""

    def __init__(self, height: int, width: int, *, pad: int = 10, flip_p: float = 0.5, erasing_p: float = 0.5):
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be a probability, not {flip_p}")
        self.geometry = v2.Compose([v2.Lambda(to_tensor), v2.Resize((height, width), antialias=True),
                                    v2.Pad(pad, fill=MEAN_RGB_UINT8), v2.RandomCrop((height, width))])
        self.flip_p = flip_p
        self.erasing = v2.RandomErasing(p=erasing_p, value=list(MEAN_RGB_UINT8)) if erasing_p > 0 else None

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, bool]:
        x = self.geometry(image)
        flipped = bool(torch.rand(1) < self.flip_p)
        if flipped:
            x = v2.functional.horizontal_flip(x)
        if self.erasing is not None:
            x = self.erasing(x)
        return x, flipped


def build_train_transform(height: int, width: int, *, pad: int = 10, flip_p: float = 0.5,
                          erasing_p: float = 0.5) -> TrainTransform:
    """The training augmentation (:class:`TrainTransform`): a callable giving ``(image, flipped)``."""
    return TrainTransform(height, width, pad=pad, flip_p=flip_p, erasing_p=erasing_p)


def build_test_transform(height: int, width: int) -> v2.Compose:
    """Resize only: uint8 HxWx3 array → uint8 tensor [3, height, width]."""
    return v2.Compose([v2.Lambda(to_tensor), v2.Resize((height, width), antialias=True)])
