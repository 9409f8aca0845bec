"""ONNX export of the inference model (MF-Stream only, dynamic batch axis), with its input spec as JSON.

Two input kinds (``input_kind``):

* ``float`` (default): ``images`` float32 [B, 3, H, W], RGB, scaled to [0, 1] and normalised with the
  ImageNet mean/std (``dsa.transforms.normalise``) outside the graph, as for the PyTorch model;
* ``uint8``: ``images`` uint8 [B, H, W, 3], RGB bytes as an image decoder gives them (resized to H x W,
  channels last); the graph converts and normalises inside.

Both return ``features`` float32 [B, D].  ``<model>.json`` beside the ``.onnx`` says all of this
(input name, dtype, layout, size, colour order, mean/std, output size, the checkpoint and its sha256).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.io import atomic_output, atomic_write_json, file_sha256
from data.runs import open_checkpoint
from dsa.transforms import IMAGENET_MEAN, IMAGENET_STD
from evaluate.features import EvaluationError, build_model

INPUT_KINDS = ("float", "uint8")
#: the opsets PyTorch's TorchScript exporter writes (the CLI's --opset is declared with them)
OPSETS = (7, 20)


class Uint8Input(torch.nn.Module):
    """uint8 RGB [B, H, W, 3] -> the model's features: channels first, /255, ImageNet mean/std, inside."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        # the same arithmetic as dsa.transforms.normalise, with constants the tracer keeps as buffers
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return self.model((x - self.mean) / self.std)


#: how the images are resized before the network (``data.transforms.build_test_transform``); another resize
#: gives other features (OpenCV's default ``INTER_LINEAR`` does not antialias when it shrinks a crop)
RESIZE = {"interpolation": "bilinear", "antialias": True,
          "same_as": "PIL Image.resize((width, height), Image.BILINEAR), torchvision resize(antialias=True) "
                     "(byte-identical on uint8 RGB)",
          "not": "cv2.resize's defaults (INTER_LINEAR without antialiasing: other pixels when shrinking)"}


def input_spec(input_kind: str, h: int, w: int) -> dict[str, Any]:
    """What the exported graph expects, for the JSON beside the .onnx and the README."""
    resize = f"resize to {h}x{w} (height x width) with antialiased bilinear interpolation (PIL's BILINEAR)"
    if input_kind == "uint8":
        return {"name": "images", "dtype": "uint8", "layout": "NHWC", "shape": ["batch", h, w, 3],
                "colour": "RGB", "range": [0, 255], "normalised_inside": True,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "resize": dict(RESIZE),
                "preprocess": f"decode to RGB, {resize}, stack as uint8"}
    return {"name": "images", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, h, w], "colour": "RGB",
            "range": "((x / 255) - mean) / std per channel", "normalised_inside": False,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "resize": dict(RESIZE),
            "preprocess": f"decode to RGB, {resize}, scale to [0, 1], subtract mean, divide by std, channels first"}

log = logging.getLogger(__name__)


def export_onnx(run: str | os.PathLike, *, runs_dir: str | os.PathLike = "runs", feature_set: str = "mf",
                out: str | os.PathLike | None = None, opset: int = 17, check: bool = True,
                atol: float = 1e-4, input_kind: str = "float") -> dict[str, Any]:
    """Write the ONNX model atomically and its input spec beside it (``<out>.json``); with ``check``,
    compare onnxruntime with PyTorch on random inputs of two batch sizes.  Returns the JSON's content
    (paths, input spec, feature size, max difference)."""
    if feature_set in ("fused", "dsag"):
        raise EvaluationError("Only the MF-Stream feature sets (mf, global, local) can be exported.")
    if input_kind not in INPUT_KINDS:
        raise EvaluationError(f"Unknown input kind {input_kind!r}; choose one of {', '.join(INPUT_KINDS)}.")
    if not OPSETS[0] <= opset <= OPSETS[1]:
        raise EvaluationError(f"The ONNX opset {opset} is not one the exporter writes; choose {OPSETS[0]} to {OPSETS[1]}.")
    ckpt = open_checkpoint(run, runs_dir)
    ckpt_path = ckpt.path
    model, (h, w) = build_model(ckpt, feature_set)
    suffix = "-uint8" if input_kind == "uint8" else ""
    out = Path(out) if out else ckpt_path.parent / f"model-{feature_set}{suffix}.onnx"
    if input_kind == "uint8":
        model = Uint8Input(model).eval()
        example = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8)
    else:
        example = torch.randn(2, 3, h, w)
    with atomic_output(out) as tmp:
        try:
            # the TorchScript exporter: dependable and quick for this plain CNN; its deprecation
            # warning (torch >= 2.9 prefers the dynamo exporter) is expected
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["features"],
                                  dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                                  opset_version=opset, dynamo=False)
        except Exception as e:  # noqa: BLE001 - exporter errors are reported as one sentence
            raise EvaluationError(f"ONNX export failed: {type(e).__name__}: {e}") from None
    dim = _dim(model)
    info: dict[str, Any] = {"onnx": str(out), "checkpoint": str(ckpt_path), "checkpoint_sha256": file_sha256(ckpt_path),
                            "feature_set": feature_set, "input_kind": input_kind, "input": input_spec(input_kind, h, w),
                            "output": {"name": "features", "dtype": "float32", "shape": ["batch", dim],
                                       "compare_with": "cosine distance (evaluate's default)"},
                            "opset": opset, "complete": bool(ckpt.info.complete), "step": ckpt.info.step}
    if check:
        info["max_abs_diff"] = check_onnx(model, out, (h, w), atol=atol, input_kind=input_kind)
    atomic_write_json(out.with_suffix(".json"), info)
    info["spec"] = str(out.with_suffix(".json"))
    log.info("exported %s -> %s", ckpt_path, out)
    if not ckpt.info.complete:
        log.warning("%s is a checkpoint of an unfinished run (epoch %d, step %d): the exported model is not the "
                    "trained network", ckpt_path, ckpt.info.epoch, ckpt.info.step)
    return info


def _dim(model: torch.nn.Module) -> int:
    inner = model.model if isinstance(model, Uint8Input) else model
    return int(inner.dim)


def check_onnx(model: torch.nn.Module, path: str | os.PathLike, size: tuple[int, int], atol: float = 1e-4,
               batches: tuple[int, ...] = (1, 3), seed: int = 0, input_kind: str = "float") -> float:
    """Max |onnxruntime - PyTorch| over random inputs (uint8 RGB [B, H, W, 3] for ``input_kind`` uint8);
    raises EvaluationError above ``atol``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EvaluationError("onnxruntime is not installed; install the 'export' extra.") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batches:
        x = (torch.randint(0, 256, (b, *size, 3), generator=gen, dtype=torch.uint8) if input_kind == "uint8"
             else torch.randn(b, 3, *size, generator=gen))
        with torch.no_grad():
            ref = model.eval()(x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > atol:
        raise EvaluationError(f"The ONNX model differs from PyTorch by {worst:.2e} (> {atol:.0e}).")
    return worst
