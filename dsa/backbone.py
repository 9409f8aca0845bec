"""ResNet building blocks: the ResNet-50 trunk, batched multi-branch blocks, ImageNet weights.

The trunk keeps torchvision's module names (conv1, bn1, relu, maxpool, layer1..layer3) so that a
torchvision ``resnet50`` state dict loads into it unchanged.  The multi-branch blocks run N
same-shaped branches as one grouped convolution: branch i owns channels [i*c, (i+1)*c) of every
tensor, and a BatchNorm over all channels is exactly a per-branch BatchNorm (its statistics are
per channel).  ``copy_branch`` slices branch i out into a plain per-branch module, which is how the
tests and the benchmark hold the batched form equal to the per-branch form.
"""
from __future__ import annotations

import logging
import os
import pickle
import urllib.error
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.resnet import Bottleneck

from .errors import UserError

log = logging.getLogger(__name__)


class Backbone(NamedTuple):
    """What a backbone builder (``dsa.config.BACKBONES``) returns: the trunk (an ``nn.Module`` with
    ``out_channels``: F at stride 16) and the global branch on F (``None`` when the variant has none),
    pretrained weights loaded."""

    trunk: nn.Module
    global_branch: nn.Module | None


class PretrainedWeightsError(UserError):
    """Pretrained weights cannot be found or do not fit; the message says what to do."""


def init_resnet(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming (fan out) convs, BN at weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(cout)


def bottleneck_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """A ResNet-50 stage of torchvision ``Bottleneck`` blocks (same names as ``resnet50().layerN``)."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(*_conv_bn(inplanes, planes * Bottleneck.expansion, 1, stride))
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetTrunk(nn.Module):
    """ResNet-50 conv1..conv4_x (torchvision names); output F has 16 * base_width channels at H/16."""

    def __init__(self, base_width: int = 64, layers: tuple[int, int, int] = (3, 4, 6)) -> None:
        super().__init__()
        b = base_width
        self.base_width = base_width
        self.out_channels = 16 * b
        self.conv1 = nn.Conv2d(3, b, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(b)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = bottleneck_stage(b, b, layers[0], 1)
        self.layer2 = bottleneck_stage(4 * b, 2 * b, layers[1], 2)
        self.layer3 = bottleneck_stage(8 * b, 4 * b, layers[2], 2)
        init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class GroupedBottleneck(nn.Module):
    """``branches`` ResNet bottlenecks run as one block (grouped 1x1/3x3/1x1 convolutions).

    ``shared_input``: every branch reads the same full input (the MF part branches on F), so the
    first 1x1 convolution and the projection are ungrouped; otherwise branch i reads channels
    [i*inplanes, (i+1)*inplanes).  Module names match torchvision's ``Bottleneck``.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, branches: int, stride: int = 1,
                 shared_input: bool = False) -> None:
        super().__init__()
        g, out = branches, planes * self.expansion
        in_total, in_groups = (inplanes, 1) if shared_input else (inplanes * g, g)
        self.conv1, self.bn1 = _conv_bn(in_total, planes * g, 1, groups=in_groups)
        self.conv2, self.bn2 = _conv_bn(planes * g, planes * g, 3, stride, groups=g)
        self.conv3, self.bn3 = _conv_bn(planes * g, out * g, 1, groups=g)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if shared_input or stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(*_conv_bn(in_total, out * g, 1, stride, groups=in_groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class GroupedBasicBlock(nn.Module):
    """``branches`` ResNet-18 basic blocks run as one block; names match torchvision's ``BasicBlock``."""

    def __init__(self, inplanes: int, planes: int, branches: int = 1, stride: int = 1) -> None:
        super().__init__()
        g = branches
        self.conv1, self.bn1 = _conv_bn(inplanes * g, planes * g, 3, stride, groups=g)
        self.conv2, self.bn2 = _conv_bn(planes * g, planes * g, 3, groups=g)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(*_conv_bn(inplanes * g, planes * g, 1, stride, groups=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


def grouped_stage(block: type, inplanes: int, planes: int, blocks: int, branches: int,
                  stride: int, **first_kwargs) -> nn.Sequential:
    """A stage of ``blocks`` batched blocks; the first one may stride / project."""
    expansion = getattr(block, "expansion", 1)
    layers = [block(inplanes, planes, branches, stride, **first_kwargs)]
    layers += [block(planes * expansion, planes, branches) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


@torch.no_grad()
def copy_branch(dst: nn.Module, src: nn.Module, index: int, branches: int) -> None:
    """Copy branch ``index`` of the batched module ``src`` into the plain per-branch module ``dst``.

    Every Conv2d / BatchNorm2d of ``dst`` takes the matching slice (by module name) of the
    output channels of ``src``'s module: that slice is exactly branch ``index``'s parameters.
    """
    src_modules = dict(src.named_modules())
    for name, m in dst.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            continue
        s = src_modules[name]
        n = m.weight.shape[0]
        if s.weight.shape[0] != n * branches:
            raise ValueError(f"{name}: {s.weight.shape[0]} channels are not {branches} x {n}")
        sl = slice(index * n, (index + 1) * n)
        m.weight.copy_(s.weight[sl])
        if isinstance(m, nn.BatchNorm2d):
            m.bias.copy_(s.bias[sl])
            m.running_mean.copy_(s.running_mean[sl])
            m.running_var.copy_(s.running_var[sl])
            m.num_batches_tracked.copy_(s.num_batches_tracked)


# --------------------------------------------------------------------------- ImageNet weights

def _reason(e: BaseException) -> str:
    """An exception as one short line (torch.load's messages run to paragraphs)."""
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{e.__class__.__name__}: {text[:160]}"


def imagenet_cache_path() -> Path:
    """Where torchvision's ResNet-50 ImageNet weights live in the torch hub cache."""
    url = ResNet50_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ResNet-50 ImageNet-1k (V1) weights: from the hub cache, else downloaded.

    Raises PretrainedWeightsError when they are not cached and the download fails (offline).
    """
    weights = ResNet50_Weights.IMAGENET1K_V1
    cached = imagenet_cache_path()
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        if cached.exists():
            raise PretrainedWeightsError(
                f"the cached ImageNet ResNet-50 weights {cached} are unreadable ({_reason(e)}); "
                f"delete the file to download it again, or pass a state dict file") from e
        raise PretrainedWeightsError(
            f"ImageNet ResNet-50 weights are not cached at {cached} and could not be "
            f"downloaded ({_reason(e)}); put {os.path.basename(weights.url)} there "
            f"(from {weights.url}), or pass a saved torchvision resnet50 state dict as a file path, "
            f"or use pretrained='none'") from e


def resolve_pretrained(source: str | os.PathLike | None) -> dict[str, torch.Tensor] | None:
    """Turn a ``pretrained`` argument into a torchvision resnet50 state dict (or None).

    ``None`` / "none": from scratch.  "imagenet": torchvision's weights.  Anything else: a file
    holding a resnet50 state dict, read with ``torch.load(weights_only=True)``.
    """
    if source is None or str(source).lower() in ("", "none"):
        return None
    if str(source).lower() == "imagenet":
        return imagenet_state_dict()
    return read_state_dict_file(Path(source))


def read_state_dict_file(path: Path, error: type[PretrainedWeightsError] = PretrainedWeightsError,
                         what: str = "pretrained weights", hint: str = "") -> dict[str, torch.Tensor]:
    """A state dict from a file (``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` wrapper and
    DDP's ``module.`` prefixes are undone); a missing, unreadable or non-state-dict file is ``error``."""
    if not path.is_file():
        raise error(f"pretrained weights file {path} does not exist; pass 'imagenet', 'none' or a file path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise error(f"cannot read {what} {path} ({_reason(e)}){hint}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise error(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_resnet50_weights(trunk: ResNetTrunk, conv5: nn.Sequential | None,
                          state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load a torchvision resnet50 state dict: conv1..layer3 into ``trunk``, layer4 into ``conv5``.

    ``fc.*`` is ignored.  Missing or mismatched keys raise PretrainedWeightsError naming them.
    """
    if trunk.base_width != 64:
        raise PretrainedWeightsError(
            f"ResNet-50 weights fit only base width 64 (the paper preset), not {trunk.base_width}; "
            f"use pretrained='none' with this preset")
    targets: dict[str, tuple[nn.Module, str]] = {}
    for k in trunk.state_dict():
        targets[k] = (trunk, k)
    if conv5 is not None:
        for k in conv5.state_dict():
            targets["layer4." + k] = (conv5, k)
    missing = sorted(k for k in targets if k not in state)
    ignored = ("fc.",) if conv5 is not None else ("fc.", "layer4.")
    unexpected = sorted(k for k in state if k not in targets and not k.startswith(ignored))
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{source} is not a torchvision resnet50 state dict: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}")
    per_module: dict[int, tuple[nn.Module, OrderedDict]] = {}
    for key, (module, sub) in targets.items():
        want = module.state_dict()[sub]
        if state[key].shape != want.shape:
            raise PretrainedWeightsError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, the network needs {tuple(want.shape)}")
        per_module.setdefault(id(module), (module, OrderedDict()))[1][sub] = state[key]
    for module, sd in per_module.values():
        module.load_state_dict(sd, strict=True)
    log.info("loaded ResNet-50 weights from %s (%d tensors%s)", source, len(targets),
             ", conv5_x initialised from layer4" if conv5 is not None else "")


def build_resnet50(cfg, use_global: bool, pretrained: str | None):
    """The paper's MF-Stream backbone (registered as ``resnet50``): ResNet-50 conv1..conv4_x at
    ``cfg.base_width`` and ``cfg.trunk_blocks``, and a conv5_x global branch (last stride ``cfg.last_stride``);
    ``pretrained`` (none, imagenet, a file) loads torchvision's resnet50 weights where the shapes are
    ResNet-50's (conv5_x only when the global branch is the full 2048-d, 3-block stage)."""
    trunk = ResNetTrunk(cfg.base_width, tuple(cfg.trunk_blocks))
    global_branch = None
    if use_global:
        global_branch = bottleneck_stage(trunk.out_channels, cfg.global_dim // 4, cfg.global_blocks, cfg.last_stride)
        init_resnet(global_branch)
    state = resolve_pretrained(pretrained)
    if state is not None:
        fits = global_branch is not None and cfg.global_dim == 2048 and cfg.global_blocks == 3
        load_resnet50_weights(trunk, global_branch if fits else None, state, source=str(pretrained))
    return Backbone(trunk, global_branch)
