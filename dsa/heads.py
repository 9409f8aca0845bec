"""Classifiers and the concatenation fusion (paper §3.2.3-3.2.4, Table 5).

Each ID loss has its own classifier of two FC layers (paper §3.2.4): feature -> FC -> BN -> ReLU
-> FC -> logits (softmax is in the loss).  The BatchNorm after the first FC keeps the hidden layer
well scaled whatever the feature's magnitude (f and z = f + d differ in scale), as in the common
re-ID "ClassBlock"; it adds no cost at inference because classifiers are not used there.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _init_classifier(hidden: nn.Module, out: nn.Module) -> None:
    nn.init.kaiming_normal_(hidden.weight, a=0, mode="fan_out")
    nn.init.zeros_(hidden.bias)
    nn.init.normal_(out.weight, std=0.001)
    nn.init.zeros_(out.bias)


class Classifier(nn.Module):
    """Two-FC classifier: [B, in_dim] -> [B, num_classes] logits."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, num_classes)
        _init_classifier(self.fc1, self.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.bn(self.fc1(x))))


class MultiClassifier(nn.Module):
    """``n`` independent two-FC classifiers, one per part, run batched (einsum, no module loop).

    ``forward(x)`` with x [B, n, in_dim] returns [B, n, num_classes]: part i's logits come from
    its own weights ``fc1_weight[i]``, ``fc2_weight[i]``.
    """

    def __init__(self, n: int, in_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.n, self.hidden = n, hidden
        self.fc1_weight = nn.Parameter(torch.empty(n, hidden, in_dim))
        self.fc1_bias = nn.Parameter(torch.zeros(n, hidden))
        self.bn = nn.BatchNorm1d(n * hidden)       # per-channel, hence per-part
        self.relu = nn.ReLU(inplace=True)
        self.fc2_weight = nn.Parameter(torch.empty(n, num_classes, hidden))
        self.fc2_bias = nn.Parameter(torch.zeros(n, num_classes))
        nn.init.normal_(self.fc1_weight, std=math.sqrt(2.0 / hidden))   # Kaiming, fan out
        nn.init.normal_(self.fc2_weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = torch.einsum("bni,nhi->bnh", x, self.fc1_weight) + self.fc1_bias
        h = self.relu(self.bn(h.reshape(b, self.n * self.hidden))).reshape(b, self.n, self.hidden)
        return torch.einsum("bnh,nch->bnc", h, self.fc2_weight) + self.fc2_bias

    def part(self, i: int) -> Classifier:
        """Part i's classifier as a plain ``Classifier`` with the same weights (the reference)."""
        c = Classifier(self.fc1_weight.shape[2], self.hidden, self.fc2_weight.shape[1])
        with torch.no_grad():
            c.fc1.weight.copy_(self.fc1_weight[i])
            c.fc1.bias.copy_(self.fc1_bias[i])
            c.fc2.weight.copy_(self.fc2_weight[i])
            c.fc2.bias.copy_(self.fc2_bias[i])
            sl = slice(i * self.hidden, (i + 1) * self.hidden)
            c.bn.weight.copy_(self.bn.weight[sl])
            c.bn.bias.copy_(self.bn.bias[sl])
            c.bn.running_mean.copy_(self.bn.running_mean[sl])
            c.bn.running_var.copy_(self.bn.running_var[sl])
        return c.to(self.fc1_weight.device).train(self.training)


class ConcatFusion(nn.Module):
    """Table 5 ablation: z = FC([f, d]) instead of z = f + d (same output size as f)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * dim, dim)

    def forward(self, f: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([f, d], dim=1))
