"""DSANet: the two-stream network with its classifiers, its ablation variants and the inference model.

Variants (paper Tables 3-5; CSA input is a data choice, same network):

=============  ======================  ====================  ==========================
variant        MF-Stream branches      DSAG-Stream           fusion
=============  ======================  ====================  ==========================
dsa            global + 8 parts        conv5_g + conv5_l     z = f + d
dsa-concat     global + 8 parts        conv5_g + conv5_l     z = FC([f, d])  (Table 5)
dsa-global     global                  conv5_g               z_G = f_G + d_G
dsa-local      8 parts                 conv5_l               z_L = f_L + d_L
two-branch     global + 8 parts        none                  none
baseline       global (ResNet-50)      none                  none
=============  ======================  ====================  ==========================
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .dsag_stream import DSAGStream
from .errors import UserError
from .heads import Classifier, ConcatFusion, MultiClassifier
from .mf_stream import MFStream
from .config import VARIANTS, ModelConfig

FEATURE_SETS = ("mf", "global", "local")


class ModelError(UserError, ValueError):
    """A configuration or weights that cannot build the network; the message says why."""


def check_variant(variant: str) -> tuple[bool, bool, bool, bool]:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ModelError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}") from None


class DSANet(nn.Module):
    """MF-Stream + DSAG-Stream (training only) + fusion + one classifier per supervised feature.

    ``forward(images, dsap=None)`` returns a dict: ``f_G`` [B, Cg], ``f_L`` [B, 8, Cl] (for the
    branches the variant has), ``d_G``, ``d_L``, ``z_G``, ``z_L`` when the DSAG-Stream runs (it
    runs when the variant has it and ``dsap`` is given), and logits ``logits_fG``, ``logits_fL``
    (list of 8 [B, num_classes]), ``logits_zG``, ``logits_zL``.  ``images``: normalised float
    [B, 3, H, W]; ``dsap``: float [B, 24, 3, S, S] (``dsa.dsap.normalise_dsap``).
    """

    def __init__(self, model_cfg: ModelConfig, num_classes: int, variant: str = "dsa",
                 pretrained: str | None = None) -> None:
        super().__init__()
        use_g, use_l, use_dsag, concat = check_variant(variant)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, not {num_classes}")
        cfg = model_cfg
        self.cfg, self.variant, self.num_classes = cfg, variant, num_classes
        self.use_global, self.use_parts, self.use_dsag = use_g, use_l, use_dsag
        h, n = cfg.classifier_dim, cfg.num_parts
        # built in this order: the MF-Stream and its classifiers first, the DSAG-Stream and the fused heads
        # after, so that under one seed the MF side starts from the same weights in every variant (paired
        # comparisons); registered in the earlier order, so parameter order (and optimizer state) is unchanged
        mf = MFStream(cfg, use_g, use_l, pretrained=pretrained)
        cls_fG = Classifier(cfg.global_dim, h, num_classes) if use_g else None
        cls_fL = MultiClassifier(n, cfg.part_dim, h, num_classes) if use_l else None
        self.mf = mf
        self.dsag = DSAGStream(cfg, use_g, use_l) if use_dsag else None
        self.cls_fG, self.cls_fL = cls_fG, cls_fL
        self.cls_zG = Classifier(cfg.global_dim, h, num_classes) if use_g and use_dsag else None
        self.cls_zL = Classifier(n * cfg.part_dim, h, num_classes) if use_l and use_dsag else None
        self.fuse_G = ConcatFusion(cfg.global_dim) if concat and use_g else None
        self.fuse_L = ConcatFusion(n * cfg.part_dim) if concat and use_l else None
        #: a training mode beyond the paper (set by the trainer's fusion hook, ``dsa.losses.fusion_drop``):
        #: "d" fuses z = f (the DSAG-Stream still runs, d is left out), "f" fuses z = d; None is the paper's.
        #: It acts only while the network trains; evaluation always fuses z = f + d.
        self.fusion_drop: str | None = None

    def forward(self, images: torch.Tensor, dsap: torch.Tensor | None = None) -> dict[str, Any]:
        drop = self.fusion_drop if self.training else None
        if drop not in (None, "d", "f"):
            raise ValueError(f"fusion_drop must be None, 'd' or 'f', not {drop!r}")
        out: dict[str, Any] = dict(self.mf(images))
        if self.cls_fG is not None:
            out["logits_fG"] = self.cls_fG(out["f_G"])
        if self.cls_fL is not None:
            out["logits_fL"] = list(self.cls_fL(out["f_L"]).unbind(dim=1))
        if self.dsag is None or dsap is None:
            return out
        out.update(self.dsag(dsap))
        if self.use_global:
            f, d = self._dropped(out["f_G"], out["d_G"], drop)
            out["z_G"] = self.fuse_G(f, d) if self.fuse_G is not None else f + d
            out["logits_zG"] = self.cls_zG(out["z_G"])
        if self.use_parts:
            f, d = self._dropped(out["f_L"], out["d_L"], drop)
            b = f.shape[0]
            z = (self.fuse_L(f.reshape(b, -1), d.reshape(b, -1)).reshape(f.shape)
                 if self.fuse_L is not None else f + d)
            out["z_L"] = z
            out["logits_zL"] = self.cls_zL(z.reshape(b, -1))
        return out


    @staticmethod
    def _dropped(f: torch.Tensor, d: torch.Tensor, drop: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, d) with the dropped one zeroed; multiplied by 0, not removed, so that every parameter
        stays in the graph (DistributedDataParallel needs that) and the result is exactly f or d."""
        if drop == "d":
            return f, d * 0.0
        if drop == "f":
            return f * 0.0, d
        return f, d


class InferenceModel(nn.Module):
    """The re-ID feature extractor: MF-Stream only (no DSAG-Stream, no DSAP, no classifiers).

    ``feature_set``: ``mf`` = f_G ⊕ flatten(f_L) (the paper's inference; whichever of the two the
    variant has), ``global`` = f_G, ``local`` = flatten(f_L).  ``forward(images)`` -> [B, D]
    from normalised float images; the input is not modified.
    """

    def __init__(self, model: DSANet | MFStream, feature_set: str = "mf") -> None:
        super().__init__()
        mf = model.mf if isinstance(model, DSANet) else model
        if not isinstance(mf, MFStream):
            raise TypeError(f"InferenceModel needs a DSANet or an MFStream, not {type(model).__name__}")
        if feature_set not in FEATURE_SETS:
            raise ModelError(f"unknown feature set {feature_set!r}; choose one of: {', '.join(FEATURE_SETS)}")
        has_g, has_l = mf.global_branch is not None, mf.part_branch is not None
        if (feature_set == "global" and not has_g) or (feature_set == "local" and not has_l):
            raise ModelError(f"feature set {feature_set!r} needs the "
                             f"{'global' if feature_set == 'global' else 'part'} branch, which this model lacks")
        self.mf, self.feature_set = mf, feature_set
        self.use_global = has_g and feature_set in ("mf", "global")
        self.use_parts = has_l and feature_set in ("mf", "local")
        self.dim = (mf.cfg.global_dim if self.use_global else 0) + \
                   (mf.cfg.num_parts * mf.cfg.part_dim if self.use_parts else 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.mf(images)
        feats = []
        if self.use_global:
            feats.append(out["f_G"])
        if self.use_parts:
            feats.append(out["f_L"].flatten(1))
        return torch.cat(feats, dim=1) if len(feats) > 1 else feats[0]


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DistributedDataParallel / torch.compile wrappers' key prefixes."""
    out = {}
    for k, v in state.items():
        for p in ("module.", "_orig_mod."):
            k = k.removeprefix(p)
        out[k] = v
    return out


def build_dsanet(model_cfg: ModelConfig, num_classes: int, variant: str,
                 state_dict: dict[str, torch.Tensor]) -> DSANet:
    """A DSANet of this configuration with these weights (a trained network, for evaluation).

    ``state_dict`` may carry DistributedDataParallel / ``torch.compile`` prefixes; weights that do not
    fit the configuration raise ModelError with a sentence naming the first ones that differ.
    """
    try:
        net = DSANet(model_cfg, int(num_classes), variant=str(variant))
    except (TypeError, ValueError) as e:
        raise ModelError(f"the model configuration cannot build a network ({e})") from None
    state = strip_prefixes(state_dict)
    own = net.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise ModelError(f"the weights do not fit a {variant!r} network: "
                         f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ModelError(f"the weights have other shapes than the configuration says, first {bad[0]!r}: "
                         f"{tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}")
    net.load_state_dict(state)
    return net
