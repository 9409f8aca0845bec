"""Assemble a run from its configuration: dataset, DSAP store, model, loss, batches, optimizer, schedule.

The configuration has one path (``dsa.config``): a preset name or a config file, then ``--set``
overrides (the CLI options ``--dataset``, ``--epochs``, ... are aliases of ``--set`` keys).
``train_run(options)`` resolves it, checks a resumed run's saved configuration against it, builds
everything, writes ``config.json`` and hands over to ``Trainer``.  Every problem a user can fix
(unknown preset, missing dataset, a store that does not fit, a checkpoint of another configuration) is
a ``dsa.errors.UserError`` with one sentence.  The run folder, its configuration and its checkpoint
belong to ``data.runs``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.io import release_lock
from data.datasets import union_config
from data.joint import build_train_data
from data.runs import LOCK_NAME, RunFolder, upgrade_config
from data.runtime import apply_threads, default_workers
from dsa.config import TrainConfig, parse_overrides, resolve_config

from .distributed import DistInfo, init_distributed, shutdown
from .hooks import FusionHook, HookBase
from .schedule import build_optimizer, build_scheduler
from .trainer import Trainer, TrainingError, seed_everything, set_deterministic

log = logging.getLogger(__name__)

#: ``python -m train`` options that are aliases of ``--set`` keys (option name → configuration key)
ALIASES = {"dataset": "data.dataset", "estimator": "data.estimator", "tag": "data.tag", "input_kind": "data.input",
           "variant": "variant", "pretrained": "pretrained", "seed": "seed", "epochs": "recipe.epochs",
           "batch_p": "recipe.batch_p", "batch_k": "recipe.batch_k"}
#: flags that set a key to a value (Table 3's baselines)
FLAG_ALIASES = {"no_random_erasing": ("recipe.random_erasing", "0"), "no_label_smoothing": ("recipe.label_smoothing", "0")}


@dataclass
class RunOptions:
    """The ``python -m train`` options (see its ``--help``): what to train is ``config`` + ``overrides``;
    the rest says where and how (machine, run folder), not what."""

    run_name: str
    config: str = "small"             # a preset name (dsa/configs/NAME.yaml) or a config file
    overrides: tuple[str, ...] = ()   # --set section.field=value, applied after the config file
    root: str = "datasets"
    init: str | None = None
    max_steps: int | None = None
    workers: int | None = None
    threads: int = 0                # intra-op CPU threads (0: data.runtime's thread policy)
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "float16"      # float16 (with loss scaling) or bfloat16 (Ampere and later)
    compile: bool = False           # torch.compile the training step's model
    deterministic: bool = False
    runs_dir: str = "runs"
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True
    aliases: dict[str, Any] = field(default_factory=dict)  # --dataset, --epochs, ... (ALIASES)


def alias_overrides(aliases: dict[str, Any]) -> list[str]:
    """The ``--set`` pairs of the alias options that were given (``{"epochs": 3}`` → ``["recipe.epochs=3"]``)."""
    pairs = []
    for name, value in aliases.items():
        if value is None or value is False:
            continue
        if name in FLAG_ALIASES:
            key, text = FLAG_ALIASES[name]
            pairs.append(f"{key}={text}")
        elif name in ALIASES:
            pairs.append(f"{ALIASES[name]}={'none' if value is None else value}")
        else:
            raise KeyError(name)
    return pairs


def resolve(opts: RunOptions) -> TrainConfig:
    """The run's configuration: the config file, then the alias options, then ``--set`` (last wins); a
    dataset spec ``a+b`` is the union of its datasets (``data.datasets.union``)."""
    cfg = resolve_config(opts.config, [*alias_overrides(opts.aliases), *opts.overrides])
    return cfg.replace(data=union_config(cfg.data))


#: top-level entries of config.json that a resumed run must share with the saved one (with the tree)
MUST_MATCH = ("num_classes", "world_size", "init")
#: the entries of each of config.json's ``datasets`` records that a resumed run must share (not the store's
#: folder, which moves with the data root)
DATASET_MUST_MATCH = ("dataset", "estimator", "tag", "num_train_pids", "num_train_images", "pid_offset",
                      "camid_offset", "train_fingerprint", "store_fingerprint", "store_sha256")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    c = upgrade_config(config)
    tree = {k: c.get(k) for k in ("variant", "pretrained", "seed", "model")}
    # data.min_found is a gate on the store, not a setting of the training: a resumed run may change it
    tree["data"] = {k: v for k, v in (c.get("data") or {}).items() if k != "min_found"}
    tree["recipe"] = {k: v for k, v in (c.get("recipe") or {}).items() if k != "epochs"}
    tree["num_classes"] = c.get("num_classes")
    tree["world_size"] = (c.get("runtime") or {}).get("world_size")
    tree["init"] = c.get("init")
    return tree


def check_same_config(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """A resumed run must have the configuration it was started with (the number of epochs may grow);
    say which entries differ."""
    a, b = _comparable(saved), _comparable(current)
    diffs = []
    for key in a:
        if a[key] != b[key]:
            if isinstance(a[key], dict) and isinstance(b[key], dict):
                sub = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k))
                diffs.append(", ".join(f"{key}.{k} (saved {a[key].get(k)!r}, now {b[key].get(k)!r})" for k in sub))
            else:
                diffs.append(f"{key} (saved {a[key]!r}, now {b[key]!r})")
    diffs += _dataset_diffs(saved.get("datasets"), current.get("datasets"))
    if diffs:
        raise TrainingError(
            f"the run at {where} was started with another configuration: {'; '.join(diffs)}; "
            f"use another --run name, or rerun with the saved options (see {where / 'config.json'})")


def _dataset_diffs(saved: Any, current: Any) -> list[str]:
    """What differs between the ``datasets`` records (each dataset and its store) of a saved and a current
    configuration; nothing when the saved one has none (a run of an earlier version)."""
    if not isinstance(saved, list) or not isinstance(current, list):
        return []
    if len(saved) != len(current):
        return [f"datasets (saved {len(saved)}, now {len(current)})"]
    diffs = []
    for a, b in zip(saved, current):
        keys = [k for k in DATASET_MUST_MATCH if a.get(k) != b.get(k)]
        if keys:
            diffs.append(f"the dataset {b.get('dataset')!r}: " + ", ".join(
                f"{k} (saved {a.get(k)!r}, now {b.get(k)!r})" for k in keys))
    return diffs


def build_model(cfg: TrainConfig, num_classes: int):
    """The training network of ``cfg``, initialised from ``cfg.seed``: the MF-Stream and its classifiers
    depend on the seed and the model alone, not on the variant (``dsa.model.DSANet``), so runs of two
    variants with one seed start from the same MF-Stream."""
    from dsa.model import DSANet

    seed_everything(cfg.seed)
    return DSANet(cfg.model, num_classes, variant=cfg.variant,
                  pretrained=None if cfg.pretrained == "none" else cfg.pretrained)


def train_run(opts: RunOptions, hooks: list[HookBase] | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by ``opts``; ``hooks`` are added to the trainer's (after the
    fusion switches and the log, before the checkpoint).  Returns the trainer's summary."""
    from dsa.losses import DSALoss

    from .init import init_from

    run = RunFolder.named(opts.runs_dir, opts.run_name)
    cfg = resolve(opts)
    for tag in cfg.data.tags:
        if tag is not None:
            from data.names import check_name

            check_name(tag, "store tag")
    recipe = cfg.recipe

    info = init_distributed(opts.device)
    workers = default_workers(info.device) if opts.workers is None else opts.workers
    apply_threads(opts.threads, workers)
    locked = False
    try:
        if info.is_main:  # one process trains a run: a second one says who holds it (exit 2)
            run.lock()
            locked = True
        set_deterministic(opts.deterministic)
        data, union, stores = build_train_data(cfg, opts.root, rank=info.rank, world_size=info.world_size,
                                               workers=workers, pin_memory=info.device.type == "cuda")
        folders = [str(s.folder) if s is not None else None for s in stores]

        config = {
            **cfg.to_dict(),
            "source": {"config": opts.config,
                       "overrides": parse_overrides([*alias_overrides(opts.aliases), *opts.overrides])},
            "runtime": {"root": str(opts.root), "store": folders if union.is_union else folders[0],
                        "workers": workers, "device": str(info.device),
                        "amp": opts.amp and info.device.type == "cuda",
                        "amp_dtype": opts.amp_dtype if opts.amp and info.device.type == "cuda" else None,
                        "compile": opts.compile, "deterministic": opts.deterministic,
                        "world_size": info.world_size, "max_steps": opts.max_steps},
            "num_classes": union.num_train_pids, "num_train_images": len(union.train), "init": opts.init,
            "datasets": union.provenance(stores),
        }
        ckpt = run.read_checkpoint()
        saved = ckpt.config if ckpt is not None else run.read_config()
        if saved is not None:
            check_same_config(saved, config, run.path)

        model = build_model(cfg, union.num_train_pids)
        if opts.init and ckpt is None:  # a resumed run has its own weights; the source is only recorded
            config["init_source"] = init_from(model, opts.init, opts.runs_dir)
        elif saved is not None and saved.get("init_source") is not None:
            config["init_source"] = saved["init_source"]
        loss_fn = DSALoss(recipe, cfg.variant)
        optimizer = build_optimizer(model.parameters(), recipe)
        scheduler = build_scheduler(optimizer, recipe)
        # written only once everything is built: a start that failed on a fixable problem (weights
        # file, store, batch size) leaves no configuration behind that would refuse the corrected one
        if info.is_main:
            run.write_config(config)
        all_hooks: list[HookBase] = []
        if cfg.uses_dsap and (recipe.drop_d > 0 or recipe.dsag_first_epochs > 0):
            all_hooks.append(FusionHook(recipe, cfg.seed))
        all_hooks += list(hooks or [])
        trainer = Trainer(model=model, loss_fn=loss_fn, data=data, optimizer=optimizer, scheduler=scheduler,
                          run=run, info=info, epochs=recipe.epochs, max_steps=opts.max_steps, amp=opts.amp,
                          log_every=opts.log_every, config=config, tensorboard=opts.tensorboard,
                          progress=opts.progress, amp_dtype=opts.amp_dtype, compile=opts.compile, hooks=all_hooks)
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
        if locked:  # a start that failed before writing anything leaves no folder behind (removed under the lock)
            run.remove_if_unused()
        if info.is_main:
            release_lock(run.path / LOCK_NAME)
        shutdown(info)


def local_info(device: str = "cpu") -> DistInfo:
    """A one-process world on ``device`` (benchmarks and tests that build a Trainer themselves)."""
    from data.runtime import resolve_device

    return DistInfo(device=resolve_device(device))
