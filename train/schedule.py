"""Optimizer and learning-rate schedule of the recipe (paper §4.2).

Adam with weight decay; the learning rate warms up linearly from ``lr_start`` to ``lr_peak`` over
``warmup_epochs`` and is then multiplied by ``lr_decay_gamma`` every ``lr_decay_step`` epochs counted
from the end of the warm-up (paper: 8e-6 → 8e-4 over 20 epochs, then ×0.5 every 40 epochs).
The schedule is a ``LambdaLR`` stepped once per epoch, so its state is a plain epoch counter.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def lr_at(epoch: int, recipe: Any) -> float:
    """The learning rate during (0-based) ``epoch``."""
    if epoch < recipe.warmup_epochs:
        return recipe.lr_start + (recipe.lr_peak - recipe.lr_start) * epoch / recipe.warmup_epochs
    decays = (epoch - recipe.warmup_epochs) // recipe.lr_decay_step
    return recipe.lr_peak * recipe.lr_decay_gamma ** decays


def build_optimizer(params: Iterable[torch.nn.Parameter], recipe: Any) -> torch.optim.Optimizer:
    """Adam at the recipe's peak rate (the scheduler scales it) with the recipe's weight decay."""
    if recipe.optimizer != "adam":
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}; the trainer supports 'adam'")
    return torch.optim.Adam(params, lr=recipe.lr_peak, weight_decay=recipe.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch ``LambdaLR`` giving ``lr_at(epoch, recipe)``; call ``step()`` at each epoch end."""
    peak = recipe.lr_peak
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_at(epoch, recipe) / peak)
