"""Fake ``detectron2.modeling``: a tiny DensePose-like model.

As in detectron2, the images of one batch are normalised and zero-padded to the largest of them
(rounded up to ``SIZE_DIVISIBILITY``), so the features near a crop's edge depend on its batch; each
given box is pooled to a 16×16 grid from which coarse/fine segmentation and U, V are predicted."""
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


class FakeDensePose(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        width = int(cfg.MODEL.WIDTH)
        self.backbone = nn.Conv2d(3, width, 7, padding=3)
        self.coarse = nn.Conv2d(width, 2, 1)
        self.fine = nn.Conv2d(width, 25, 1)
        self.uv = nn.Conv2d(width, 50, 1)
        self.cse = "Embedding" in str(cfg.MODEL.ROI_DENSEPOSE_HEAD.PREDICTOR_NAME)

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
        features = F.avg_pool2d(torch.tanh(self.backbone(batch)), 15, stride=1, padding=7)
        out = []
        for k, inst in enumerate(detected_instances):
            x0, y0, x1, y1 = (int(round(float(v))) for v in inst.pred_boxes.tensor[0])
            roi = F.interpolate(features[k : k + 1, :, y0:y1, x0:x1], (16, 16), mode="bilinear", align_corners=False)
            uv = torch.sigmoid(self.uv(roi))
            if self.cse:
                dp = SimpleNamespace(coarse_segm=self.coarse(roi), embedding=uv)
            else:
                dp = SimpleNamespace(coarse_segm=self.coarse(roi), fine_segm=self.fine(roi), u=uv[:, :25], v=uv[:, 25:])
            result = Instances((batched_inputs[k]["height"], batched_inputs[k]["width"]))
            result.pred_densepose = dp
            out.append({"instances": result})
        return out


def build_model(cfg: Any) -> FakeDensePose:
    return FakeDensePose(cfg)
