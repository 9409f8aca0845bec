"""ONNX export: onnxruntime's features equal PyTorch's on random inputs (dynamic batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from evaluate.__main__ import cli  # noqa: E402
from conftest import write_tiny_run  # noqa: E402
from data.runs import load_checkpoint  # noqa: E402
from evaluate.features import build_model  # noqa: E402


def test_export_equals_pytorch(tmp_path):
    run = tmp_path / "runs" / "r"
    write_tiny_run(run, epoch=0, step=0)
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["export", "--run", "r", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and not list(tmp_path.glob(".m.onnx.tmp*"))
    model, (h, w) = build_model(load_checkpoint(run / "checkpoint.pt"), "mf")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # a batch size other than the export example's
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        assert got.shape == ref.shape == (batch, model.dim)
        np.testing.assert_allclose(got, ref, atol=1e-4)
    res = CliRunner().invoke(cli, ["export", "--run", str(run), "--feature-set", "global", "--no-check"])
    assert res.exit_code == 0, res.output
    assert (run / "model-global.onnx").is_file()
