"""The ``densepose`` estimator with the real detectron2 and DensePose (random weights: nothing is downloaded).

Skipped unless detectron2 and DensePose are installed (``make install-densepose``) and ``$DETECTRON2`` names
the checkout they were installed from (its configs are read). Run them with
``DETECTRON2=<checkout> .venv/bin/python -m pytest -m "slow or not slow" tests/test_densepose_detectron2.py``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from precompute.estimators import EstimatorError, build_estimator

CHECKOUT = Path(os.environ.get("DETECTRON2", "/nonexistent"))
CONFIGS = CHECKOUT / "projects" / "DensePose" / "configs"
R50 = CONFIGS / "densepose_rcnn_R_50_FPN_s1x.yaml"


def _real_detectron2() -> bool:
    if importlib.util.find_spec("detectron2") is None or importlib.util.find_spec("densepose") is None:
        return False
    import detectron2

    return detectron2.__version__ != "0.0-fake"


pytestmark = pytest.mark.skipif(not (_real_detectron2() and R50.is_file()),
                                reason="needs detectron2 + DensePose installed and DETECTRON2=<their checkout>")


def test_a_mask_rcnn_config_is_refused_before_any_image(tmp_path):
    coco = CHECKOUT / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_3x.yaml"
    with pytest.raises(EstimatorError, match="mask_rcnn_R_50_FPN_3x.yaml is not a DensePose config: its ROI heads "
                                             "are StandardROIHeads"):
        build_estimator("densepose", tmp_path, config=str(coco), weights="random")


def test_settings_record_contents_and_versions(tmp_path):
    import detectron2

    est = build_estimator("densepose", tmp_path, config=str(R50), weights="random")
    s, where = est.settings(), est.provenance()
    assert s["software"]["detectron2"] == detectron2.__version__ and s["software"]["torch"] == torch.__version__
    assert s["threads"] == 1 and s["device_type"] == "cpu" and "config" not in s
    assert where["config"] == str(R50) and where["detectron2"]["version"] == detectron2.__version__


@pytest.mark.slow
def test_resnet101_weights_with_a_resnet50_config_are_refused_naming_the_model(tmp_path):
    """A checkpoint with res4 blocks 0-22 (a ResNet-101's), built from a random R_50 model's tensors."""
    from densepose import add_densepose_config
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    add_densepose_config(cfg)
    cfg.merge_from_file(str(R50))
    cfg.MODEL.DEVICE = "cpu"
    state = build_model(cfg).state_dict()
    prefix = "backbone.bottom_up.res4.5."
    for block in range(6, 23):
        state.update({k.replace(prefix, f"backbone.bottom_up.res4.{block}."): v for k, v in state.items()
                      if k.startswith(prefix)})
    weights = tmp_path / "r101_like.pth"
    torch.save({"model": state}, weights)
    with pytest.raises(EstimatorError) as err:
        build_estimator("densepose", tmp_path, config=str(R50), weights=str(weights))
    assert "255 of their tensors are not in this model" in str(err.value)
    assert ("they hold a ResNet-101 (3-4-23-3 blocks in res2-res5) and the config builds a ResNet-50 (3-4-6-3 "
            "blocks in res2-res5): pass the config they were trained with (densepose_rcnn_R_101_FPN_*)") in str(err.value)


def _crops(data: Path) -> SimpleNamespace:
    """6 CUHK03 crops when the shared data is there (2 of one size, so that a batch shares a forward pass),
    else random crops of those sizes."""
    import cv2

    shared = SHARED_DATA / "cuhk03-p1" / "query"
    sources = sorted(shared.glob("*.jpg"))[:6] if shared.is_dir() else []
    rng = np.random.default_rng(0)
    for i in range(6):
        path = data / f"query/{i:04d}_c1s1_000001_00.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if sources:
            path.write_bytes(sources[i].read_bytes())
        else:
            cv2.imwrite(str(path), rng.integers(0, 256, ((258, 87), (277, 93))[i % 2] + (3,), dtype=np.uint8))
    keys = [p.relative_to(data).as_posix() for p in sorted(data.rglob("*.jpg"))]
    return SimpleNamespace(root=data, all_items=lambda: [SimpleNamespace(path=k, key=k) for k in keys])


@pytest.mark.slow
def test_store_bytes_do_not_depend_on_threads_workers_or_batch_size(tmp_path):
    from data.store import store_dir
    from precompute.runner import PrecomputeConfig, run_precompute
    from test_estimators import _shard_contents

    dataset = _crops(tmp_path / "data")
    before = torch.get_num_threads()

    def build(tag: str, threads: int, **kw) -> dict:
        torch.set_num_threads(threads)
        cfg = PrecomputeConfig(dataset="toy", root=tmp_path, estimator="densepose", size=32, shard_size=2, tag=tag,
                               options={"config": str(R50), "weights": "random", "min_body_fraction": 0.0}, **kw)
        assert run_precompute(cfg, dataset=dataset)["complete"]
        return _shard_contents(store_dir(tmp_path, "toy", "densepose", tag))

    try:
        reference = build("t1", 1)
        assert build("t2", 2) == reference
        assert build("w2", 2, workers=2) == reference
        assert build("b1", 2, batch_size=1) == reference
        # what the pinning is for: the model's own thread count moves its output (U, V) on these crops
        from data.io import read_image

        images = [read_image(dataset.root / it.key) for it in dataset.all_items()[:2]]
        u = [[iuv.U for iuv in build_estimator("densepose", dataset.root, config=str(R50), weights="random",
                                               min_body_fraction=0.0, threads=n).estimate(images, ["x"] * 2, ["k"] * 2)]
             for n in (1, 2)]
        assert any(not np.array_equal(a, b) for a, b in zip(*u))
    finally:
        torch.set_num_threads(before)
