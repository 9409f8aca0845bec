"""The product's training step on random inputs, for the benchmarks that time a step.

``training_step(what, preset, batch, device)`` returns a ``train.trainer.Trainer`` without data (its
``run_step`` is the step the trainer runs: normalisation, autocast, forward, the recipe's loss, backward,
the optimizer step) and a named batch to feed it.  ``what``: ``dsa`` / ``two-branch`` (the whole network
and the recipe's loss), or ``dsag-batched`` / ``dsag-loop`` (the DSAG-Stream alone, batched or as its
per-branch loop with the same weights, under a mean-square loss on d).
"""
from __future__ import annotations

import torch
from torch import nn


class _DSAGOnly(nn.Module):
    def __init__(self, dsag: nn.Module) -> None:
        super().__init__()
        self.dsag = dsag

    def forward(self, images: torch.Tensor, dsap: torch.Tensor | None = None) -> dict:
        return self.dsag(dsap)


def _dsag_loss(out: dict, pids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    total = out["d_G"].float().square().mean() + out["d_L"].float().square().mean()
    return total, {"d_square": total}


def random_batch(preset: str, batch: int, seed: int = 0) -> tuple[object, dict, int]:
    """(the preset's configuration, a named uint8 batch of ``batch`` images rounded down to whole
    identities of K images, the number of identities)."""
    from dsa.config import get_preset

    g = torch.Generator().manual_seed(seed)
    cfg = get_preset(preset)
    k = cfg.recipe.batch_k
    b = batch - batch % k
    m = cfg.model
    data = {"image": torch.randint(0, 256, (b, 3, m.height, m.width), dtype=torch.uint8, generator=g),
            "dsap": torch.randint(0, 256, (b, 24, 3, m.dsap_size, m.dsap_size), dtype=torch.uint8, generator=g),
            "pid": torch.arange(b) // k, "camid": torch.zeros(b, dtype=torch.int64), "index": torch.arange(b)}
    return cfg, data, b // k


def training_step(what: str, preset: str, batch: int, device: str | torch.device = "cpu", *, amp: bool = False,
                  amp_dtype: str = "float16", compile: bool = False):
    """(trainer, batch): ``trainer.run_step(batch)`` is one training step of ``what`` (see the module)."""
    from dsa.losses import DSALoss
    from dsa.model import DSANet
    from train.schedule import build_optimizer
    from train.trainer import step_trainer

    cfg, data, ids = random_batch(preset, batch)
    torch.manual_seed(0)
    if what in ("dsa", "two-branch"):
        model, loss = DSANet(cfg.model, ids, variant=what), DSALoss(cfg.recipe, what)
        if what == "two-branch":
            data = {**data, "dsap": torch.empty(0, dtype=torch.uint8)}
    elif what in ("dsag-batched", "dsag-loop"):
        from dsa.dsag_stream import DSAGStream

        dsag = DSAGStream(cfg.model)
        model, loss = _DSAGOnly(dsag.to_per_branch() if what == "dsag-loop" else dsag), _dsag_loss
    else:
        raise ValueError(f"unknown step {what!r}")
    trainer = step_trainer(model, loss, build_optimizer(model.parameters(), cfg.recipe), device=device, amp=amp,
                           amp_dtype=amp_dtype, compile=compile)
    return trainer, data
