"""ONNX export of the inference model (MF-Stream only, dynamic batch axis).

The exported graph takes *normalised* float images [B, 3, H, W] (``dsa.transforms.normalise``
applied outside, as for the PyTorch model) and returns the features [B, D].
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.io import atomic_output
from data.runs import open_checkpoint
from evaluate.features import EvaluationError, build_model

log = logging.getLogger(__name__)


def export_onnx(run: str | os.PathLike, *, runs_dir: str | os.PathLike = "runs", feature_set: str = "mf",
                out: str | os.PathLike | None = None, opset: int = 17, check: bool = True,
                atol: float = 1e-4) -> dict[str, Any]:
    """Write the ONNX model atomically; with ``check``, compare onnxruntime with PyTorch on random
    inputs of two batch sizes.  Returns the path, input size, feature size and max difference."""
    if feature_set == "fused":
        raise EvaluationError("Only the MF-Stream feature sets (mf, global, local) can be exported.")
    ckpt = open_checkpoint(run, runs_dir)
    ckpt_path = ckpt.path
    model, (h, w) = build_model(ckpt, feature_set)
    out = Path(out) if out else ckpt_path.parent / f"model-{feature_set}.onnx"
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
    info: dict[str, Any] = {"onnx": str(out), "checkpoint": str(ckpt_path), "feature_set": feature_set,
                            "input": [3, h, w], "opset": opset}
    if check:
        info["max_abs_diff"] = check_onnx(model, out, (h, w), atol=atol)
    log.info("exported %s -> %s", ckpt_path, out)
    return info


def check_onnx(model: torch.nn.Module, path: str | os.PathLike, size: tuple[int, int], atol: float = 1e-4,
               batches: tuple[int, ...] = (1, 3), seed: int = 0) -> float:
    """Max |onnxruntime - PyTorch| over random inputs; raises EvaluationError above ``atol``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EvaluationError("onnxruntime is not installed; install the 'export' extra.") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, 3, *size, generator=gen)
        with torch.no_grad():
            ref = model.eval()(x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > atol:
        raise EvaluationError(f"The ONNX model differs from PyTorch by {worst:.2e} (> {atol:.0e}).")
    return worst
