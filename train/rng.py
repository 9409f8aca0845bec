"""The random states a resumed run restores (the ``rng`` entry of a checkpoint's training state).

They are plain tensors, lists and numbers, so the checkpoint stays loadable with
``torch.load(path, weights_only=True)``; the checkpoint file itself belongs to ``data.runs``.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA, when present) random states as checkpoint-safe values."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_lists(value: Any) -> Any:
    """Tuples → lists, recursively (the Python random state is nested tuples)."""
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value
