"""Losses (paper §3.2.4, §4.2): label-smoothed ID loss, batch-hard triplet loss, the DSA total.

Total for the two-stream variants (weights from the recipe, 0.5 / 1.5 / 1.0 in the paper)::

    w_id_mf    * (ID(f_G) + R_i ID(f_L,i))
  + w_triplet  * (Tri(z_G) + Tri(z_L))
  + w_id_fused * (ID(z_G) + ID(z_L))

where R is the *mean* over the 8 parts by default (``recipe.part_id_reduction``): the 8 part
classifiers then weigh as much together as the global one, so the parts do not swamp the loss at
the start (8 x ln(num_classes)); "sum" is available.  Variants without the DSAG-Stream have no
fused features: the triplet terms go on f_G / f_L, and the fused ID weight is added to the MF ID
weight (ID on f weighs w_id_mf + w_id_fused), which keeps the paper's ID : triplet balance.
Variants without a global (part) branch simply have no global (part) terms.

Switches beyond the paper (``Recipe`` fields, all off in the paper's recipe; issue 14), for the fused
variants only:

- ``w_triplet_mf`` x (Tri(f_G) + Tri(f_L)): direct triplet supervision of the kept features;
- ``w_distill`` x (SP(f_G, d_G) + SP(f_L, d_L)): similarity-preserving distillation (Tung & Mori,
  ICCV 2019): the mean squared difference of the batch's cosine-similarity matrices of f and of d,
  d detached, so d's view of which images are alike is taught to f and d is not pulled towards f;
- ``drop_d`` / ``dsag_first_epochs``: which stream is left out of z = f + d in a step
  (:func:`fusion_drop`, applied by the trainer's fusion hook through the network's ``fusion_drop``
  training mode). In the DSAG-first epochs z = d and the f-only terms (ID on f; the triplet on f and
  the distillation when switched on) still train f.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import check_variant
from .config import Recipe


class CrossEntropyLabelSmooth(nn.Module):
    """Cross entropy against (1 - eps) * one_hot + eps / K (Szegedy et al.); eps = 0 is plain CE."""

    def __init__(self, eps: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"label smoothing eps must be in [0, 1), not {eps}")
        self.eps = eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.eps)


class TripletBatchHard(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances, vectorised.

    For each anchor: the farthest same-identity sample and the nearest other-identity sample;
    loss = mean over anchors of relu(d_ap - d_an + margin).  Anchors with no positive other than
    themselves or no negative in the batch are left out (they give no triplet).
    """

    def __init__(self, margin: float = 0.3) -> None:
        super().__init__()
        self.margin = margin

    @staticmethod
    def distances(x: torch.Tensor) -> torch.Tensor:
        """Pairwise Euclidean distances [B, B]; the clamp keeps the gradient finite at 0."""
        sq = (x * x).sum(dim=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
        return d2.clamp_min(1e-12).sqrt()

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = features.float().flatten(1)
        dist = self.distances(x)
        same = targets[:, None] == targets[None, :]
        eye = torch.eye(len(targets), dtype=torch.bool, device=x.device)
        pos, neg = same & ~eye, ~same
        d_ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)
        d_an = dist.masked_fill(~neg, float("inf")).amin(dim=1)
        valid = pos.any(dim=1) & neg.any(dim=1)
        if not bool(valid.any()):
            return x.sum() * 0.0           # keeps the graph; no triplet in this batch
        return F.relu(d_ap[valid] - d_an[valid] + self.margin).mean()


def similarity_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the [B, B] cosine-similarity matrices of ``student`` and the
    detached ``teacher`` (both flattened to [B, D]); 0 when their similarity structures agree."""
    s = F.normalize(student.float().flatten(1), dim=1)
    t = F.normalize(teacher.detach().float().flatten(1), dim=1)
    return ((s @ s.t() - t @ t.t()) ** 2).mean()


def fusion_drop(recipe: Recipe, epoch: int, step: int, seed: int = 0) -> str | None:
    """Which stream is left out of the fusion at (0-based) ``epoch`` / global ``step``: ``"f"`` in the
    DSAG-first epochs, ``"d"`` in a ``drop_d`` fraction of the other steps, else None (the paper).

    The choice is a pure function of (seed, step), so a resumed run makes the same choices and two
    runs with the same seed drop d in the same steps."""
    if epoch < recipe.dsag_first_epochs:
        return "f"
    if recipe.drop_d <= 0.0:
        return None
    import numpy as np

    u = np.random.default_rng([int(seed) % 2**32, int(step), 14]).random()
    return "d" if u < recipe.drop_d else None


class DSALoss(nn.Module):
    """The weighted DSA loss for a ``DSANet`` output dict; see the module docstring.

    ``forward(out, targets)`` -> (total, terms): ``terms`` maps each weighted term's name
    (``id_fG``, ``id_fL``, ``tri_zG``/``tri_fG``, ``tri_zL``/``tri_fL``, ``id_zG``, ``id_zL``) to its
    unweighted value as a Python float, so a trainer can log each one and name a NaN term.
    """

    def __init__(self, recipe: Recipe, variant: str = "dsa") -> None:
        super().__init__()
        use_g, use_l, self.fused, _ = check_variant(variant)
        self.use_global, self.use_parts = use_g, use_l
        self.recipe, self.variant = recipe, variant
        self.id_loss = CrossEntropyLabelSmooth(recipe.label_smoothing)
        self.triplet = TripletBatchHard(recipe.margin)
        self.w_id_f = recipe.w_id_mf + (0.0 if self.fused else recipe.w_id_fused)
        #: (name, weight, unweighted term tensor) of the last call, for gradient diagnostics
        self.last_terms: list[tuple[str, float, torch.Tensor]] = []

    def forward(self, out: dict, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        r = self.recipe
        if self.fused and "z_G" not in out and "z_L" not in out:
            raise ValueError(f"variant {self.variant!r} is trained on fused features: run the model with DSAP images")
        named: list[tuple[str, float, torch.Tensor]] = []   # (name, weight, value)
        src = "z" if self.fused else "f"
        if self.use_global:
            named.append(("id_fG", self.w_id_f, self.id_loss(out["logits_fG"], targets)))
        if self.use_parts:
            parts = torch.stack([self.id_loss(lg, targets) for lg in out["logits_fL"]])
            named.append(("id_fL", self.w_id_f, parts.mean() if r.part_id_reduction == "mean" else parts.sum()))
        if self.use_global:
            named.append((f"tri_{src}G", r.w_triplet, self.triplet(out[f"{src}_G"], targets)))
        if self.use_parts:
            named.append((f"tri_{src}L", r.w_triplet, self.triplet(out[f"{src}_L"], targets)))
        if self.fused and self.use_global:
            named.append(("id_zG", r.w_id_fused, self.id_loss(out["logits_zG"], targets)))
        if self.fused and self.use_parts:
            named.append(("id_zL", r.w_id_fused, self.id_loss(out["logits_zL"], targets)))
        if self.fused and r.w_triplet_mf > 0:
            for key, name in (("f_G", "tri_fG"), ("f_L", "tri_fL")):
                if key in out:
                    named.append((name, r.w_triplet_mf, self.triplet(out[key], targets)))
        if self.fused and r.w_distill > 0:
            for br in ("G", "L"):
                if f"f_{br}" in out and f"d_{br}" in out:
                    named.append((f"distill_{br}", r.w_distill,
                                  similarity_distillation(out[f"f_{br}"], out[f"d_{br}"])))
        self.last_terms = named
        values = torch.stack([v for _, _, v in named])
        weights = torch.tensor([w for _, w, _ in named], dtype=values.dtype, device=values.device)
        total = (weights * values).sum()
        floats = values.detach().cpu().tolist()              # one device sync for all terms
        return total, {name: f for (name, _, _), f in zip(named, floats)}
