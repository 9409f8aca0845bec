"""Dense-semantics estimators: where a crop's I/U/V maps come from (docs/DESIGN.md §5).

``build_estimator(name, dataset_root, **options)`` builds one of :data:`ESTIMATORS` (``synthetic``,
``iuv``, ``densepose``, ``pose``); each backend module is imported only when chosen.
"""
from dsa.iuv import IUV

from .base import ESTIMATORS, Estimator, EstimatorError, build_estimator, estimator_options, key_rng, sibling_path

__all__ = ["ESTIMATORS", "Estimator", "EstimatorError", "IUV", "build_estimator", "estimator_options", "key_rng", "sibling_path"]
