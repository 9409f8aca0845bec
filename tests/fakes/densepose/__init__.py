"""Fake ``densepose`` (tests only): the config entry the estimator reads."""
from detectron2.config import CfgNode


def add_densepose_config(cfg: CfgNode) -> None:
    cfg.MODEL.ROI_DENSEPOSE_HEAD = CfgNode({"PREDICTOR_NAME": "DensePoseChartWithConfidencePredictor"})
    cfg.MODEL.DENSEPOSE_ON = True
