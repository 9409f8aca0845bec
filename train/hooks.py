"""Trainer hooks: what happens around the training step, apart from the step itself.

A hook subclasses :class:`HookBase` and overrides the moments it needs; the trainer calls every
registered hook in order at each moment (fast-reid's ``HookBase`` is the model):

===============  ==========================================================================
before_train     once, after the weights and the position are loaded
before_epoch     at the start of each epoch (``trainer.epoch`` is the epoch about to run)
before_step      before each step (``trainer.step`` steps are done)
after_loss       after the forward pass and the loss, before backward (``trainer.outputs``,
                 ``trainer.loss_terms``: (name, weight, value tensor) of each loss term)
after_step       after the optimizer step (``trainer.last``: the step's loss values)
after_epoch      after an epoch and the schedule's step (``trainer.epoch`` epochs are done)
after_train      once, however training ended (``trainer.stopped_by``)
===============  ==========================================================================

The hooks here are the product's: checkpoints, the training log, the recipe's fusion switches and
periodic evaluation.  Research code adds its own (gradient diagnostics, say) through the same
interface, passed to ``train.run.train_run(..., hooks=[...])``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class HookBase:
    """Does nothing at every moment; subclasses override what they need.  ``self.trainer`` is set when
    the hook is registered."""

    trainer: Any  # the train.trainer.Trainer that registered the hook

    def before_train(self) -> None: ...
    def before_epoch(self) -> None: ...
    def before_step(self) -> None: ...
    def after_loss(self) -> None: ...
    def after_step(self) -> None: ...
    def after_epoch(self) -> None: ...
    def after_train(self) -> None: ...


class FusionHook(HookBase):
    """The recipe's fusion switches beyond the paper (``drop_d``, ``dsag_first_epochs``): before each step
    it sets the network's ``fusion_drop`` training mode from ``dsa.losses.fusion_drop`` — a pure function
    of (seed, epoch, step), so a resumed run and every variant of a seed make the same choices."""

    def __init__(self, recipe: Any, seed: int) -> None:
        self.recipe, self.seed = recipe, seed

    def before_step(self) -> None:
        from dsa.losses import fusion_drop

        self.trainer.bare_model.fusion_drop = fusion_drop(self.recipe, self.trainer.epoch, self.trainer.step,
                                                          self.seed)

    def after_train(self) -> None:
        self.trainer.bare_model.fusion_drop = None


class LogHook(HookBase):
    """``log.jsonl`` (and TensorBoard): every ``every`` steps a record of the loss terms, the learning
    rate, images/s and memory; at each epoch end the epoch's means (rank 0 writes)."""

    def __init__(self, every: int = 10) -> None:
        self.every = max(1, every)

    def before_epoch(self) -> None:
        self._tick = self._epoch_start = time.perf_counter()
        self._tick_images = self._epoch_images = 0
        self._lr = self.trainer.lr

    def after_step(self) -> None:
        t = self.trainer
        n = t.last_batch_size * t.info.world_size
        self._tick_images += n
        self._epoch_images += n
        if t.step % self.every == 0:
            now = time.perf_counter()
            t.log({"step": t.step, "epoch": t.epoch, **t.last, "lr": t.lr,
                   "images_per_s": self._tick_images / max(now - self._tick, 1e-9), "memory_mb": t.peak_memory_mb()})
            self._tick, self._tick_images = now, 0

    def after_epoch(self) -> None:
        t = self.trainer
        means = t.finished_epoch_means
        if means:
            t.log({"step": t.step, "epoch": t.epoch - 1, "event": "epoch_end", **means, "lr": self._lr,
                   "images_per_s": self._epoch_images / max(time.perf_counter() - self._epoch_start, 1e-9),
                   "memory_mb": t.peak_memory_mb()})


class EvalHook(HookBase):
    """Every ``period`` epochs (and after the last one) ``evaluate(trainer)`` → a dict of metrics, logged
    as an ``"event": "eval"`` record in ``log.jsonl`` and kept in :attr:`history` (rank 0 evaluates)."""

    def __init__(self, period: int, evaluate: Callable[[Any], dict[str, Any]]) -> None:
        if period < 1:
            raise ValueError(f"the evaluation period must be at least 1 epoch, not {period}")
        self.period, self.evaluate = period, evaluate
        self.history: list[dict[str, Any]] = []

    def after_epoch(self) -> None:
        t = self.trainer
        if not t.info.is_main or (t.epoch % self.period and t.epoch < t.epochs):
            return
        metrics = self.evaluate(t)
        record = {"step": t.step, "epoch": t.epoch, "event": "eval", **metrics}
        self.history.append(record)
        t.log(record)


class CheckpointHook(HookBase):
    """``checkpoint.pt`` at every epoch end, and when training stops early (``max_steps``, a signal)."""

    def after_epoch(self) -> None:
        self.trainer.save(complete=self.trainer.epoch >= self.trainer.epochs)

    def after_train(self) -> None:
        if self.trainer.stopped_by not in ("complete", "error"):
            self.trainer.save(complete=False)
