"""DSANet, its streams and presets: shapes vs paper Table 1, batched == per-branch, variants,
inference model, checkpoints, pretrained weights, normalisation, complexity."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from dsa import parts
from dsa.backbone import PretrainedWeightsError, imagenet_cache_path
from dsa.complexity import complexity, main as complexity_main
from dsa.dsag_stream import BranchMerge, DSAGStream
from dsa.heads import MultiClassifier
from dsa.mf_stream import MFStream
from dsa.errors import UserError
from dsa.model import VARIANTS, DSANet, InferenceModel, ModelError, build_dsanet
from dsa.config import ModelConfig, get_preset, preset_names
from dsa.transforms import normalise
from tests.oracles import part_branches_reference

TINY = get_preset("tiny").model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP oversubscription costs 10-100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(cfg: ModelConfig, b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 3, cfg.height, cfg.width, generator=g),
            torch.randn(b, 24, 3, cfg.dsap_size, cfg.dsap_size, generator=g))


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------ paper preset

@pytest.fixture(scope="module")
def paper_run():
    """The paper network, one eval forward at batch 2 with hooks on the stage outputs."""
    torch.manual_seed(0)
    net = DSANet(get_preset("paper").model, num_classes=751).eval()
    maps: dict[str, tuple[int, ...]] = {}
    hooks = [getattr(net.dsag, n).register_forward_hook(
        lambda m, i, o, n=n: maps.__setitem__(n, tuple(o.shape)))
        for n in ("stem", "conv3", "merge1", "conv4", "merge2")]
    hooks.append(net.mf.backbone.register_forward_hook(lambda m, i, o: maps.__setitem__("F", tuple(o.shape))))
    images, dsap = torch.randn(2, 3, 256, 128), torch.randn(2, 24, 3, 32, 32)
    with torch.no_grad():
        out = net(images, dsap)
    for h in hooks:
        h.remove()
    return net, out, maps


def test_paper_output_shapes_follow_table1(paper_run):
    net, out, maps = paper_run
    assert maps["F"] == (2, 1024, 16, 8)                    # ResNet-50 conv4_x at H/16
    assert maps["stem"] == (2, 24 * 64, 32, 32)             # conv1/conv2: 24 branches, 32x32
    assert maps["conv3"] == (2, 24 * 64, 16, 16)            # conv3_x: stride 2 -> 16x16
    assert maps["merge1"] == (2, 13 * 64, 16, 16)           # 24 -> 13
    assert maps["conv4"] == (2, 13 * 128, 8, 8)             # conv4_x: 13 branches, 8x8
    assert maps["merge2"] == (2, 1024, 8, 8)                # D = 8 x 128 channels
    for k in ("f_G", "d_G", "z_G"):
        assert out[k].shape == (2, 2048)
    for k in ("f_L", "d_L", "z_L"):
        assert out[k].shape == (2, 8, 256)
    for k in ("logits_fG", "logits_zG", "logits_zL"):
        assert out[k].shape == (2, 751)
    assert len(out["logits_fL"]) == 8 and all(t.shape == (2, 751) for t in out["logits_fL"])
    assert torch.equal(out["z_G"], out["f_G"] + out["d_G"])
    # branch counts of Table 1 are the groups of the batched convolutions
    d = net.dsag
    assert d.stem.conv1.kernel_size == (5, 5) and d.stem.conv1.groups == 24 and d.stem.conv1.out_channels == 24 * 32
    assert d.stem.conv2.groups == 24 and d.conv3[0].conv1.groups == 24 and d.conv3[0].conv1.stride == (2, 2)
    assert d.conv4[0].conv1.groups == 13 and d.conv4[0].conv1.stride == (2, 2)
    assert d.head_g[0].conv1.groups == 1 and d.head_g[0].conv1.out_channels == 2048
    assert d.head_l[0].conv1.groups == 8 and d.head_l[0].conv1.out_channels == 8 * 256
    assert len(d.conv3) == len(d.conv4) == len(d.head_g) == len(d.head_l) == 2


def test_paper_parameter_counts(paper_run):
    net, _, _ = paper_run
    ref = torchvision.models.resnet50(weights=None)
    trunk = [ref.conv1, ref.bn1, ref.layer1, ref.layer2, ref.layer3]
    assert _n(net.mf.backbone) == sum(_n(m) for m in trunk)
    assert _n(net.mf.global_branch) == _n(ref.layer4)       # conv5_x, stride only differs

    def basic(cin, c, down):   # ResNet-18 basic block: two 3x3 convs + BN (+ 1x1 projection)
        return cin * c * 9 + c * c * 9 + 4 * c + (cin * c + 2 * c if down else 0)

    conv5_g = basic(1024, 2048, True) + basic(2048, 2048, False)
    conv5_l = 8 * (basic(128, 256, True) + basic(256, 256, False))
    mbns = (24 * (3 * 32 * 25 + 2 * 32 + 32 * 64 * 9 + 2 * 64 + basic(64, 64, True) + basic(64, 64, False))
            + 13 * (basic(64, 128, True) + basic(128, 128, False)))
    assert _n(net.dsag.head_g) == conv5_g
    assert _n(net.dsag.head_l) == conv5_l
    assert _n(net.dsag) == mbns + conv5_g + conv5_l
    part = 8 * (1024 * 64 + 64 * 64 * 9 + 64 * 256 + 2 * (64 + 64 + 256) + 1024 * 256 + 2 * 256
                + 2 * (256 * 64 + 64 * 64 * 9 + 64 * 256 + 2 * (64 + 64 + 256)))
    assert _n(net.mf.part_branch) == part
    assert _n(InferenceModel(net)) == _n(net.mf)


# ------------------------------------------------------------------------ batched == per-branch

@pytest.mark.parametrize("train", [False, True])
def test_dsag_batched_equals_per_branch(train):
    torch.manual_seed(1)
    cfg = get_preset("tiny").model
    dsag = DSAGStream(cfg).train(train)
    if not train:   # non-trivial BN running statistics
        with torch.no_grad():
            for m in dsag.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    ref = dsag.to_per_branch()
    assert ref.training == train
    _, dsap = _inputs(cfg, b=3)
    out, expect = dsag(dsap, return_maps=True), ref(dsap, return_maps=True)
    for k in ("conv3", "merge1", "conv4", "D", "d_G", "d_L"):
        torch.testing.assert_close(out[k], expect[k], rtol=1e-5, atol=1e-5, msg=k)
    if train:   # running statistics updated identically, branch by branch
        for i in (0, 13, 23):
            torch.testing.assert_close(dsag.stem.bn2.running_mean.view(24, -1)[i], ref.stems[i].bn2.running_mean)
        torch.testing.assert_close(dsag.conv4[0].bn1.running_var.view(13, -1)[5], ref.conv4[5][0].bn1.running_var)


def test_mf_part_branches_equal_per_branch():
    torch.manual_seed(2)
    mf = MFStream(TINY).eval()
    ref = part_branches_reference(mf)
    images, _ = _inputs(TINY, b=2)
    with torch.no_grad():
        fmap = mf.backbone(images)
        got = mf(images)["f_L"]
        expect = torch.stack([r(fmap).mean(dim=(2, 3)) for r in ref], dim=1)
    assert isinstance(ref[0][0], torchvision.models.resnet.Bottleneck)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_branch_merge_matches_parts_table():
    x = torch.randn(2, 24 * 3, 4, 4)
    merged = BranchMerge(parts.LEVEL1_GROUPS, offset=1)(x)
    expect = torch.einsum("gp,bpchw->bgchw", torch.from_numpy(parts.merge_matrix(1)), x.view(2, 24, 3, 4, 4))
    torch.testing.assert_close(merged, expect.reshape(2, 13 * 3, 4, 4))
    y = torch.randn(2, 13 * 3, 4, 4)
    merged2 = BranchMerge(parts.LEVEL2_GROUPS, offset=0)(y)
    expect2 = torch.einsum("gp,bpchw->bgchw", torch.from_numpy(parts.merge_matrix(2)), y.view(2, 13, 3, 4, 4))
    torch.testing.assert_close(merged2, expect2.reshape(2, 8 * 3, 4, 4))


def test_multi_classifier_equals_separate_classifiers():
    torch.manual_seed(3)
    mc = MultiClassifier(8, 6, 5, 7)
    x = torch.randn(4, 8, 6)
    for train in (True, False):
        mc.train(train)
        got = mc(x)
        for i in (0, 4, 7):
            torch.testing.assert_close(got[:, i], mc.part(i)(x[:, i]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- variants

EXPECTED_KEYS = {
    "dsa": {"f_G", "f_L", "d_G", "d_L", "z_G", "z_L", "logits_fG", "logits_fL", "logits_zG", "logits_zL"},
    "dsa-concat": {"f_G", "f_L", "d_G", "d_L", "z_G", "z_L", "logits_fG", "logits_fL", "logits_zG", "logits_zL"},
    "dsa-global": {"f_G", "d_G", "z_G", "logits_fG", "logits_zG"},
    "dsa-local": {"f_L", "d_L", "z_L", "logits_fL", "logits_zL"},
    "two-branch": {"f_G", "f_L", "logits_fG", "logits_fL"},
    "baseline": {"f_G", "logits_fG"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_outputs(variant):
    torch.manual_seed(0)
    net = DSANet(TINY, 5, variant)
    images, dsap = _inputs(TINY)
    out = net(images, dsap)
    assert set(out) == EXPECTED_KEYS[variant]
    if "z_G" in out:
        assert out["z_G"].shape == out["f_G"].shape == out["d_G"].shape == (4, TINY.global_dim)
    if "z_L" in out:
        assert out["z_L"].shape == out["d_L"].shape == (4, 8, TINY.part_dim)
        fused = out["f_L"] + out["d_L"]
        assert torch.equal(out["z_L"], fused) != (variant == "dsa-concat")
    assert (net.dsag is None) == (variant in ("two-branch", "baseline"))
    # without DSAP images only the MF-Stream runs
    assert set(net(images)) == EXPECTED_KEYS[variant] - {"d_G", "d_L", "z_G", "z_L", "logits_zG", "logits_zL"}


def test_unknown_variant_and_preset():
    with pytest.raises(ValueError, match="two-branch"):
        DSANet(TINY, 5, "dsa-everything")
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of: bench, mobilenet, mobilenet-cpu, paper"):
        get_preset("huge")
    with pytest.raises(ValueError, match="element-wise"):
        ModelConfig(dsag_conv5_g=1024)
    with pytest.raises(ValueError, match="has no field model.depth"):
        ModelConfig.from_dict({**TINY.to_dict(), "depth": 3})
    assert set(preset_names()) == {"paper", "small", "tiny", "mobilenet", "mobilenet-cpu", "bench", "paper-drop-d"}


def test_paper_preset_is_the_papers_text_and_the_fields_defaults():
    """`paper` spells out every field, and they are the dataclasses' defaults; the readings the paper's text
    fixes: 9 MF ID terms at 0.5 (§3.2.4, §4.2: the 8 part terms summed), ImageNet initialisation (§4.2), the
    DSAP images mirrored with a mirrored image."""
    from dsa.config import Recipe

    p = get_preset("paper")
    assert p.model == ModelConfig() and p.recipe == Recipe()
    assert p.recipe.part_id_reduction == "sum" and p.recipe.dsap_flip and p.pretrained == "imagenet"
    assert p.variant == "dsa" and p.recipe.w_id_mf == 0.5
    for name in ("small", "tiny", "bench"):  # widths without ImageNet weights start from scratch
        assert get_preset(name).pretrained == "none"


def test_paper_recipe():
    r = get_preset("paper").recipe
    assert (r.epochs, r.warmup_epochs, r.lr_start, r.lr_peak, r.lr_decay_step, r.lr_decay_gamma) == \
        (320, 20, 8e-6, 8e-4, 40, 0.5)
    assert (r.batch_p, r.batch_k, r.margin, r.weight_decay, r.optimizer) == (16, 4, 0.3, 5e-4, "adam")
    assert (r.w_id_mf, r.w_triplet, r.w_id_fused, r.label_smoothing, r.random_erasing) == (0.5, 1.5, 1.0, 0.1, 0.5)
    m = get_preset("paper").model
    assert (m.height, m.width, m.base_width, m.global_dim, m.part_dim, m.dsap_size) == (256, 128, 64, 2048, 256, 32)


# ---------------------------------------------------------------------------- inference model

@pytest.mark.parametrize("variant,feature_set,dim", [
    ("dsa", "mf", 32 + 64), ("dsa", "global", 32), ("dsa", "local", 64),
    ("baseline", "mf", 32), ("dsa-local", "mf", 64), ("two-branch", "local", 64)])
def test_inference_model_dims(variant, feature_set, dim):
    net = DSANet(TINY, 5, variant).eval()
    inf = InferenceModel(net, feature_set).eval()
    images, _ = _inputs(TINY)
    before = images.clone()
    with torch.no_grad():
        feats, out = inf(images), net(images)
    assert feats.shape == (4, dim) == (4, inf.dim)
    assert torch.equal(images, before)
    parts_ = []
    if feature_set in ("mf", "global") and "f_G" in out:
        parts_.append(out["f_G"])
    if feature_set in ("mf", "local") and "f_L" in out:
        parts_.append(out["f_L"].flatten(1))
    torch.testing.assert_close(feats, torch.cat(parts_, 1))


def test_inference_model_on_mf_stream_alone():
    mf = MFStream(TINY).eval()
    inf = InferenceModel(mf)
    assert not any("dsag" in k for k in inf.state_dict())
    with torch.no_grad():
        assert inf(_inputs(TINY, b=2)[0]).shape == (2, 32 + 64)
    with pytest.raises(ValueError, match="global"):
        InferenceModel(DSANet(TINY, 5, "dsa-local"), "global")
    with pytest.raises(ValueError, match="unknown feature set"):
        InferenceModel(mf, "fused")


def test_channels_last_gives_same_features():
    net = DSANet(TINY, 5).eval()
    images, dsap = _inputs(TINY)
    with torch.no_grad():
        a = net(images, dsap)
        net_cl = net.to(memory_format=torch.channels_last)
        b = net_cl(images.contiguous(memory_format=torch.channels_last), dsap)
    torch.testing.assert_close(a["z_G"], b["z_G"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a["z_L"], b["z_L"], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- checkpoints

def test_build_dsanet_roundtrip():
    torch.manual_seed(4)
    net = DSANet(TINY, 6, "dsa-concat")
    net(*_inputs(TINY))          # move BN running stats away from their initial values
    back = build_dsanet(TINY, 6, "dsa-concat", net.state_dict())
    assert back.variant == "dsa-concat" and back.num_classes == 6
    images, dsap = _inputs(TINY, seed=9)
    net.eval(), back.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(images, dsap)["z_L"], net(images, dsap)["z_L"])
    ddp = {"module." + k: v for k, v in net.state_dict().items()}   # DDP / torch.compile prefixes are dropped
    build_dsanet(TINY, 6, "dsa-concat", ddp)


def test_build_dsanet_rejects_mismatch():
    state = DSANet(TINY, 6, "dsa").state_dict()
    with pytest.raises(ModelError, match="missing"):
        build_dsanet(TINY, 6, "dsa-concat", state)
    with pytest.raises(ModelError, match="other shapes.*first 'cls_fG"):
        build_dsanet(TINY, 7, "dsa", state)
    with pytest.raises(ModelError, match="unknown variant"):
        build_dsanet(TINY, 6, "bogus", state)
    assert issubclass(ModelError, UserError)


# ---------------------------------------------------------------------------- pretrained weights

@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    torch.manual_seed(5)
    ref = torchvision.models.resnet50(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    return path, ref.state_dict()


def _check_loaded(mf: MFStream, state: dict) -> None:
    assert torch.equal(mf.backbone.conv1.weight, state["conv1.weight"])
    assert torch.equal(mf.backbone.layer3[5].bn3.running_var, state["layer3.5.bn3.running_var"])
    assert torch.equal(mf.global_branch[0].downsample[0].weight, state["layer4.0.downsample.0.weight"])
    assert torch.equal(mf.global_branch[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert mf.global_branch[0].conv2.stride == (1, 1)          # last stride removed


def test_pretrained_from_path(resnet50_file):
    path, state = resnet50_file
    mf = MFStream(get_preset("paper").model, pretrained=str(path))
    _check_loaded(mf, state)


def test_pretrained_errors(resnet50_file, tmp_path):
    path, state = resnet50_file
    with pytest.raises(PretrainedWeightsError, match="base width 64"):
        MFStream(get_preset("small").model, pretrained=str(path))
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        MFStream(TINY, pretrained=str(tmp_path / "nope.pth"))
    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layer2.")} | {"head.w": torch.zeros(1)}, broken)
    with pytest.raises(PretrainedWeightsError, match=r"missing keys \['layer2.*unexpected keys \['head.w'\]"):
        MFStream(get_preset("paper").model, pretrained=str(broken))


def test_pretrained_imagenet_cache_and_offline(resnet50_file, tmp_path, monkeypatch):
    path, state = resnet50_file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsError, match="not cached at .*hub/checkpoints/resnet50-"):
        MFStream(get_preset("paper").model, pretrained="imagenet")
    cache = imagenet_cache_path()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="unreadable.*delete the file"):
        MFStream(get_preset("paper").model, pretrained="imagenet")
    cache.unlink()
    cache.symlink_to(path)
    _check_loaded(MFStream(get_preset("paper").model, pretrained="imagenet"), state)


# ----------------------------------------------------------------------- normalisation, complexity

def test_normalise_uint8_and_float_not_in_place():
    img = torch.randint(0, 256, (2, 3, 8, 4), dtype=torch.uint8)
    before = img.clone()
    a = normalise(img)
    b_in = img.float() / 255
    b_copy = b_in.clone()
    b = normalise(b_in)
    assert torch.equal(img, before) and torch.equal(b_in, b_copy)
    torch.testing.assert_close(a, b)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(a, (before.float() / 255 - mean) / std)
    cl = normalise(img.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="RGB"):
        normalise(torch.zeros(2, 4, 8, 8))


def test_complexity_counts_are_consistent():
    r = complexity("tiny", "dsa", num_classes=10)
    p, f = r["params"], r["flops_per_image"]
    net = DSANet(TINY, 10)
    assert p["total_training"] == _n(net)
    assert p["mf_stream"] == p["mf_backbone"] + p["mf_global_branch"] + p["mf_part_branches"] == p["inference_model"]
    assert p["total_training"] == p["mf_stream"] + p["dsag_stream"] + p["classifiers_and_fusion"]
    assert f["inference_model"] == f["mf_stream"] > 0
    assert f["training_forward"] > f["mf_stream"] + f["dsag_stream"] > f["dsag_stream"] > 0
    res = CliRunner().invoke(complexity_main, ["--preset", "tiny", "--variant", "baseline"])
    assert res.exit_code == 0 and "inference_model" in res.output and "GFLOPs" in res.output
    huge = CliRunner().invoke(complexity_main, ["--preset", "huge"])
    assert huge.exit_code == 1 and "unknown preset 'huge'" in huge.output


def test_flop_count_matches_hand_count_for_one_conv():
    """FlopCounterMode counts grouped convolutions per group (sanity of what complexity reports)."""
    cfg = TINY
    d = DSAGStream(cfg).eval()
    r = complexity("tiny", "dsa", num_classes=10)["flops_per_image"]
    s = cfg.dsap_size
    stem = 2 * s * s * 24 * (cfg.dsag_conv1 * 3 * 25 + cfg.dsag_conv2 * cfg.dsag_conv1 * 9)
    assert r["dsag_stream"] > stem
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        d.stem(torch.zeros(1, 72, s, s))
    assert fc.get_total_flops() == stem
    assert np.isclose(d.stem.conv1.weight.numel(), 24 * cfg.dsag_conv1 * 3 * 25)
