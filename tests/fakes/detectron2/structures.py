"""Fake ``detectron2.structures``: boxes and per-image instances."""
from __future__ import annotations

from typing import Any


class Boxes:
    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor


class Instances:
    def __init__(self, image_size: tuple[int, int], **fields: Any) -> None:
        self.image_size = image_size
        for k, v in fields.items():
            setattr(self, k, v)

    def to(self, device: Any) -> "Instances":
        return self

    def __getattr__(self, name: str) -> Any:  # as detectron2's, for a field no head set
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"Cannot find field '{name}' in the given Instances!")
