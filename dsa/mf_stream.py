"""MF-Stream: the main full-image stream (paper §3.2.2, §4.2), the only stream needed at inference.

ResNet-50 conv1..conv4_x gives F (16 * base_width channels at H/16 x W/16).  On F, a global
branch (a conv5_x stage, last stride 1) gives f_G, and 8 part-aware branches (conv5_x with 1/8 of
the channels) give f_L,i.  The 8 part branches run batched as grouped convolutions.

With ``ModelConfig.backbone == "mobilenet_v2"`` (``dsa.mobilenet``) the trunk is MobileNetV2 up to
stride 16 (96 channels), the global branch its last stages with the last stride removed (plus a 1x1
reduction to ``global_dim``), and the same grouped bottleneck part branches read its stride-16 map;
the outputs (f_G, f_L) are the same, so everything downstream is unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone import (GroupedBottleneck, ResNetTrunk, bottleneck_stage, copy_branch, grouped_stage,
                       init_resnet, load_resnet50_weights, resolve_pretrained)
from .mobilenet import MobileNetGlobalTail, MobileNetTrunk, load_mobilenet_weights, mobilenet_state_dict
from .presets import ModelConfig


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
        mobilenet = cfg.backbone == "mobilenet_v2"
        self.backbone = MobileNetTrunk(cfg.frozen_blocks) if mobilenet else ResNetTrunk(cfg.base_width, tuple(cfg.trunk_blocks))
        c = self.backbone.out_channels
        self.global_branch = None
        self.part_branch = None
        if use_global and mobilenet:
            self.global_branch = MobileNetGlobalTail(cfg.global_dim, cfg.last_stride)
        elif use_global:
            self.global_branch = bottleneck_stage(c, cfg.global_dim // 4, cfg.global_blocks, cfg.last_stride)
            init_resnet(self.global_branch)
        if use_parts:
            self.part_branch = grouped_stage(GroupedBottleneck, c, cfg.part_dim // 4, cfg.part_blocks,
                                             cfg.num_parts, cfg.last_stride, shared_input=True)
            init_resnet(self.part_branch)
        if mobilenet:
            state = mobilenet_state_dict(pretrained)
            if state is not None:
                load_mobilenet_weights(self.backbone, self.global_branch, state, source=str(pretrained))
            return
        state = resolve_pretrained(pretrained)
        if state is not None:
            fits = (self.global_branch is not None and cfg.global_dim == 2048 and cfg.global_blocks == 3)
            load_resnet50_weights(self.backbone, self.global_branch if fits else None, state,
                                  source=str(pretrained))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.backbone(images)
        out: dict[str, torch.Tensor] = {}
        if self.global_branch is not None:
            out["f_G"] = self.global_branch(fmap).mean(dim=(2, 3))
        if self.part_branch is not None:
            f = self.part_branch(fmap).mean(dim=(2, 3))
            out["f_L"] = f.reshape(f.shape[0], self.cfg.num_parts, self.cfg.part_dim)
        return out

    def part_branches_reference(self) -> nn.ModuleList:
        """The part branches as 8 separate torchvision-Bottleneck stages with the same weights.

        Branch i maps F to the 4 * planes channels [i*part_dim, (i+1)*part_dim) of the batched
        output; used by the tests to hold the grouped form equal to the per-branch form.
        """
        if self.part_branch is None:
            raise ValueError("this MF-Stream has no part branches")
        cfg = self.cfg
        ref = nn.ModuleList()
        for i in range(cfg.num_parts):
            stage = bottleneck_stage(self.backbone.out_channels, cfg.part_dim // 4, cfg.part_blocks,
                                     cfg.last_stride)
            if stage[0].downsample is None:  # the batched form always projects a shared input
                raise ValueError("part branches with an identity shortcut have no per-branch form")
            copy_branch(stage, self.part_branch, i, cfg.num_parts)
            ref.append(stage)
        return ref.to(next(self.parameters()).device).train(self.training)
