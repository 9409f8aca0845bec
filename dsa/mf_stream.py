"""MF-Stream: the main full-image stream (paper §3.2.2, §4.2), the only stream needed at inference.

ResNet-50 conv1..conv4_x gives F (16 * base_width channels at H/16 x W/16).  On F, a global
branch (a conv5_x stage, last stride 1) gives f_G, and 8 part-aware branches (conv5_x with 1/8 of
the channels) give f_L,i.  The 8 part branches run batched as grouped convolutions.

The trunk and the global branch come from the backbone registry ``dsa.config.BACKBONES``
(``ModelConfig.backbone``): ``resnet50`` (``dsa.backbone.build_resnet50``, the paper) and ``mobilenet_v2``
(``dsa.mobilenet.build_mobilenet_v2``: MobileNetV2 up to stride 16, its last stages with the last stride
removed as the global branch).  A new backbone is one builder function ``(cfg, use_global, pretrained) ->
Backbone`` registered under a name; the grouped bottleneck part branches read its stride-16 map, and the
outputs (f_G, f_L) are the same, so everything downstream is unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone, GroupedBottleneck, grouped_stage, init_resnet
from .config import BACKBONES, ModelConfig

__all__ = ["Backbone", "MFStream"]

class MFStream(nn.Module):
    """Backbone + global branch (optional) + part branches (optional).

    ``forward(images)`` returns a dict with ``f_G`` [B, global_dim] and/or ``f_L``
    [B, num_parts, part_dim]; ``images`` are normalised float [B, 3, H, W].
    """

    def __init__(self, cfg: ModelConfig, use_global: bool = True, use_parts: bool = True,
                 pretrained: str | None = None) -> None:
        super().__init__()
        if not (use_global or use_parts):
            raise ValueError("the MF-Stream needs the global branch, the part branches, or both")
        self.cfg = cfg
        trunk, global_branch = BACKBONES.get(cfg.backbone)(cfg, use_global, pretrained)
        self.backbone = trunk
        self.global_branch = global_branch
        self.part_branch = None
        if use_parts:
            self.part_branch = grouped_stage(GroupedBottleneck, trunk.out_channels, cfg.part_dim // 4,
                                             cfg.part_blocks, cfg.num_parts, cfg.last_stride, shared_input=True)
            init_resnet(self.part_branch)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.backbone(images)
        out: dict[str, torch.Tensor] = {}
        if self.global_branch is not None:
            out["f_G"] = self.global_branch(fmap).mean(dim=(2, 3))
        if self.part_branch is not None:
            f = self.part_branch(fmap).mean(dim=(2, 3))
            out["f_L"] = f.reshape(f.shape[0], self.cfg.num_parts, self.cfg.part_dim)
        return out
