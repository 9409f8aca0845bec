"""Assemble a run from its options: dataset, DSAP store, model, loss, sampler, optimizer, schedule.

``train_run(options)`` resolves the configuration, writes ``config.json``, checks a resumed run's
saved configuration against it, builds everything and hands over to ``Trainer``.  Every problem a user
can fix (unknown preset, missing dataset, a store that does not fit, a checkpoint of another
configuration) is a ``dsa.errors.UserError`` with one sentence.  The run folder, its configuration and
its checkpoint belong to ``data.runs``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.datasets import build_dataset
from data.joint import JointDataset
from data.io import release_lock
from data.runs import LOCK_NAME, RunFolder, check_name
from data.runtime import apply_threads, default_workers
from data.sampler import PKSampler
from data.store import open_store
from data.transforms import build_train_transform

from .distributed import init_distributed, shutdown
from .schedule import build_optimizer, build_scheduler
from .trainer import Trainer, TrainingError, seed_everything, set_deterministic

log = logging.getLogger(__name__)

#: configuration entries a resumed run must share with the saved one (the others may change)
MUST_MATCH = ("dataset", "estimator", "tag", "input", "preset", "variant", "pretrained", "seed", "batch_p",
              "batch_k", "random_erasing", "label_smoothing", "world_size", "num_classes", "model", "recipe",
              "init")


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
    init: str | None = None
    overrides: tuple[str, ...] = ()
    seed: int = 0
    epochs: int | None = None
    max_steps: int | None = None
    batch_p: int | None = None
    batch_k: int | None = None
    workers: int | None = None
    threads: int = 0                # intra-op CPU threads (0: data.runtime's thread policy)
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "float16"      # float16 (with loss scaling) or bfloat16 (Ampere and later)
    compile: bool = False           # torch.compile the training step's model
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


def check_store_fits(store: Any, dataset: Any) -> None:
    """Refuse, up front, a store that holds images precompute could not read, or whose images changed
    since it was computed (a TrainingError listing a few of them)."""
    train_keys = {it.key for it in dataset.train}
    unreadable = [f for f in store.unreadable() if f.get("key") in train_keys]
    if unreadable:
        examples = "; ".join(f"{f['key']} ({f['reason']})" for f in unreadable[:3])
        raise TrainingError(f"{len(unreadable)} training image(s) could not be read when the store was computed: "
                            f"{examples}; replace or remove them, rerun `make precompute`, then rerun training")
    stale = store.stale_keys(dataset.root, sorted(train_keys))
    if stale:
        raise TrainingError(f"{len(stale)} training image(s) changed since the store {store.folder} was computed "
                            f"(e.g. {', '.join(stale[:3])}); rerun `make precompute`, which recomputes them")


def train_run(opts: RunOptions) -> dict[str, Any]:
    """Train (or resume) the run described by ``opts``; returns the trainer's summary."""
    from dsa.losses import DSALoss
    from dsa.model import DSANet, check_variant
    from dsa.presets import apply_overrides, get_preset, parse_overrides

    from .init import init_from

    run = RunFolder.named(opts.runs_dir, opts.run_name)
    if opts.tag is not None:
        check_name(opts.tag, "store tag")
    overrides = parse_overrides(opts.overrides)
    preset = apply_overrides(get_preset(opts.preset), overrides)
    use_dsap = check_variant(opts.variant)[2]
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

    info = init_distributed(opts.device)
    workers = default_workers(info.device) if opts.workers is None else opts.workers
    apply_threads(opts.threads, workers)
    try:
        if info.is_main:  # one process trains a run: a second one says who holds it (exit 2)
            run.lock()
        set_deterministic(opts.deterministic)
        seed_everything(opts.seed)
        dataset = build_dataset(opts.dataset, opts.root)
        store = open_store(opts.root, opts.dataset, opts.estimator, opts.tag, kind=opts.input_kind,
                           size=model_cfg.dsap_size) if use_dsap else None
        if store is not None:
            check_store_fits(store, dataset)
        transform = build_train_transform(model_cfg.height, model_cfg.width, pad=recipe.pad,
                                          flip_p=recipe.flip, erasing_p=recipe.random_erasing)
        joint = JointDataset(dataset.train, dataset.root, store, transform, use_dsap=use_dsap, dsap_reader="main")

        config = {
            "dataset": opts.dataset, "root": str(opts.root), "estimator": opts.estimator, "tag": opts.tag,
            "store": str(store.folder) if store is not None else None, "input": opts.input_kind,
            "preset": preset.name, "overrides": overrides, "variant": opts.variant, "pretrained": opts.pretrained,
            "init": opts.init, "seed": opts.seed,
            "epochs": recipe.epochs, "max_steps": opts.max_steps, "batch_p": recipe.batch_p,
            "batch_k": recipe.batch_k, "random_erasing": recipe.random_erasing,
            "label_smoothing": recipe.label_smoothing, "workers": workers, "device": str(info.device),
            "amp": opts.amp and info.device.type == "cuda",
            "amp_dtype": opts.amp_dtype if opts.amp and info.device.type == "cuda" else None,
            "compile": opts.compile, "deterministic": opts.deterministic,
            "world_size": info.world_size, "num_classes": dataset.num_train_pids,
            "num_train_images": len(dataset.train), "model": model_cfg.to_dict(), "recipe": recipe.to_dict(),
        }
        ckpt = run.read_checkpoint()
        saved = ckpt.config if ckpt is not None else run.read_config()
        if saved is not None:
            check_same_config(saved, config, run.path)

        model = DSANet(model_cfg, dataset.num_train_pids, variant=opts.variant,
                       pretrained=None if opts.pretrained == "none" else opts.pretrained)
        if opts.init and ckpt is None:  # a resumed run has its own weights; the source is only recorded
            config["init_source"] = init_from(model, opts.init, opts.runs_dir)
        elif saved is not None and saved.get("init_source") is not None:
            config["init_source"] = saved["init_source"]
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
            run.write_config(config)
        trainer = Trainer(model=model, loss_fn=loss_fn, dataset=joint, sampler=sampler, optimizer=optimizer,
                          scheduler=scheduler, run=run, info=info, epochs=recipe.epochs,
                          max_steps=opts.max_steps, amp=opts.amp, workers=workers,
                          log_every=opts.log_every, config=config, tensorboard=opts.tensorboard,
                          progress=opts.progress, find_unused_parameters=False, amp_dtype=opts.amp_dtype,
                          compile=opts.compile)
        if ckpt is None and info.is_main:  # records of an earlier start killed before its first checkpoint
            run.trim_log(0)
        if ckpt is not None:
            try:
                trainer.resume(ckpt)
            except (KeyError, ValueError, RuntimeError) as e:
                raise TrainingError(f"the checkpoint {run.checkpoint_path} does not fit this run "
                                    f"({type(e).__name__}: {str(e).splitlines()[0]}); use another --run name") from None
            del ckpt
        if trainer.epoch >= recipe.epochs:
            log.info("run %s is already complete (%d epochs); nothing to do", run.path, trainer.epoch)
            return {"stopped_by": "complete", "epoch": trainer.epoch, "step": trainer.step}
        return trainer.fit()
    finally:
        if info.is_main:
            release_lock(run.path / LOCK_NAME)
        shutdown(info)

