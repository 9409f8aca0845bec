"""The registry pattern (dsa.registry): backbones, datasets and estimators, and plugins from outside the repo."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from data.datasets import DATASETS, DatasetError, build_dataset
from dsa.config import BACKBONES, ConfigError, ModelConfig
from dsa.registry import Registry, RegistryError
from precompute.estimators import ESTIMATORS

ROOT = Path(__file__).resolve().parents[1]


def test_registry_registers_refuses_clashes_and_lists_names():
    reg: Registry = Registry("widget", {"lazy": "json:dumps"})
    assert not reg.is_loaded("lazy") and reg.lazy_target("lazy") == "json:dumps"
    import json

    assert reg.get("lazy") is json.dumps and reg.is_loaded("lazy")

    @reg.register("one")
    def one():
        return 1

    assert reg.get("one") is one and reg.names() == ["lazy", "one"] and "one" in reg
    reg.register("one", one)  # the same object again: nothing happens
    with pytest.raises(RegistryError, match="widget name 'one' is already registered"):
        reg.register("one", lambda: 2)
    reg.register("one", print, replace=True)
    assert reg.get("one") is print
    with pytest.raises(RegistryError, match="unknown widget 'two'; choose one of: lazy, one"):
        reg.get("two")


def test_built_in_entries_are_lazy_until_chosen():
    assert {"resnet50", "mobilenet_v2"} <= set(BACKBONES)
    assert {"market1501", "cuhk03-labeled", "msmt17", "folder", "synthetic"} <= set(DATASETS)
    assert {"synthetic", "iuv", "densepose", "pose"} <= set(ESTIMATORS)
    # listing the names imports no backend: a fresh interpreter has not loaded the DensePose estimator
    code = ("import sys, precompute.estimators as e, data.datasets as d, dsa.config as c; "
            "names = e.ESTIMATORS.names() + d.DATASETS.names() + c.BACKBONES.names(); "
            "print(any(m in sys.modules for m in ('precompute.estimators.densepose', 'precompute.estimators.pose', "
            "'dsa.mobilenet', 'data.datasets.cuhk03')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
    with pytest.raises(DatasetError, match="Unknown dataset 'nope'; choose one of: market1501"):
        build_dataset("nope", ".")
    with pytest.raises(ConfigError, match="model.backbone='vgg' is not allowed; choose one of: resnet50, mobilenet_v2"):
        ModelConfig(backbone="vgg")


PLUGIN = textwrap.dedent('''
    """A user's plugin: a dataset adapter and a backbone, registered from outside the repository."""
    from torch import nn

    from data.datasets import DATASETS, ReidDataset, scan_images, MARKET_PATTERN
    from dsa.config import BACKBONES
    from dsa.backbone import Backbone


    @DATASETS.register("mydata")
    class MyData(ReidDataset):
        def __init__(self, root, folder: str = "market1501"):
            base = root / folder
            super().__init__(base, scan_images(base, "bounding_box_train", MARKET_PATTERN),
                             scan_images(base, "query", MARKET_PATTERN),
                             scan_images(base, "bounding_box_test", MARKET_PATTERN), name="mydata")


    class Trunk(nn.Sequential):
        out_channels = 8

        def __init__(self):
            super().__init__(nn.Conv2d(3, 8, 3, stride=16, padding=1), nn.BatchNorm2d(8), nn.ReLU())


    @BACKBONES.register("tinynet")
    def tinynet(cfg, use_global, pretrained):
        glob = nn.Sequential(nn.Conv2d(8, cfg.global_dim, 1), nn.ReLU()) if use_global else None
        return Backbone(Trunk(), glob)
''')


def test_a_plugin_adds_a_dataset_and_a_backbone_that_the_commands_use(tmp_path, market_tree):
    (tmp_path / "myplugin.py").write_text(PLUGIN)
    # MyData keeps every file it lists: drop the junk pid -1 images
    (market_tree / "bounding_box_train" / "-1_c1s1_000007_00.jpg").unlink()
    (market_tree / "bounding_box_test" / "-1_c2s1_000017_00.jpg").unlink()
    env = {**os.environ, "DSA_PLUGINS": "myplugin", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    stats = subprocess.run([sys.executable, "-m", "data", "stats", "--dataset", "mydata", "--root", str(market_tree.parent)],
                           capture_output=True, text=True, env=env, cwd=ROOT)
    assert stats.returncode == 0, stats.stderr
    assert "mydata" in stats.stdout and "train" in stats.stdout
    train = subprocess.run([sys.executable, "-m", "train", "--preset", "tiny", "--variant", "two-branch",
                            "--dataset", "mydata", "--root", str(market_tree.parent), "--set", "model.backbone=tinynet",
                            "--batch-p", "2", "--max-steps", "1", "--run", "r", "--runs-dir", str(tmp_path / "runs"),
                            "--workers", "0", "--device", "cpu", "--threads", "1"],
                           capture_output=True, text=True, env=env, cwd=ROOT)
    assert train.returncode == 0, train.stderr[-2000:]
    assert (tmp_path / "runs" / "r" / "checkpoint.pt").is_file()
    missing = subprocess.run([sys.executable, "-m", "data", "stats", "--dataset", "mydata", "--root", "."],
                             capture_output=True, text=True, env={**env, "DSA_PLUGINS": "not_a_module"}, cwd=ROOT)
    assert missing.returncode == 2 and "the plugin module 'not_a_module' named in $DSA_PLUGINS cannot be imported" \
        in missing.stderr, missing.stderr
