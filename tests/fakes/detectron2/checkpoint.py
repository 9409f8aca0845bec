"""Fake ``detectron2.checkpoint``: loads ``{"model": state_dict}`` files and reports what did not fit,
as fvcore's ``Checkpointer._load_model`` does; URLs resolve through :data:`DOWNLOADS` (else no network)."""
from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any, NamedTuple

import torch

#: URL → local file standing in for detectron2's download cache
DOWNLOADS: dict[str, str] = {}


class _IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list
    incorrect_shapes: list


class _PathManager:
    @staticmethod
    def get_local_path(path: str) -> str:
        if "://" in path:
            if path in DOWNLOADS:
                return DOWNLOADS[path]
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return path


class DetectionCheckpointer:
    def __init__(self, model: torch.nn.Module, save_dir: str = "", **checkpointables: Any) -> None:
        self.model = model
        self.path_manager = _PathManager()
        self._loading = False

    def _load_file(self, filename: str) -> dict:
        assert self._loading, "`_load_file` must be called inside `load`"  # as in detectron2
        loaded = torch.load(Path(filename), map_location="cpu", weights_only=True)
        return loaded if isinstance(loaded, dict) and "model" in loaded else {"model": loaded}

    def _load_model(self, checkpoint: dict) -> _IncompatibleKeys:
        state = dict(checkpoint["model"])
        own = self.model.state_dict()
        wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                 if k in own and tuple(v.shape) != tuple(own[k].shape)]
        for k, *_ in wrong:
            del state[k]
        result = self.model.load_state_dict(state, strict=False)
        return _IncompatibleKeys(list(result.missing_keys), list(result.unexpected_keys), wrong)

    def load(self, path: str) -> dict:
        """Like fvcore's: the incompatible keys are only logged; the checkpoint's other entries are returned."""
        self._loading = True
        try:
            checkpoint = self._load_file(self.path_manager.get_local_path(path))
        finally:
            self._loading = False
        self._load_model(checkpoint)
        checkpoint.pop("model")
        return checkpoint
