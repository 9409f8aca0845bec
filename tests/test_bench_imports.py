"""Every benchmark and study module imports as a package module (``python -m bench.NAME``): a renamed or
moved product function breaks the benchmark here, not when someone next runs it."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(f"bench.{p.stem}" for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__") + \
    sorted(f"studies.gain.{p.stem}" for p in (ROOT / "studies" / "gain").glob("*.py") if p.stem != "__main__")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str):
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no docstring saying what it measures"
