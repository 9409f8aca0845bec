"""The training loop: one step = forward both streams, the recipe's loss, one optimizer step.

There is one loop (``Trainer.fit``) and one step (``Trainer.run_step``); what happens around them —
checkpoints, the log, the recipe's fusion switches, evaluation snapshots, diagnostics — is done by
hooks (``train.hooks``).  The benchmarks time ``run_step`` itself.

The loop is written so that a run can stop at any step boundary and continue *exactly*:

- the sampler's position (epoch, batch) is saved, and every image's augmentation seed is a function of
  (seed, epoch, batch, rank, slot) (``data.sampler.SeededBatches``), independent of DataLoader workers;
- the DataLoader gets its own generator per epoch, so creating one never draws from the global RNG;
- model, optimizer, scheduler, AMP scaler and the Python/NumPy/torch/CUDA random states are saved.

Checkpoints are written at each epoch end, when ``max_steps`` is reached and on SIGINT/SIGTERM (the
signal is noted, the current step finishes, then the checkpoint is written).  A non-finite loss stops
the run with a ``TrainingError`` naming the step and the term, and no checkpoint is written after it,
so the last good one stays; weights that went NaN or infinite after a finite loss (an overflowing
gradient) are never saved either.  Under DDP every rank takes the same decisions: the stop flag and the loss
values are summed over ranks each step.
"""
from __future__ import annotations

import logging
import math
import os
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.io import image_error_text
from data.joint import TrainBatches
from data.runs import Checkpoint, RunFolder
from dsa.errors import UserError

from .distributed import DistInfo, all_reduce_sum, barrier
from .hooks import CheckpointHook, HookBase, LogHook
from .rng import rng_state, set_rng_state

log = logging.getLogger(__name__)

#: a training batch: ``data.joint.BATCH_KEYS`` → tensors
Batch = dict[str, torch.Tensor]
Prepare = Callable[[Batch, torch.device], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]


class TrainingError(UserError):
    """A training problem the user can act on; the CLI prints it and exits 2."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (bitwise-reproducible runs) or cuDNN autotuning (fast runs)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def data_error_sentence(error: BaseException) -> str | None:
    """The sentence of an unreadable image, whether raised here or in a DataLoader worker (where torch
    re-raises it as a generic exception whose message carries the worker's traceback); else None."""
    text = image_error_text(error)
    if text is None:
        return None
    return f"{text}; replace or remove that image (and rerun precompute), then rerun to resume"


def worker_killed_sentence(error: BaseException) -> str | None:
    """The sentence of a DataLoader worker that died (killed by a signal, e.g. the out-of-memory killer,
    or exited): torch raises a RuntimeError naming its pid; else None."""
    text = str(error)
    if isinstance(error, RuntimeError) and "DataLoader worker (pid" in text:
        first = text.strip().splitlines()[0].rstrip(". ")
        return (f"{first}: a data-loading process died (out of memory, or killed); rerun the "
                f"same command to resume from the last checkpoint (with fewer --workers if memory is short)")
    return None


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def autocast_settings(device: torch.device, amp: bool, amp_dtype: str) -> tuple[bool, torch.dtype, bool]:
    """(autocast on, its dtype, loss scaling on): mixed precision on CUDA only; float16 needs the
    GradScaler, bfloat16 (float32's exponent range) does not."""
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, not {amp_dtype!r}")
    on = amp and device.type == "cuda"
    dtype = AMP_DTYPES[amp_dtype]
    return on, dtype, on and dtype == torch.float16


def default_prepare(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """uint8 images and DSAP from the loader → normalised float on ``device`` (never in place)."""
    from dsa.dsap import normalise_dsap
    from dsa.transforms import normalise

    nb = device.type == "cuda"
    images = normalise(batch["image"].to(device, non_blocking=nb))
    dsap = batch["dsap"]
    dsap_t = normalise_dsap(dsap.to(device, non_blocking=nb)) if dsap.numel() else None
    return images, dsap_t, batch["pid"].to(device, non_blocking=nb)


class Trainer:
    """Runs (or resumes) one training run in its run folder.

    Args:
        model: the network (``DSANet`` or any module called as ``model(images, dsap)`` → dict).
        loss_fn: called as ``loss_fn(outputs, pids)`` → ``(total, {name: float})``; its ``last_terms``
            (name, weight, value tensor) are what ``after_loss`` hooks see.
        data: the batches (``data.joint.TrainBatches``: ``epoch(e)`` yields named batches; its ``sampler``
            holds the position); None for a trainer that only times :meth:`run_step` (benchmarks).
        optimizer, scheduler: the scheduler is stepped once per epoch.
        run: the run folder (``data.runs.RunFolder``): checkpoint and log go there (rank 0 writes).
        info: this process's place in the (possibly one-process) world.
        epochs: total epochs; ``max_steps`` stops earlier (a checkpoint is written, not complete).
        config: the run's resolved configuration; every checkpoint carries it (``data.runs``).
        hooks: extra hooks (``train.hooks.HookBase``), after the fusion switches and the log, before the
            checkpoint; ``default_hooks`` adds the log and the checkpoint hooks.
    """

    def __init__(self, *, model: torch.nn.Module, loss_fn: Callable, data: TrainBatches | None,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 run: RunFolder | None, info: DistInfo, epochs: int, max_steps: int | None = None,
                 amp: bool = False, log_every: int = 10, prepare: Prepare = default_prepare,
                 config: dict[str, Any] | None = None, tensorboard: bool = False, progress: bool = True,
                 find_unused_parameters: bool = False, amp_dtype: str = "float16", compile: bool = False,
                 hooks: list[HookBase] | None = None, default_hooks: bool = True) -> None:
        self.info = info
        self.device = info.device
        self.amp, self.amp_dtype, use_scaler = autocast_settings(self.device, amp, amp_dtype)
        self.channels_last = self.device.type == "cuda"
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = self._bare = model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids,
                                                 find_unused_parameters=find_unused_parameters)
        if compile:  # the step's forward graph; checkpoints keep the module's own parameter names
            self.model = torch.compile(self.model)
        self.loss_fn = loss_fn
        self.data, self.sampler = data, (data.sampler if data is not None else None)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.run = run
        self.epochs, self.max_steps = epochs, max_steps
        self.prepare = prepare
        self.config = dict(config or {})
        self.progress = progress and info.is_main
        self.epoch = 0
        self.step = 0
        self.stopped_by = "complete"
        #: per step: the outputs and loss terms (for ``after_loss`` hooks), the batch size and loss values
        self.outputs: dict[str, Any] = {}
        self.loss_terms: list[tuple[str, float, torch.Tensor]] = []
        self.last: dict[str, float] = {}
        self.last_batch_size = 0
        self.finished_epoch_means: dict[str, float] = {}
        self._stop_signal: int | None = None
        self._epoch_sums: dict[str, float] = {}  # loss sums of the current epoch (for its summary record)
        self._epoch_steps = 0
        self._tb = None
        if tensorboard and info.is_main and run is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(run.path / "tensorboard"))
            except ImportError:
                log.warning("TensorBoard is not installed (pip install tensorboard); logging to log.jsonl only")
        self.hooks: list[HookBase] = []
        extra = list(hooks or [])
        self.register_hooks(([LogHook(log_every)] if default_hooks else []) + extra
                            + ([CheckpointHook()] if default_hooks and run is not None else []))

    def register_hooks(self, hooks: list[HookBase]) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    def _call(self, moment: str) -> None:
        for h in self.hooks:
            getattr(h, moment)()

    # ------------------------------------------------------------------ state
    @property
    def checkpoint_path(self) -> Path:
        return self.run.checkpoint_path

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def bare_model(self) -> torch.nn.Module:
        """The network itself, without the DDP and ``torch.compile`` wrappers (its state-dict names)."""
        return self._bare

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def peak_memory_mb(self) -> float:
        return peak_memory_mb(self.device)

    def training_state(self) -> dict[str, Any]:
        """What resuming needs besides the weights: optimizer, schedule, scaler, position, RNG."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "epoch_log": {"sums": dict(self._epoch_sums), "steps": self._epoch_steps},
        }

    def load_state(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint of this run (weights, training state and position)."""
        t = ckpt.training
        self.bare_model.load_state_dict(ckpt.model_state)
        self.optimizer.load_state_dict(t["optimizer"])
        self.scheduler.load_state_dict(t["scheduler"])
        if t.get("scaler"):
            self.scaler.load_state_dict(t["scaler"])
        self.sampler.load_state_dict(t["sampler"])
        set_rng_state(t["rng"])
        self.epoch, self.step = ckpt.info.epoch, ckpt.info.step
        epoch_log = t.get("epoch_log") or {}
        self._epoch_sums = dict(epoch_log.get("sums", {}))
        self._epoch_steps = int(epoch_log.get("steps", 0))

    def _weights_finite(self) -> bool:
        """Are all floating-point weights and buffers finite (on every rank)?"""
        flags = [torch.isfinite(t).all() for t in self.bare_model.state_dict().values() if t.is_floating_point()]
        bad = torch.logical_not(torch.stack(flags).all()).float().reshape(1) if flags else torch.zeros(1)
        if self.info.distributed:
            bad = all_reduce_sum(bad.to(self.device), self.info)
        return not bool(bad.item() > 0)

    def save(self, complete: bool = False) -> None:
        """Rank 0 writes the checkpoint atomically; the others wait for it.

        Weights that became NaN or infinite (a gradient overflowed although every loss was finite)
        are never saved: the run stops with a TrainingError and the last good checkpoint stays."""
        if not self._weights_finite():
            raise TrainingError(
                f"the weights became NaN or infinite by step {self.step} (epoch {self.epoch}) although every "
                f"loss term was finite (a gradient overflowed); training stopped and {self._kept()}")
        if self.info.is_main:
            self.run.write_checkpoint(config=self.config, model_state=self.bare_model.state_dict(),
                                      training=self.training_state(), epoch=self.epoch, step=self.step,
                                      complete=complete)
        barrier(self.info)

    def _kept(self) -> str:
        """What is left on disk: only a checkpoint this process wrote or resumed from (both checked to be
        finite) is "the last good checkpoint"."""
        if self.run is not None and self.checkpoint_path.is_file():
            return f"the last good checkpoint {self.checkpoint_path} was kept"
        return "no checkpoint was written (the run starts from scratch when rerun)"

    def resume_if_possible(self) -> bool:
        """Load the run's checkpoint if there is one; True when resumed."""
        ckpt = self.run.read_checkpoint()
        if ckpt is None:
            return False
        self.resume(ckpt)
        return True

    def resume(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt`` (this run's checkpoint, already loaded) and trim the log to it; a
        checkpoint whose weights are not finite is refused (it is nobody's last good checkpoint)."""
        bad = ckpt.non_finite()
        if bad:
            raise TrainingError(f"the checkpoint {ckpt.path} holds NaN or infinite weights ({len(bad)} tensors, e.g. "
                                f"{bad[0]}), so it cannot be resumed; move it away to start the run again, or use "
                                f"another --run name")
        self.load_state(ckpt)
        if self.info.is_main:
            self.run.trim_log(self.step)
        log.info("resumed %s at epoch %d, step %d", self.run_dir, self.epoch, self.step)

    # ------------------------------------------------------------------ logging
    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the run's ``log.jsonl`` (and TensorBoard); rank 0 only."""
        if not self.info.is_main or self.run is None:
            return
        self.run.append_log(record)
        if self._tb is not None:
            for name, value in record.items():
                if name not in ("step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(name, value, record["step"])

    # ------------------------------------------------------------------ loop
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_signal is None:
            log.warning("%s received: finishing the current step, then saving a checkpoint",
                        signal.Signals(signum).name)
        self._stop_signal = signum

    def _should_stop(self) -> bool:
        flag = torch.tensor([1.0 if self._stop_signal is not None else 0.0])
        if self.info.distributed:
            flag = flag.to(self.device)
            all_reduce_sum(flag, self.info)
        return bool(flag.item() > 0)

    def run_step(self, batch: Batch) -> dict[str, float]:
        """One training step on a complete named batch: forward, loss, backward, optimizer step.  Returns
        the loss terms and the total as floats (averaged over ranks); a non-finite one is a TrainingError
        naming it.  ``before_step`` / ``after_step`` hooks are run by :meth:`fit`, ``after_loss`` here."""
        images, dsap, pids = self.prepare(batch, self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            outputs = self.model(images, dsap)
            total, terms = self.loss_fn(outputs, pids)
        self.outputs, self.loss_terms = outputs, list(getattr(self.loss_fn, "last_terms", []))
        self._call("after_loss")
        names = [*terms, "loss"]  # terms first: a NaN is named by the term that produced it
        values = torch.tensor([*(float(torch.as_tensor(t).detach()) for t in terms.values()),
                               float(total.detach())], dtype=torch.float64)
        if self.info.distributed:
            values = all_reduce_sum(values.to(self.device), self.info).cpu()
        values = (values / self.info.world_size).tolist()
        for name, value in zip(names, values):
            if not math.isfinite(value):
                raise TrainingError(
                    f"the loss term {name!r} became {value} at step {self.step + 1} (epoch {self.epoch}); "
                    f"training stopped and {self._kept()}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.outputs, self.loss_terms = {}, []
        return dict(zip(names, values))

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` (or ``max_steps``, or a signal); returns a summary dict."""
        if self.run is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        started, images_seen, self.stopped_by = time.perf_counter(), 0, "complete"
        total = self.epochs * len(self.data)  # an estimate: epochs differ by a batch or two
        if self.max_steps is not None:
            total = min(total, self.max_steps)
        bar = tqdm(total=max(total, self.step), initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True)
        try:
            self._call("before_train")
            while self.epoch < self.epochs:
                bar.set_description(f"epoch {self.epoch + 1}/{self.epochs}")
                self._call("before_epoch")
                for batch in self.data.epoch(self.epoch):
                    if self.max_steps is not None and self.step >= self.max_steps:
                        self.stopped_by = "max-steps"
                        break
                    if self._should_stop():
                        self.stopped_by = "signal"
                        break
                    self._call("before_step")
                    self.last = self.run_step(batch)
                    self.last_batch_size = int(batch["image"].shape[0])
                    self._epoch_steps += 1
                    for name, value in self.last.items():
                        self._epoch_sums[name] = self._epoch_sums.get(name, 0.0) + value
                    self.step += 1
                    self.sampler.advance()
                    images_seen += self.last_batch_size * self.info.world_size
                    bar.update(1)
                    self._call("after_step")
                    if self.step % 10 == 0:
                        bar.set_postfix(loss=f"{self.last['loss']:.3f}")
                if self.stopped_by != "complete":
                    break
                # epoch end: the schedule moves on, the position goes to the next epoch's start, then the
                # hooks (the log's epoch summary, evaluation, the checkpoint)
                self.finished_epoch_means = ({k: v / self._epoch_steps for k, v in self._epoch_sums.items()}
                                             if self._epoch_steps else {})
                self.scheduler.step()
                self.epoch += 1
                self._epoch_sums, self._epoch_steps = {}, 0
                self.sampler.set_epoch(self.epoch)
                self._call("after_epoch")
                if self.max_steps is not None and self.step >= self.max_steps and self.epoch < self.epochs:
                    self.stopped_by = "max-steps"
                    break
        except Exception as e:
            self.stopped_by = "error"
            sentence = data_error_sentence(e) or worker_killed_sentence(e)
            if sentence is None:
                raise
            raise TrainingError(sentence) from None
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        try:
            self._call("after_train")
        finally:
            if self._tb is not None:
                self._tb.close()
        elapsed = time.perf_counter() - started
        summary = {"stopped_by": self.stopped_by, "epoch": self.epoch, "step": self.step,
                   "images_per_s": images_seen / max(elapsed, 1e-9), "seconds": elapsed,
                   "memory_mb": peak_memory_mb(self.device), "signal": self._stop_signal}
        if self.info.is_main:
            log.info("%s: epoch %d/%d, step %d, %.1f images/s, peak memory %.0f MiB (%s)",
                     self.run_dir.name if self.run is not None else "run", self.epoch, self.epochs, self.step,
                     summary["images_per_s"], summary["memory_mb"], self.stopped_by)
        return summary


def step_trainer(model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, *,
                 device: str | torch.device = "cpu", amp: bool = False, amp_dtype: str = "float16",
                 compile: bool = False, prepare: Prepare = default_prepare) -> Trainer:
    """A trainer without data, run folder or hooks, whose :meth:`Trainer.run_step` is the training step
    itself (mixed precision, channels_last on CUDA, ``torch.compile``): what the benchmarks time."""
    from data.runtime import resolve_device

    dev = resolve_device(device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return Trainer(model=model, loss_fn=loss_fn, data=None, optimizer=optimizer, scheduler=scheduler, run=None,
                   info=DistInfo(device=dev), epochs=1, amp=amp, amp_dtype=amp_dtype, compile=compile,
                   prepare=prepare, progress=False, default_hooks=False)
