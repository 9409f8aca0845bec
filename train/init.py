"""``--init RUN_OR_CHECKPOINT``: start a run from another run's weights (fine-tuning).

The paper's CUHK01 figure comes from a network trained on CUHK03 and fine-tuned on CUHK01; a new run
on another dataset starts from a trained run like this:

* the MF-Stream (``mf.*``) must fit exactly: every tensor is copied, and a source whose MF-Stream has
  other layers or shapes (another preset, another variant's branches) is one sentence naming the first
  layer that differs;
* the DSAG-Stream (``dsag.*``) and the concatenation fusion (``fuse_*``) are copied when both networks
  have them with the same shapes, and otherwise keep their fresh initialisation (the log says which);
* the classifiers (``cls_*``) are always new: the identities of the new dataset are other people.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from data.io import file_sha256
from data.runs import open_checkpoint
from dsa.model import strip_prefixes

from .trainer import TrainingError

log = logging.getLogger(__name__)

#: parameter-name prefixes by part of the network
STRICT = ("mf.",)
WHERE_SHAPES_FIT = ("dsag.", "fuse_G.", "fuse_L.")


def first_mismatch(own: dict[str, torch.Tensor], src: dict[str, torch.Tensor], prefix: str) -> str | None:
    """A sentence about the first tensor under ``prefix`` (in the network's order) that the source lacks
    or has with another shape, or that only the source has; None when the two agree."""
    for k, v in own.items():
        if not k.startswith(prefix):
            continue
        if k not in src:
            return f"the source has no layer {k!r}"
        if tuple(src[k].shape) != tuple(v.shape):
            return f"layer {k!r} has shape {tuple(src[k].shape)} in the source but {tuple(v.shape)} here"
    extra = [k for k in src if k.startswith(prefix) and k not in own]
    if extra:
        return f"the source has a layer {extra[0]!r} that this network lacks"
    return None


def init_from(net: nn.Module, source: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> dict[str, Any]:
    """Copy ``source``'s weights into ``net`` as the module docstring says; returns the record that goes into
    ``config.json`` (checkpoint path, sha256, source dataset/preset/variant/step, parts copied and kept new)."""
    ckpt = open_checkpoint(source, runs_dir)
    src = strip_prefixes(ckpt.model_state)
    own = net.state_dict()
    problem = first_mismatch(own, src, STRICT[0])
    if problem is not None:
        raise TrainingError(
            f"cannot initialise from {ckpt.path}: its MF-Stream does not fit this network ({problem}); use a "
            f"source of the same preset and variant family, or --set the model fields to the source's "
            f"(see its config.json)")
    copied, fresh = ["mf"], []
    load = {k: src[k] for k in own if k.startswith(STRICT)}
    for prefix in WHERE_SHAPES_FIT:
        name = prefix.rstrip(".")
        if not any(k.startswith(prefix) for k in own):
            continue
        why = first_mismatch(own, src, prefix)
        if why is None:
            load.update({k: src[k] for k in own if k.startswith(prefix)})
            copied.append(name)
        else:
            fresh.append(name)
            log.info("--init: %s keeps its fresh initialisation (%s)", name, why)
    fresh += sorted({k.split(".")[0] for k in own if k.startswith("cls_")})
    missing, unexpected = net.load_state_dict(load, strict=False)
    assert not unexpected, unexpected
    info = ckpt.info
    record = {"source": str(source), "checkpoint": str(ckpt.path), "checkpoint_sha256": file_sha256(ckpt.path),
              "dataset": info.dataset, "preset": info.preset, "variant": info.variant,
              "num_classes": info.num_classes, "step": info.step, "epoch": info.epoch,
              "copied": copied, "new": fresh}
    log.info("initialised from %s (%s, step %d): copied %s; new %s", ckpt.path, info.dataset or "?", info.step,
             ", ".join(copied), ", ".join(fresh))
    return record
