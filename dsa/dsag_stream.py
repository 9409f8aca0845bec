"""DSAG-Stream: the densely-semantically-aligned guiding stream, exactly paper Table 1.

24 branches (one per DSAP image) -> conv1 5x5 -> conv2 3x3 -> conv3_x (basic blocks, stride 2) ->
merge 24 -> 13 (left/right partners added) -> conv4_x (13 branches, stride 2) -> merge 13 -> 8
(front/back added) -> D (8 branches concatenated).  Head: conv5_g on all of D -> pool -> d_G;
conv5_l (8 branches, one per D_i) -> pool -> d_L.

All branches of a stage run as one grouped convolution (branch i owns channels
[i*c, (i+1)*c)); merging reshapes to [B, branches, c, h, w] and adds the members of each group.
``DSAGStream.to_per_branch()`` builds the same network from separate plain modules (a Python loop
over branches) with the same weights: the reference for tests and benchmarks.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from . import parts
from .backbone import GroupedBasicBlock, copy_branch, grouped_stage, init_resnet
from .config import ModelConfig


def _groups_index(groups: tuple[tuple[int, ...], ...], offset: int) -> torch.Tensor:
    """[n_groups, max_members] member indices (0-based), padded with -1 (the zero branch)."""
    width = max(len(g) for g in groups)
    return torch.tensor([[m - offset for m in g] + [-1] * (width - len(g)) for g in groups])


class BranchMerge(nn.Module):
    """Element-wise add of branch feature maps by group: [B, n_in*c, h, w] -> [B, n_out*c, h, w].

    Groups are padded to equal size with a zero branch so the sum is one gather + one reduction
    (deterministic, exact: x + 0 == x), never a loop over groups.
    """

    def __init__(self, groups: tuple[tuple[int, ...], ...], offset: int) -> None:
        super().__init__()
        self.n_in = sum(len(g) for g in groups)
        self.n_out = len(groups)
        index = _groups_index(groups, offset)
        self.register_buffer("index", torch.where(index < 0, self.n_in, index), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ch, h, w = x.shape
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and ch > 1 \
            else torch.contiguous_format
        x = x.reshape(b, self.n_in, ch // self.n_in, h, w)
        x = torch.cat([x, x.new_zeros(b, 1, ch // self.n_in, h, w)], dim=1)
        merged = x[:, self.index].sum(dim=2)          # [B, n_out, c, h, w]
        merged = merged.reshape(b, self.n_out * (ch // self.n_in), h, w)
        return merged.contiguous(memory_format=fmt)


def _stem(cin: int, c1: int, c2: int, branches: int) -> nn.Sequential:
    """conv1 5x5 -> BN -> ReLU -> conv2 3x3 -> BN -> ReLU, ``branches`` of them grouped."""
    g = branches
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(cin * g, c1 * g, 5, padding=2, groups=g, bias=False),
        bn1=nn.BatchNorm2d(c1 * g), relu1=nn.ReLU(inplace=True),
        conv2=nn.Conv2d(c1 * g, c2 * g, 3, padding=1, groups=g, bias=False),
        bn2=nn.BatchNorm2d(c2 * g), relu2=nn.ReLU(inplace=True)))


class DSAGStream(nn.Module):
    """The DSAG-Stream; ``forward(dsap)`` with dsap float [B, 24, 3, S, S] (normalised).

    Returns ``d_G`` [B, dsag_conv5_g] and/or ``d_L`` [B, 8, dsag_conv5_l]; with
    ``return_maps=True`` also the stage maps ``conv2`` (24 branches, S x S), ``conv3`` (24,
    S/2), ``merge1`` (13, S/2), ``conv4`` (13, S/4) and ``D`` (8, S/4).
    """

    def __init__(self, cfg: ModelConfig, use_global: bool = True, use_parts: bool = True) -> None:
        super().__init__()
        if not (use_global or use_parts):
            raise ValueError("the DSAG-Stream head needs conv5_g, conv5_l, or both")
        self.cfg = cfg
        n1, n2, n3 = parts.NUM_PARTS, parts.NUM_LEVEL1, parts.NUM_GROUPS
        nb = cfg.dsag_blocks
        self.stem = _stem(3, cfg.dsag_conv1, cfg.dsag_conv2, n1)
        self.conv3 = grouped_stage(GroupedBasicBlock, cfg.dsag_conv2, cfg.dsag_conv3, nb, n1, 2)
        self.merge1 = BranchMerge(parts.LEVEL1_GROUPS, offset=1)
        self.conv4 = grouped_stage(GroupedBasicBlock, cfg.dsag_conv3, cfg.dsag_conv4, nb, n2, 2)
        self.merge2 = BranchMerge(parts.LEVEL2_GROUPS, offset=0)
        self.head_g = (grouped_stage(GroupedBasicBlock, n3 * cfg.dsag_conv4, cfg.dsag_conv5_g, nb, 1, 1)
                       if use_global else None)
        self.head_l = (grouped_stage(GroupedBasicBlock, cfg.dsag_conv4, cfg.dsag_conv5_l, nb, n3, 1)
                       if use_parts else None)
        init_resnet(self)

    def forward(self, dsap: torch.Tensor, return_maps: bool = False) -> dict[str, torch.Tensor]:
        b, n, c, s, s2 = dsap.shape
        if n != parts.NUM_PARTS or c != 3 or s != s2:
            raise ValueError(f"DSAP batch must be [B, 24, 3, S, S], got {list(dsap.shape)}")
        maps: dict[str, torch.Tensor] = {}
        x = self.stem(dsap.reshape(b, n * c, s, s))
        maps["conv2"] = x
        x = maps["conv3"] = self.conv3(x)
        x = maps["merge1"] = self.merge1(x)
        x = maps["conv4"] = self.conv4(x)
        d = maps["D"] = self.merge2(x)
        out: dict[str, torch.Tensor] = {}
        if self.head_g is not None:
            out["d_G"] = self.head_g(d).mean(dim=(2, 3))
        if self.head_l is not None:
            out["d_L"] = self.head_l(d).mean(dim=(2, 3)).reshape(b, parts.NUM_GROUPS, self.cfg.dsag_conv5_l)
        if return_maps:
            out.update(maps)
        return out

    def to_per_branch(self) -> "PerBranchDSAG":
        """The same network (same weights, same BN state) as separate per-branch plain modules."""
        ref = PerBranchDSAG(self.cfg, self.head_g is not None, self.head_l is not None)
        for i, m in enumerate(ref.stems):
            copy_branch(m, self.stem, i, parts.NUM_PARTS)
        for i, m in enumerate(ref.conv3):
            copy_branch(m, self.conv3, i, parts.NUM_PARTS)
        for i, m in enumerate(ref.conv4):
            copy_branch(m, self.conv4, i, parts.NUM_LEVEL1)
        if ref.head_g is not None:
            copy_branch(ref.head_g, self.head_g, 0, 1)
        if ref.head_l is not None:
            for i, m in enumerate(ref.head_l):
                copy_branch(m, self.head_l, i, parts.NUM_GROUPS)
        return ref.to(next(self.parameters()).device).train(self.training)


def _basic_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """torchvision ``BasicBlock`` stage (ResNet-18 style), the per-branch reference."""
    down = None
    if stride != 1 or inplanes != planes:
        down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
    return nn.Sequential(BasicBlock(inplanes, planes, stride, down),
                         *[BasicBlock(planes, planes) for _ in range(1, blocks)])


class PerBranchDSAG(nn.Module):
    """Reference DSAG-Stream: one plain module per branch, a Python loop, merges by ``dsa.parts``.

    Slow by design; it exists so that tests and ``bench/bench_train.py`` can check and time the
    batched ``DSAGStream`` against the straightforward form.  Same outputs as ``DSAGStream``.
    """

    def __init__(self, cfg: ModelConfig, use_global: bool = True, use_parts: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        nb = cfg.dsag_blocks
        self.stems = nn.ModuleList(_stem(3, cfg.dsag_conv1, cfg.dsag_conv2, 1) for _ in range(parts.NUM_PARTS))
        self.conv3 = nn.ModuleList(_basic_stage(cfg.dsag_conv2, cfg.dsag_conv3, nb, 2)
                                   for _ in range(parts.NUM_PARTS))
        self.conv4 = nn.ModuleList(_basic_stage(cfg.dsag_conv3, cfg.dsag_conv4, nb, 2)
                                   for _ in range(parts.NUM_LEVEL1))
        self.head_g = (_basic_stage(parts.NUM_GROUPS * cfg.dsag_conv4, cfg.dsag_conv5_g, nb, 1)
                       if use_global else None)
        self.head_l = (nn.ModuleList(_basic_stage(cfg.dsag_conv4, cfg.dsag_conv5_l, nb, 1)
                                     for _ in range(parts.NUM_GROUPS)) if use_parts else None)

    def forward(self, dsap: torch.Tensor, return_maps: bool = False) -> dict[str, torch.Tensor]:
        x = [self.conv3[i](self.stems[i](dsap[:, i])) for i in range(parts.NUM_PARTS)]
        level1 = [sum(x[p - 1] for p in group) for group in parts.LEVEL1_GROUPS]
        y = [self.conv4[j](level1[j]) for j in range(parts.NUM_LEVEL1)]
        level2 = [sum(y[j] for j in group) for group in parts.LEVEL2_GROUPS]
        out: dict[str, torch.Tensor] = {}
        if self.head_g is not None:
            out["d_G"] = self.head_g(torch.cat(level2, dim=1)).mean(dim=(2, 3))
        if self.head_l is not None:
            out["d_L"] = torch.stack([self.head_l[k](level2[k]).mean(dim=(2, 3))
                                      for k in range(parts.NUM_GROUPS)], dim=1)
        if return_maps:
            out.update(conv3=torch.cat(x, 1), merge1=torch.cat(level1, 1), conv4=torch.cat(y, 1),
                       D=torch.cat(level2, 1))
        return out
