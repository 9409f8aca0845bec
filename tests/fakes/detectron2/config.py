"""Fake ``detectron2.config``: a yacs-like node and a reader for the tests' small yaml files
(nested ``KEY:`` blocks indented by two spaces, ``KEY: value`` scalars, ``_BASE_`` chains)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class CfgNode(dict):
    def __init__(self, init: dict | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_frozen", False)
        for k, v in (init or {}).items():
            self[k] = CfgNode(v) if isinstance(v, dict) and not isinstance(v, CfgNode) else v

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise AttributeError(f"Attempted to set {name} to {value}, but CfgNode is immutable")
        self[name] = value

    def freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)
        for v in self.values():
            if isinstance(v, CfgNode):
                v.freeze()

    def merge_from_file(self, filename: str) -> None:
        data = _read(Path(filename))
        base = data.pop("_BASE_", None)
        if base is not None:
            self.merge_from_file(str(Path(filename).parent / base))
        _merge(self, data, "")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read(path: Path) -> dict:
    root: dict = {}
    stack = [(-1, root)]
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip())
        key, _, rest = raw.strip().partition(":")
        if not _:
            raise ValueError(f"{path}: cannot parse {raw!r}")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if rest.strip():
            parent[key] = _value(rest.strip())
        else:
            parent[key] = {}
            stack.append((indent, parent[key]))
    return root


def _merge(node: CfgNode, data: dict, prefix: str) -> None:
    for k, v in data.items():
        if k not in node:
            raise KeyError(f"Non-existent config key: {prefix}{k}")
        if isinstance(v, dict):
            _merge(node[k], v, f"{prefix}{k}.")
        else:
            node[k] = v


def get_cfg() -> CfgNode:
    return CfgNode({
        "MODEL": {"WEIGHTS": "", "DEVICE": "cpu", "WIDTH": 4, "ROI_HEADS": {"NAME": "StandardROIHeads"},
                  "RESNETS": {"DEPTH": 50}},
        "INPUT": {"FORMAT": "BGR", "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333},
    })
