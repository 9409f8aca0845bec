"""Assemble a run from its options: dataset, DSAP store, model, loss, sampler, optimizer, schedule.

``train_run(options)`` resolves the configuration, writes ``config.json``, checks a resumed run's
saved configuration against it, builds everything and hands over to ``Trainer``.  Every problem a user
can fix (unknown preset, missing dataset, a store that does not fit, a checkpoint of another
configuration) comes out as a ``TrainingError`` with one sentence.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.datasets import DatasetError, build_dataset
from data.io import atomic_write_json
from data.joint import JointDataset
from data.sampler import PKSampler
from data.store import DSAPStore, StoreError, store_dir
from data.transforms import build_train_transform

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .distributed import DistInfo, init_distributed, shutdown
from .schedule import build_optimizer, build_scheduler
from .trainer import Trainer, TrainingError, seed_everything, set_deterministic

log = logging.getLogger(__name__)

#: configuration entries a resumed run must share with the saved one (the others may change)
MUST_MATCH = ("dataset", "estimator", "tag", "input", "preset", "variant", "pretrained", "seed", "batch_p",
              "batch_k", "random_erasing", "label_smoothing", "world_size", "num_classes", "model", "recipe")


@dataclass
class RunOptions:
    """The ``python -m train`` options (see its ``--help``)."""

    dataset: str
    run_name: str
    root: str = "datasets"
    estimator: str = "synthetic"
    tag: str | None = None
    preset: str = "small"
    variant: str = "dsa"
    input_kind: str = "dsap"
    pretrained: str = "none"
    seed: int = 0
    epochs: int | None = None
    max_steps: int | None = None
    batch_p: int | None = None
    batch_k: int | None = None
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    deterministic: bool = False
    runs_dir: str = "runs"
    no_random_erasing: bool = False
    no_label_smoothing: bool = False
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    out = {k: config.get(k) for k in MUST_MATCH}
    out["recipe"] = {k: v for k, v in (out["recipe"] or {}).items() if k != "epochs"}
    return out


def check_same_config(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """A resumed run must have the configuration it was started with; say which entries differ."""
    a, b = _comparable(saved), _comparable(current)
    diffs = []
    for key in MUST_MATCH:
        if a[key] != b[key]:
            if isinstance(a[key], dict) and isinstance(b[key], dict):
                sub = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k))
                diffs.append(f"{key} ({', '.join(sub)})")
            else:
                diffs.append(f"{key} (saved {a[key]!r}, now {b[key]!r})")
    if diffs:
        raise TrainingError(
            f"the run at {where} was started with another configuration: {'; '.join(diffs)}; "
            f"use another --run name, or rerun with the saved options (see {where / 'config.json'})")


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The run's checkpoint (None when there is none); an unreadable one is a sentence."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise TrainingError(f"cannot read the checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                            f"move it away to start the run afresh, or use another --run name") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise TrainingError(f"{path} is not a checkpoint written by `python -m train`; use another --run name")
    return ckpt


def _read_config(path: Path) -> dict[str, Any] | None:
    """A run's saved config.json (None when there is none); an unreadable one is a sentence."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainingError(f"cannot read the run's configuration {path} ({e}); remove it or use another --run name") from None
    if not isinstance(config, dict):
        raise TrainingError(f"the run's configuration {path} is not a JSON object; remove it or use another --run name")
    return config


def _open_store(opts: RunOptions, size: int) -> DSAPStore:
    folder = store_dir(opts.root, opts.dataset, opts.estimator, opts.tag)
    store = DSAPStore(folder)
    if store.kind != opts.input_kind:
        raise TrainingError(f"the store at {folder} holds {store.kind!r} part images but --input {opts.input_kind} "
                            f"was asked for; precompute with --kind {opts.input_kind} (and a --tag) or change --input")
    if store.size != size:
        raise TrainingError(f"the store at {folder} has {store.size}x{store.size} part images but the preset "
                            f"expects S={size}; precompute with --size {size} or choose another preset")
    if store.estimator != opts.estimator:
        raise TrainingError(f"the store at {folder} was computed by estimator {store.estimator!r}, "
                            f"not {opts.estimator!r}")
    return store


def train_run(opts: RunOptions) -> dict[str, Any]:
    """Train (or resume) the run described by ``opts``; returns the trainer's summary."""
    from dsa.backbone import PretrainedWeightsError
    from dsa.losses import DSALoss
    from dsa.model import DSANet, ModelError, check_variant
    from dsa.presets import get_preset

    try:
        preset = get_preset(opts.preset)
        use_dsap = check_variant(opts.variant)[2]
    except ValueError as e:
        raise TrainingError(str(e)) from None
    recipe = preset.recipe
    changes: dict[str, Any] = {}
    if opts.epochs is not None:
        changes["epochs"] = opts.epochs
    if opts.batch_p is not None:
        changes["batch_p"] = opts.batch_p
    if opts.batch_k is not None:
        changes["batch_k"] = opts.batch_k
    if opts.no_random_erasing:
        changes["random_erasing"] = 0.0
    if opts.no_label_smoothing:
        changes["label_smoothing"] = 0.0
    recipe = recipe.replace(**changes)
    model_cfg = preset.model

    try:
        info = init_distributed(opts.device)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    try:
        set_deterministic(opts.deterministic)
        seed_everything(opts.seed)
        try:
            dataset = build_dataset(opts.dataset, opts.root)
            store = _open_store(opts, model_cfg.dsap_size) if use_dsap else None
            transform = build_train_transform(model_cfg.height, model_cfg.width, pad=recipe.pad,
                                              flip_p=recipe.flip, erasing_p=recipe.random_erasing)
            joint = JointDataset(dataset.train, dataset.root, store, transform, use_dsap=use_dsap)
        except (DatasetError, StoreError) as e:
            raise TrainingError(str(e)) from None

        run_dir = Path(opts.runs_dir) / opts.run_name
        config = {
            "dataset": opts.dataset, "root": str(opts.root), "estimator": opts.estimator, "tag": opts.tag,
            "store": str(store.folder) if store is not None else None, "input": opts.input_kind,
            "preset": preset.name, "variant": opts.variant, "pretrained": opts.pretrained, "seed": opts.seed,
            "epochs": recipe.epochs, "max_steps": opts.max_steps, "batch_p": recipe.batch_p,
            "batch_k": recipe.batch_k, "random_erasing": recipe.random_erasing,
            "label_smoothing": recipe.label_smoothing, "workers": opts.workers, "device": str(info.device),
            "amp": opts.amp and info.device.type == "cuda", "deterministic": opts.deterministic,
            "world_size": info.world_size, "num_classes": dataset.num_train_pids,
            "num_train_images": len(dataset.train), "model": model_cfg.to_dict(), "recipe": recipe.to_dict(),
        }
        ckpt = _read_checkpoint(run_dir / CHECKPOINT_NAME)
        saved = ckpt.get("config") if ckpt is not None else _read_config(run_dir / "config.json")
        if saved is not None:
            check_same_config(saved, config, run_dir)

        try:
            model = DSANet(model_cfg, dataset.num_train_pids, variant=opts.variant,
                           pretrained=None if opts.pretrained == "none" else opts.pretrained)
        except (PretrainedWeightsError, ModelError) as e:
            raise TrainingError(str(e)) from None
        loss_fn = DSALoss(recipe, opts.variant, seed=opts.seed)
        try:
            sampler = PKSampler(joint.pids, recipe.batch_p, recipe.batch_k, seed=opts.seed,
                                rank=info.rank, world_size=info.world_size)
        except ValueError as e:
            raise TrainingError(f"cannot form batches for {opts.dataset}: {e}") from None
        optimizer = build_optimizer(model.parameters(), recipe)
        scheduler = build_scheduler(optimizer, recipe)
        # written only once everything is built: a start that failed on a fixable problem (weights
        # file, store, batch size) leaves no configuration behind that would refuse the corrected one
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / "config.json", config)
        meta = {"model_config": model_cfg.to_dict(), "preset": preset.name, "variant": opts.variant,
                "num_classes": dataset.num_train_pids, "config": config}
        trainer = Trainer(model=model, loss_fn=loss_fn, dataset=joint, sampler=sampler, optimizer=optimizer,
                          scheduler=scheduler, run_dir=run_dir, info=info, epochs=recipe.epochs,
                          max_steps=opts.max_steps, amp=opts.amp, workers=opts.workers,
                          log_every=opts.log_every, meta=meta, tensorboard=opts.tensorboard,
                          progress=opts.progress, find_unused_parameters=False)
        if ckpt is not None:
            try:
                trainer.resume(ckpt)
            except (KeyError, ValueError, RuntimeError) as e:
                raise TrainingError(f"the checkpoint {run_dir / CHECKPOINT_NAME} does not fit this run "
                                    f"({type(e).__name__}: {str(e).splitlines()[0]}); use another --run name") from None
            del ckpt
        if trainer.epoch >= recipe.epochs:
            log.info("run %s is already complete (%d epochs); nothing to do", run_dir, trainer.epoch)
            return {"stopped_by": "complete", "epoch": trainer.epoch, "step": trainer.step}
        return trainer.fit()
    finally:
        shutdown(info)

