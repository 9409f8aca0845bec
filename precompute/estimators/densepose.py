"""``densepose``: detectron2's DensePose (the paper's estimator), run on re-ID crops.

detectron2 and its DensePose project are optional and imported only when this estimator is built.
Each crop is already a person box, so no person detection runs: the model's ROI heads get the whole
crop as the given box (``model.inference(..., detected_instances=...)``).  Crops are batched and
resized so that their short side is ``min_size`` (default 256: a 128×64 crop is not blown up to
detectron2's usual 800–1333).  The chart output (coarse segmentation, fine segmentation, U, V in box
coordinates) is turned into full-crop I/U/V maps by :func:`chart_output_to_iuv`, a pure function of
tensors that follows DensePose's own converter (bilinear resampling to the box, fine labels masked
by the coarse foreground, U/V taken from the label's channel), with U and V clamped to [0, 1].
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from dsa.iuv import IUV

from .base import Estimator, EstimatorError
from .iuv import paste_box_results

__all__ = ["DensePoseEstimator", "chart_output_to_iuv", "INSTALL_HINT", "MODEL_ZOO"]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the densepose estimator needs detectron2 and its DensePose project, which are not on PyPI: install them "
    "from source with pip install 'git+https://github.com/facebookresearch/detectron2.git' and "
    "pip install 'git+https://github.com/facebookresearch/detectron2@main#subdirectory=projects/DensePose'"
)

_ZOO = "https://dl.fbaipublicfiles.com/densepose"
#: DensePose model-zoo names → weights URLs (configs: projects/DensePose/configs/<name>.yaml)
MODEL_ZOO: dict[str, str] = {
    "densepose_rcnn_R_50_FPN_s1x": f"{_ZOO}/densepose_rcnn_R_50_FPN_s1x/165712039/model_final_162be9.pkl",
    "densepose_rcnn_R_101_FPN_s1x": f"{_ZOO}/densepose_rcnn_R_101_FPN_s1x/165712084/model_final_c6ab63.pkl",
    "densepose_rcnn_R_50_FPN_DL_s1x": f"{_ZOO}/densepose_rcnn_R_50_FPN_DL_s1x/165712097/model_final_0ed407.pkl",
    "densepose_rcnn_R_50_FPN_s1x_legacy":
        f"{_ZOO}/densepose_rcnn_R_50_FPN_s1x_legacy/164832157/model_final_d366fa.pkl",
}


def chart_output_to_iuv(coarse_segm: Any, fine_segm: Any, u: Any, v: Any, box_xyxy: Sequence[float],
                        image_hw: tuple[int, int]) -> IUV:
    """One instance's DensePose chart output → I/U/V maps of the whole image.

    ``coarse_segm`` [1, K, h, w] (K = 2 or 15, index 0 = background), ``fine_segm``, ``u``, ``v``
    [1, 25, h, w] are box-local scores/estimates (torch tensors or arrays); ``box_xyxy`` is the box in
    image pixels.  As in DensePose: every map is resampled bilinearly (align_corners=False) to the
    box's integer size; a pixel's label is the fine argmax where the coarse argmax is foreground, and
    its U, V come from that label's channel.  U and V are clamped to [0, 1]."""
    import torch
    import torch.nn.functional as F

    def as_tensor(x: Any) -> "torch.Tensor":
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        t = t.detach().to(torch.float32)
        return t if t.ndim == 4 else t.unsqueeze(0)

    coarse, fine, tu, tv = (as_tensor(t) for t in (coarse_segm, fine_segm, u, v))
    x0, y0, x1, y1 = (float(b) for b in box_xyxy)
    bw, bh = max(int(x1 - x0), 1), max(int(y1 - y0), 1)  # detectron2's make_int_box on XYWH

    def resample(t: "torch.Tensor") -> "torch.Tensor":
        return F.interpolate(t, (bh, bw), mode="bilinear", align_corners=False)[0]

    foreground = resample(coarse).argmax(dim=0) > 0
    labels = resample(fine).argmax(dim=0) * foreground
    index = labels.unsqueeze(0)
    uv = torch.stack([resample(tu).gather(0, index)[0], resample(tv).gather(0, index)[0]])
    uv = torch.where(labels.unsqueeze(0) > 0, uv.clamp(0, 1), torch.zeros_like(uv))
    iuv, _ = paste_box_results(image_hw, [[x0, y0, x1, y1]], [labels.cpu().numpy().astype(np.uint8)],
                               [uv.cpu().numpy()])
    return iuv


class DensePoseEstimator(Estimator):
    """detectron2 DensePose on the given crops (the crop is the box)."""

    name = "densepose"
    batch_size = 32

    def __init__(self, dataset_root: str | Path, config: str = "", weights: str = "", device: str = "auto",
                 min_size: int = 256, max_size: int = 512, min_body_fraction: float = 0.01) -> None:
        super().__init__(dataset_root)
        if importlib.util.find_spec("detectron2") is None or importlib.util.find_spec("densepose") is None:
            raise EstimatorError(INSTALL_HINT)
        if min_size < 16 or max_size < min_size:
            raise EstimatorError(f"estimator 'densepose': need 16 <= min_size <= max_size, got {min_size}, {max_size}")
        if not 0 <= min_body_fraction < 1:
            raise EstimatorError(f"estimator 'densepose': min_body_fraction must be in [0, 1), got {min_body_fraction}")
        if not config:
            raise EstimatorError(
                "estimator 'densepose' needs config=PATH to a DensePose yaml (e.g. detectron2's "
                "projects/DensePose/configs/densepose_rcnn_R_50_FPN_s1x.yaml) and weights=PATH|URL|zoo name "
                f"(one of {', '.join(MODEL_ZOO)})")
        self.config = str(Path(config).expanduser())
        if not Path(self.config).is_file():
            raise EstimatorError(f"estimator 'densepose': config file {self.config} does not exist")
        if not weights:
            stem = Path(self.config).stem
            if stem not in MODEL_ZOO:
                raise EstimatorError(f"estimator 'densepose': pass weights=PATH or URL (no model-zoo weights named {stem})")
            weights = stem
        self.weights = MODEL_ZOO.get(weights, weights)
        if "://" not in self.weights and not Path(self.weights).expanduser().is_file():
            raise EstimatorError(f"estimator 'densepose': weights file {self.weights} does not exist")
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.min_body_fraction = float(min_body_fraction)
        self._model, self._input_format, self.device = self._build(device)

    def _build(self, device: str) -> tuple[Any, str, str]:
        try:
            import torch
            from densepose import add_densepose_config
            from detectron2.checkpoint import DetectionCheckpointer
            from detectron2.config import get_cfg
            from detectron2.modeling import build_model
        except ImportError:
            raise EstimatorError(INSTALL_HINT) from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg = get_cfg()
        add_densepose_config(cfg)
        cfg.merge_from_file(self.config)
        cfg.MODEL.WEIGHTS = self.weights
        cfg.MODEL.DEVICE = device
        cfg.freeze()
        model = build_model(cfg).eval()
        if "://" in self.weights:
            log.info("fetching DensePose weights %s (cached by detectron2 after the first time)", self.weights)
        # detectron2's model-zoo .pkl weights are pickles from Facebook's download server: trusted source
        DetectionCheckpointer(model).load(self.weights)
        return model, cfg.INPUT.FORMAT, device

    def settings(self) -> dict[str, Any]:
        return {"config": Path(self.config).name, "weights": self.weights, "min_size": self.min_size,
                "max_size": self.max_size, "min_body_fraction": self.min_body_fraction,
                "box": "whole crop (no detection)"}

    def _scaled_size(self, h: int, w: int) -> tuple[int, int]:
        scale = min(self.min_size / min(h, w), self.max_size / max(h, w))
        return max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)

    def estimate(self, images: Sequence[np.ndarray], paths: Sequence[str | Path],
                 keys: Sequence[str]) -> list[IUV | None]:
        import torch
        from detectron2.structures import Boxes, Instances

        inputs, given = [], []
        for image in images:
            h, w = image.shape[:2]
            nh, nw = self._scaled_size(h, w)
            resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            if self._input_format == "BGR":
                resized = resized[..., ::-1]
            inputs.append({"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                           "height": h, "width": w})
            inst = Instances((nh, nw))
            inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, float(nw), float(nh)]], device=self.device))
            inst.pred_classes = torch.zeros(1, dtype=torch.int64, device=self.device)
            given.append(inst)
        with torch.inference_mode():
            outputs = self._model.inference(inputs, detected_instances=given, do_postprocess=True)
        results: list[IUV | None] = []
        for image, out in zip(images, outputs):
            inst = out["instances"]
            dp = inst.pred_densepose
            if not hasattr(dp, "u"):
                raise EstimatorError(f"{Path(self.config).name} is not a chart-based (IUV) DensePose model: "
                                     "use a densepose_rcnn_* config, not a CSE one")
            h, w = image.shape[:2]
            # the given box is the whole crop; use it exactly rather than the rescaled float box
            iuv = chart_output_to_iuv(dp.coarse_segm[:1], dp.fine_segm[:1], dp.u[:1], dp.v[:1], (0, 0, w, h), (h, w))
            results.append(iuv if iuv.body_fraction > self.min_body_fraction else None)
        return results
