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


def test_uint8_export_equals_pytorch_and_the_float_graph(tmp_path):
    """The uint8 graph (normalising inside) and the float graph give PyTorch's features for the same RGB bytes;
    the JSON beside each .onnx describes its input."""
    import json

    from dsa.transforms import normalise

    run = tmp_path / "runs" / "r"
    write_tiny_run(run, epoch=0, step=0)
    for kind in ("float", "uint8"):
        res = CliRunner().invoke(cli, ["export", "--run", str(run), "--input", kind])
        assert res.exit_code == 0, res.output
    f_path, u_path = run / "model-mf.onnx", run / "model-mf-uint8.onnx"
    spec_f = json.loads(f_path.with_suffix(".json").read_text())
    spec_u = json.loads(u_path.with_suffix(".json").read_text())
    model, (h, w) = build_model(load_checkpoint(run / "checkpoint.pt"), "mf")
    assert spec_f["input"]["dtype"] == "float32" and spec_f["input"]["shape"] == ["batch", 3, h, w]
    assert spec_u["input"]["dtype"] == "uint8" and spec_u["input"]["shape"] == ["batch", h, w, 3]
    assert spec_u["input"]["normalised_inside"] and not spec_f["input"]["normalised_inside"]
    assert spec_u["output"]["shape"] == ["batch", model.dim] and len(spec_u["checkpoint_sha256"]) == 64
    assert spec_u["max_abs_diff"] <= 1e-4
    rgb = torch.randint(0, 256, (4, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(normalise(rgb.permute(0, 3, 1, 2))).numpy()
    got_u = ort.InferenceSession(str(u_path), providers=["CPUExecutionProvider"]).run(None, {"images": rgb.numpy()})[0]
    floats = normalise(rgb.permute(0, 3, 1, 2)).numpy()
    got_f = ort.InferenceSession(str(f_path), providers=["CPUExecutionProvider"]).run(None, {"images": floats})[0]
    np.testing.assert_allclose(got_u, ref, atol=1e-4)
    np.testing.assert_allclose(got_f, ref, atol=1e-4)
    assert np.abs(ref).max() > 1e-3  # the features are not all zero: the comparison means something
