"""Run folders and their checkpoints: the one owner of the format (docs/INTERFACES.md, "Runs").

A run folder ``RUNS_DIR/<RUN>/`` holds::

    config.json      the run's resolved configuration (written when a run starts; JSON object)
    checkpoint.pt    the latest checkpoint (written atomically; read with ``weights_only=True``)
    log.jsonl        one JSON object per logged step and per epoch end
    eval/<dataset>/  what ``evaluate`` writes

``checkpoint.pt`` (format 3) is a plain dict of tensors and Python primitives::

    format_version  3
    config          the run's configuration, the same record as config.json: the resolved tree of
                    ``dsa.config.TrainConfig`` (name, variant, pretrained, seed, data, model, recipe),
                    then ``source`` (config file, overrides), ``runtime`` (device, workers, ...),
                    ``num_classes``, ``num_train_images``, ``datasets`` (each dataset trained on and
                    its store, with their fingerprints) and, for a fine-tuned run, ``init_source``
    model           the network's state dict
    epoch, step     where training stands
    complete        True once training has finished
    training        what resuming needs: optimizer, scheduler, scaler, sampler, rng, epoch_log

Formats 1 and 2 are read and upgraded in memory (:func:`upgrade_config`): format 1 kept the model
configuration, variant, preset and number of classes at the top level and the training state beside
them; formats 1 and 2 kept the configuration as one flat record (``dataset``, ``estimator``, ``preset``,
``variant``, ..., ``model``, ``recipe``).  Any other version is refused with a sentence naming it.  :class:`CheckpointInfo` is the typed record of what a
checkpoint holds; ``dsa`` builds the network from it (``dsa.model.build_dsanet``) and knows nothing of
files.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from dsa.config import ModelConfig

from .io import atomic_output, atomic_write_json, disk_full_error, hold_lock, make_folder
from .names import (RUN_NAME, RunError, check_name, dataset_dirname, union_dirname,  # noqa: F401 - re-exported
                    without_split_options)

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
LOG_NAME = "log.jsonl"
LOCK_NAME = ".lock"
#: the entries of a checkpoint's ``training`` dict (format 1 kept them at the top level)
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "sampler", "rng", "epoch_log")
@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, typed: enough to rebuild the network and to say where it came from."""

    model: ModelConfig
    variant: str
    num_classes: int
    preset: str
    dataset: str = ""                 # the dataset trained on; a union's specs joined by "+"
    estimator: str | None = None      # None when the datasets of a union have several
    tag: str | None = None
    input_kind: str = "dsap"
    epoch: int = -1
    step: int = -1
    complete: bool = False
    format_version: int = FORMAT_VERSION
    datasets: tuple[str, ...] = ()    # each dataset trained on (one, or the union's)
    estimators: tuple[str | None, ...] = ()  # the estimator and the store tag of each
    tags: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if self.dataset and not self.datasets:  # one dataset: its estimator and tag
            object.__setattr__(self, "datasets", (self.dataset,))
            object.__setattr__(self, "estimators", (self.estimator,))
            object.__setattr__(self, "tags", (self.tag,))

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the MF-Stream's input."""
        return self.model.height, self.model.width

    def store_of(self, dataset: str) -> tuple[str | None, str | None]:
        """(estimator, tag) of the DSAP store to read for ``dataset``: that dataset's own when the run was
        trained on it (or on another split of its images, ``val_ids``), else the run's one estimator and tag
        ((None, None) when a union's datasets have several)."""
        own = self.dataset_index(dataset)
        if own is not None:
            return self.estimators[own], self.tags[own]
        return self.estimator, self.tag

    def dataset_index(self, dataset: str) -> int | None:
        """The position of ``dataset`` among the datasets trained on (another split of the same images counts,
        ``val_ids``); None when the run was not trained on it."""
        return next((i for i, d in enumerate(self.datasets)
                     if without_split_options(d) == without_split_options(dataset)), None)

    @classmethod
    def from_config(cls, config: dict[str, Any], *, epoch: int = -1, step: int = -1, complete: bool = False,
                    format_version: int = FORMAT_VERSION, where: str = "the checkpoint") -> "CheckpointInfo":
        """The record from a run configuration (config.json or a checkpoint's ``config``, any format)."""
        config = upgrade_config(config)
        for key in ("model", "variant", "num_classes"):
            if key not in config:
                raise RunError(f"{where} has no {key!r} in its configuration; it was not written by this program")
        try:
            model = ModelConfig.from_dict(dict(config["model"]))
            num_classes = int(config["num_classes"])
        except (TypeError, ValueError) as e:
            raise RunError(f"{where}'s model configuration is not usable ({e})") from None
        data = config.get("data") or {}
        specs = data.get("dataset")
        datasets = tuple(map(str, specs)) if isinstance(specs, list) else ((str(specs),) if specs else ())

        def each(value: Any) -> tuple[Any, ...]:
            return tuple(value) if isinstance(value, list) else (value,) * len(datasets)

        estimator, tag = data.get("estimator"), data.get("tag")
        return cls(model=model, variant=str(config["variant"]), num_classes=num_classes,
                   preset=str(config.get("name", "")), dataset="+".join(datasets),
                   estimator=None if isinstance(estimator, list) else estimator,
                   tag=None if isinstance(tag, list) else tag,
                   input_kind=str(data.get("input") or "dsap"), epoch=int(epoch), step=int(step),
                   complete=bool(complete), format_version=int(format_version), datasets=datasets,
                   estimators=each(estimator), tags=each(tag))


@dataclass
class Checkpoint:
    """A loaded checkpoint: its typed record, the run configuration, the weights, the training state."""

    path: Path
    info: CheckpointInfo
    config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)

    def non_finite(self) -> list[str]:
        """The names of the floating-point weights that hold NaN or infinite values (resuming, evaluating,
        exporting and searching all refuse such a checkpoint)."""
        return [k for k, t in self.model_state.items()
                if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


#: the flat keys of a format-1/2 configuration that became the tree's ``data`` section
_LEGACY_DATA = {"dataset": "dataset", "estimator": "estimator", "tag": "tag", "input": "input"}
#: the flat keys that became ``runtime``
_LEGACY_RUNTIME = ("root", "store", "workers", "device", "amp", "amp_dtype", "compile", "deterministic",
                   "world_size", "max_steps")


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run configuration of any format as the format-3 tree (a new dict; a tree is returned as a copy).

    Formats 1 and 2 kept one flat record; its entries move to ``data`` (dataset, estimator, tag, input),
    ``runtime`` (root, store, workers, device, ...) and ``name`` (the preset); the shadow entries of the
    recipe (``epochs``, ``batch_p``, ...) were copies of ``recipe`` and are dropped."""
    config = dict(config)
    if isinstance(config.get("data"), dict):
        config["data"] = {**config["data"]}
        config["data"].setdefault("balance", "none")  # a field added later: its default is what those runs did
        return config
    out: dict[str, Any] = {"name": config.pop("preset", ""), "description": "",
                           "variant": config.pop("variant", None), "pretrained": config.pop("pretrained", "none"),
                           "seed": config.pop("seed", 0),
                           "data": {new: config.pop(old, None) for old, new in _LEGACY_DATA.items()},
                           "model": config.pop("model", None), "recipe": config.pop("recipe", None) or {}}
    if out["data"]["input"] is None:
        out["data"]["input"] = "dsap"
    out["data"]["balance"] = "none"
    out["runtime"] = {k: config.pop(k) for k in _LEGACY_RUNTIME if k in config}
    if "overrides" in config:
        out["source"] = {"config": out["name"], "overrides": config.pop("overrides")}
    for k in ("epochs", "batch_p", "batch_k", "random_erasing", "label_smoothing"):
        config.pop(k, None)
    out.update(config)  # num_classes, num_train_images, init, init_source
    return {k: v for k, v in out.items() if v is not None}


def _upgrade(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """A checkpoint dict of any readable format -> the format-2 layout (format 1 is upgraded in memory)."""
    version = raw.get("format_version", 1)
    if not isinstance(version, int) or version not in READABLE_VERSIONS:
        raise RunError(f"{path} is a checkpoint of format version {version!r}; this version of the program reads "
                       f"formats {', '.join(map(str, READABLE_VERSIONS))}: evaluate or resume it with the version "
                       f"that wrote it, or retrain")
    if version >= 2:
        return raw
    config = dict(raw.get("config") or {})
    for key, old in (("model", "model_config"), ("variant", "variant"), ("num_classes", "num_classes"),
                     ("preset", "preset")):
        if raw.get(old) is not None:
            config.setdefault(key, raw[old])
    return {"format_version": 1, "config": config, "model": raw["model"], "epoch": raw.get("epoch", -1),
            "step": raw.get("step", -1), "complete": raw.get("complete", False),
            "training": {k: raw[k] for k in TRAINING_KEYS if k in raw}}


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and check a checkpoint (``weights_only=True``); anything unreadable is one sentence."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"there is no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise RunError(f"cannot read the checkpoint {path}: it is empty (0 bytes: a disk that filled up or a copy that failed); "
                       f"move it away and rerun to start the run again, or use another run")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's several paragraphs, with advice to unpickle anything: not for users
        raise RunError(f"refused to load {path}: it holds Python objects other than tensors and plain values, so it "
                       f"was not written by this program and loading it could run code; use a checkpoint written "
                       f"by `make train`") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        first = (str(e).strip().splitlines() or [""])[0]
        raise RunError(f"cannot read the checkpoint {path} ({type(e).__name__}: {first[:200]}); it is damaged or "
                       f"not a checkpoint of this program: move it away and retrain, or use another run") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise RunError(f"{path} is not a checkpoint written by this program (no model weights in it)")
    d = _upgrade(raw, path)
    if not isinstance(d.get("config"), dict):
        raise RunError(f"{path} has no run configuration; it was not written by this program")
    info = CheckpointInfo.from_config(d["config"], epoch=d.get("epoch", -1), step=d.get("step", -1),
                                      complete=d.get("complete", False), format_version=d["format_version"],
                                      where=str(path))
    return Checkpoint(path, info, d["config"], d["model"], dict(d.get("training") or {}))


def resolve_checkpoint(run_or_path: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> Path:
    """A run name, a run folder or a checkpoint file -> the checkpoint's path (checked to exist)."""
    p = Path(run_or_path)
    candidates = [p] if p.suffix == ".pt" else [p / CHECKPOINT_NAME, Path(runs_dir) / p / CHECKPOINT_NAME]
    for c in candidates:
        if c.is_file():
            return c
        RunFolder._not_a_folder(c)
    raise RunError(f"no checkpoint found for {str(run_or_path)!r} (looked at {', '.join(map(str, candidates))}); "
                   f"train the run first with `make train`")


def open_checkpoint(run_or_path: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> Checkpoint:
    """``load_checkpoint(resolve_checkpoint(...))``: what ``evaluate`` starts from."""
    return load_checkpoint(resolve_checkpoint(run_or_path, runs_dir))


class RunFolder:
    """One run's folder: its layout, its configuration, its checkpoint and its log."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def named(cls, runs_dir: str | os.PathLike, name: str) -> "RunFolder":
        """``RUNS_DIR/<name>``, with ``name`` checked to be a name (never a path)."""
        return cls(Path(runs_dir) / check_name(name))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.path / LOG_NAME

    def lock(self) -> None:
        """Hold this run folder's lock (``.lock``) until the process ends: a second program training the
        same run is a :class:`data.io.LockError` naming the holder (exit 2)."""
        make_folder(self.path)
        hold_lock(self.path / LOCK_NAME, f"the run {self.path}")

    def remove_if_unused(self) -> bool:
        """Remove the run folder when it holds nothing but its lock file (a start that failed before it wrote
        anything, this one or an earlier one); True when removed.  Called by the lock's holder before it
        releases the lock; a folder another process has meanwhile written into is left alone."""
        try:
            entries = list(self.path.iterdir())
            if any(p.name != LOCK_NAME for p in entries):
                return False
            for p in entries:
                p.unlink(missing_ok=True)
            self.path.rmdir()
        except OSError:  # gone already, or someone wrote into it meanwhile: not ours to remove
            return False
        return True

    def eval_dir(self, dataset: str | Sequence[str]) -> Path:
        """Where ``evaluate`` writes its outputs for ``dataset`` (a name, or a spec with options: see
        :func:`dataset_dirname`), or for several datasets evaluated together (a list of specs: their table
        ``sets.json``, :func:`data.names.union_dirname`)."""
        if not isinstance(dataset, str):
            return self.path / "eval" / (union_dirname(dataset) if len(dataset) > 1 else dataset_dirname(dataset[0]))
        return self.path / "eval" / dataset_dirname(dataset)

    @staticmethod
    def _not_a_folder(path: Path) -> None:
        """A run file that exists as something else (a folder) is refused before the run starts."""
        if path.exists() and not path.is_file():
            raise RunError(f"{path} is not a file (a folder?), so the run cannot keep its {path.name} there; move it "
                           f"away or use another run name")

    # ------------------------------------------------------------------ configuration
    def read_config(self) -> dict[str, Any] | None:
        """The saved configuration (None when there is none); an unreadable one is a sentence."""
        path = self.config_path
        self._not_a_folder(path)
        if not path.is_file():
            return None
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunError(f"cannot read the run's configuration {path} ({e}); remove it or use another run name") from None
        if not isinstance(config, dict):
            raise RunError(f"the run's configuration {path} is not a JSON object; remove it or use another run name")
        return config

    def write_config(self, config: dict[str, Any]) -> None:
        make_folder(self.path)
        atomic_write_json(self.config_path, config)

    # ------------------------------------------------------------------ checkpoint
    def read_checkpoint(self, map_location: str | torch.device = "cpu") -> Checkpoint | None:
        """The run's checkpoint, or None when it has none yet."""
        self._not_a_folder(self.checkpoint_path)
        if not self.checkpoint_path.is_file():
            return None
        return load_checkpoint(self.checkpoint_path, map_location)

    def write_checkpoint(self, *, config: dict[str, Any], model_state: dict[str, torch.Tensor],
                         training: dict[str, Any], epoch: int, step: int, complete: bool) -> Path:
        """Write ``checkpoint.pt`` atomically (temporary file in the folder, fsync, rename)."""
        state = {"format_version": FORMAT_VERSION, "config": config, "model": model_state, "epoch": int(epoch),
                 "step": int(step), "complete": bool(complete), "training": training}
        make_folder(self.path)
        buffer = io.BytesIO()  # serialised first: a write error is then an OSError of our own write (a full disk)
        torch.save(state, buffer)
        with atomic_output(self.checkpoint_path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        return self.checkpoint_path

    # ------------------------------------------------------------------ log
    def append_log(self, record: dict[str, Any]) -> None:
        """Append one record; an unfinished last line (a kill mid-write) is ended first, never extended."""
        make_folder(self.path)
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:
            with open(self.log_path, "ab+") as f:
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = b"\n" + line
                f.write(line)
        except OSError as e:
            full = disk_full_error(e, self.log_path)
            if full is not None:
                raise full from None
            raise

    def _log_lines(self) -> list[bytes]:
        return [ln for ln in self.log_path.read_bytes().split(b"\n") if ln.strip()] if self.log_path.is_file() else []

    @staticmethod
    def _record(line: bytes) -> dict[str, Any] | None:
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("step", 0), int) else None

    def read_log(self) -> list[dict[str, Any]]:
        """The log's records (a line that is not a whole record, e.g. an unfinished last line left by a
        kill mid-write, whatever bytes it holds, is skipped)."""
        return [r for r in map(self._record, self._log_lines()) if r is not None]

    def trim_log(self, step: int) -> None:
        """Keep the records up to ``step`` (those after it are redone by a resumed run; ``step=0`` for a
        run started again from scratch, whose earlier records belong to no checkpoint) and drop any line
        that is not a whole record."""
        if not self.log_path.is_file():
            return
        lines = self._log_lines()
        kept = [r for r in map(self._record, lines) if r is not None and r.get("step", 0) <= step]
        if len(kept) != len(lines):
            with atomic_output(self.log_path) as tmp:
                Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
