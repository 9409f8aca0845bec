"""Fake ``detectron2.modeling``: a tiny DensePose-like model.

As in detectron2, the images of one batch are normalised and zero-padded to the largest of them
(rounded up to ``SIZE_DIVISIBILITY``), so the features near a crop's edge depend on its batch; each
given box is pooled to a 16×16 grid from which coarse/fine segmentation and U, V are predicted.

Like a real model on a CPU, its output depends on the intra-op thread count in the low-order bits (a real
backbone splits its sums by thread; here the features move by ``THREAD_NOISE`` per extra thread). Its
backbone has ResNet-style blocks (``backbone.bottom_up.res4.5.weight``), as many per stage as
``MODEL.RESNETS.DEPTH`` says (50 or 101), so checkpoints of the two depths differ as real ones do. A config
whose ROI heads are not DensePose ones gives instances without ``pred_densepose``, as detectron2's do."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .structures import Instances

SIZE_DIVISIBILITY = 32
#: (batch size, padded height, padded width) of every forward pass, for the tests
CALLS: list[tuple[int, int, int]] = []
#: how much the features move per intra-op thread beyond the first
THREAD_NOISE = 2e-3
#: blocks in res2..res5 by depth, as in detectron2's ResNet
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class FakeBackbone(nn.Module):
    def __init__(self, stem: nn.Module, width: int, depth: int) -> None:
        super().__init__()
        self.stem = stem
        self.bottom_up = nn.ModuleDict({
            f"res{stage}": nn.Sequential(*[nn.Conv2d(width, width, 1) for _ in range(n)])
            for stage, n in zip((2, 3, 4, 5), BLOCKS[depth])})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.stem(x))
        for stage in self.bottom_up.values():
            for block in stage:
                x = x + 0.01 * torch.tanh(block(x))
        return x + THREAD_NOISE * (torch.get_num_threads() - 1)


class FakeDensePose(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        width = int(cfg.MODEL.WIDTH)
        stem = nn.Conv2d(3, width, 7, padding=3)
        coarse, fine, uv = nn.Conv2d(width, 2, 1), nn.Conv2d(width, 25, 1), nn.Conv2d(width, 50, 1)
        self.backbone = FakeBackbone(stem, width, int(cfg.MODEL.RESNETS.DEPTH))  # its blocks drawn last
        self.coarse, self.fine, self.uv = coarse, fine, uv
        self.cse = "Embedding" in str(cfg.MODEL.ROI_DENSEPOSE_HEAD.PREDICTOR_NAME)
        self.densepose = "DensePose" in str(cfg.MODEL.ROI_HEADS.NAME)

    def inference(self, batched_inputs: list[dict], detected_instances: list[Instances] | None = None,
                  do_postprocess: bool = True) -> list[dict]:
        assert not self.training and detected_instances is not None
        images = [(x["image"].float() - 128.0) / 64.0 for x in batched_inputs]
        h = max(i.shape[1] for i in images)
        w = max(i.shape[2] for i in images)
        h, w = -(-h // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY, -(-w // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
        batch = torch.zeros(len(images), 3, h, w)
        for k, img in enumerate(images):
            batch[k, :, : img.shape[1], : img.shape[2]] = img
        CALLS.append((len(images), h, w))
        features = F.avg_pool2d(self.backbone(batch), 15, stride=1, padding=7)
        out = []
        for k, inst in enumerate(detected_instances):
            result = Instances((batched_inputs[k]["height"], batched_inputs[k]["width"]))
            out.append({"instances": result})
            if not self.densepose:  # e.g. Mask R-CNN: boxes, classes, masks, no DensePose output
                continue
            x0, y0, x1, y1 = (int(round(float(v))) for v in inst.pred_boxes.tensor[0])
            roi = F.interpolate(features[k : k + 1, :, y0:y1, x0:x1], (16, 16), mode="bilinear", align_corners=False)
            uv = torch.sigmoid(self.uv(roi))
            if self.cse:
                dp = SimpleNamespace(coarse_segm=self.coarse(roi), embedding=uv)
            else:
                dp = SimpleNamespace(coarse_segm=self.coarse(roi), fine_segm=self.fine(roi), u=uv[:, :25], v=uv[:, 25:])
            result.pred_densepose = dp
        return out


def build_model(cfg: Any) -> FakeDensePose:
    return FakeDensePose(cfg)
