"""Recipe switches beyond the paper: each changes the loss as stated; the paper's are off."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dsa.losses import DSALoss, TripletBatchHard, fusion_drop, similarity_distillation
from dsa.model import DSANet
from dsa.config import Recipe, get_preset, preset_names
from train.hooks import FusionHook

PAPER = get_preset("paper").recipe
PAPER_TERMS = ["id_fG", "id_fL", "tri_zG", "tri_zL", "id_zG", "id_zL"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads(); torch.set_num_threads(1)  # noqa: E702
    yield
    torch.set_num_threads(before)


def _net_and_inputs(variant: str = "dsa", seed: int = 0):
    torch.manual_seed(seed)
    cfg = get_preset("tiny").model
    net = DSANet(cfg, 4, variant)
    images = torch.randn(8, 3, cfg.height, cfg.width)
    dsap = torch.randn(8, 24, 3, cfg.dsap_size, cfg.dsap_size)
    return net, images, dsap, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _hook_choice(recipe, seed: int, epoch: int, step: int, net=None):
    """The fusion mode the trainer's FusionHook sets on the network before step ``step`` of ``epoch``."""
    net = net if net is not None else SimpleNamespace(fusion_drop="unset")
    hook = FusionHook(recipe, seed)
    hook.trainer = SimpleNamespace(bare_model=net, epoch=epoch, step=step)
    hook.before_step()
    return net.fusion_drop


def _run(net, x, d, drop):
    net.fusion_drop = drop
    try:
        return net(x, d)
    finally:
        net.fusion_drop = None


def test_paper_drop_d_is_the_paper_with_drop_d_only():
    a, b = get_preset("paper"), get_preset("paper-drop-d")
    assert b.model == a.model and b.recipe == a.recipe.replace(drop_d=0.5)


def test_paper_recipe_has_every_switch_off():
    for r in (Recipe(), PAPER, *(get_preset(n).recipe for n in preset_names() if n != "paper-drop-d")):
        assert (r.w_triplet_mf, r.drop_d, r.w_distill, r.dsag_first_epochs) == (0.0, 0.0, 0.0, 0)
    assert all(_hook_choice(PAPER, 3, e, s) is None for e in (0, 5, 300) for s in (0, 1, 17, 9999))
    loss = DSALoss(PAPER, "dsa")
    net, x, d, y = _net_and_inputs()
    _, terms = loss(net(x, d), y)
    assert list(terms) == PAPER_TERMS


def test_switch_values_are_checked():
    with pytest.raises(ValueError, match=r"recipe.drop_d=1.5 is out of range: it must be ≥ 0 and ≤ 1"):
        Recipe(drop_d=1.5)
    with pytest.raises(ValueError, match="recipe.w_distill=-1.0 is out of range"):
        Recipe(w_distill=-1.0)


def test_triplet_on_f_adds_exactly_its_weighted_terms():
    net, x, d, y = _net_and_inputs()
    out = net(x, d)
    base, _ = DSALoss(PAPER, "dsa")(out, y)
    total, terms = DSALoss(PAPER.replace(w_triplet_mf=2.0), "dsa")(out, y)
    tri = TripletBatchHard(PAPER.margin)
    assert list(terms) == PAPER_TERMS + ["tri_fG", "tri_fL"]
    expect = base + 2.0 * (tri(out["f_G"], y) + tri(out["f_L"], y))
    torch.testing.assert_close(total, expect)
    # stronger direct supervision is also the ID weight on f: a plain recipe field
    heavier, _ = DSALoss(PAPER.replace(w_id_mf=1.5), "dsa")(out, y)
    assert heavier.item() == pytest.approx(base.item() + 1.0 * (terms["id_fG"] + terms["id_fL"]), rel=1e-5)


def test_similarity_distillation_by_hand_and_teacher_detached():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    d = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    # cos(f): [[1,0,a],[0,1,a],[a,a,1]], a = 1/sqrt(2); cos(d): [[1,1,0],[1,1,0],[0,0,1]]
    a = 2 ** -0.5
    expect = (2 * 1 + 2 * a * a + 2 * a * a) / 9
    loss = similarity_distillation(f, d)
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    loss.backward()
    assert d.grad is None and f.grad is not None and f.grad.abs().sum() > 0
    assert similarity_distillation(3.0 * d, d).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_switch_adds_its_weighted_terms_and_leaves_d_alone():
    net, x, d, y = _net_and_inputs()
    out = net(x, d)
    base, _ = DSALoss(PAPER, "dsa")(out, y)
    loss = DSALoss(PAPER.replace(w_distill=0.7), "dsa")
    total, terms = loss(out, y)
    assert list(terms)[-2:] == ["distill_G", "distill_L"]
    expect = base + 0.7 * (similarity_distillation(out["f_G"], out["d_G"])
                           + similarity_distillation(out["f_L"], out["d_L"]))
    torch.testing.assert_close(total, expect)
    # the distillation terms send no gradient into the DSAG-Stream
    distill = sum(w * t for name, w, t in loss.last_terms if name.startswith("distill"))
    grads = torch.autograd.grad(distill, [p for p in net.dsag.parameters()], allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_switches_do_nothing_for_variants_without_fusion():
    net, x, _, y = _net_and_inputs("two-branch")
    out = net(x)
    r = PAPER.replace(w_triplet_mf=1.0, w_distill=1.0, drop_d=1.0, dsag_first_epochs=3)
    a, ta = DSALoss(PAPER, "two-branch")(out, y)
    b, tb = DSALoss(r, "two-branch")(out, y)
    assert list(ta) == list(tb) and a.item() == pytest.approx(b.item())
    net.fusion_drop = "d"  # a network without fusion ignores the mode
    assert set(net(x)) == set(out)


def test_model_drop_gives_exactly_f_or_d():
    net, x, d, _ = _net_and_inputs()
    net.eval()
    net.train()  # the mode acts while training (BatchNorm statistics frozen by eval() above are not needed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            m.eval()
    with torch.no_grad():
        full, no_d, no_f = _run(net, x, d, None), _run(net, x, d, "d"), _run(net, x, d, "f")
    torch.testing.assert_close(full["z_G"], full["f_G"] + full["d_G"])
    torch.testing.assert_close(no_d["z_G"], full["f_G"])
    torch.testing.assert_close(no_d["z_L"], full["f_L"])
    torch.testing.assert_close(no_f["z_G"], full["d_G"])
    torch.testing.assert_close(no_f["z_L"], full["d_L"])
    with pytest.raises(ValueError, match="fusion_drop"):
        _run(net, x, d, "z")
    net.eval()  # evaluation always fuses z = f + d
    net.fusion_drop = "d"
    with torch.no_grad():
        torch.testing.assert_close(net(x, d)["z_G"], full["z_G"])


def test_drop_d_fraction_deterministic_and_changes_the_loss():
    r = PAPER.replace(drop_d=0.3)
    choices = [fusion_drop(r, 1, s, seed=5) for s in range(4000)]
    assert choices == [fusion_drop(r, 1, s, seed=5) for s in range(4000)]      # a function of (seed, step)
    assert set(choices) == {None, "d"}
    assert 0.27 < choices.count("d") / len(choices) < 0.33
    assert choices != [fusion_drop(r, 1, s, seed=6) for s in range(4000)]
    loss = DSALoss(r, "dsa")
    step = choices.index("d")
    assert _hook_choice(r, 5, 1, step) == "d" and _hook_choice(r, 5, 1, choices.index(None)) is None
    # in a dropped step the fused losses see f alone, so z's terms equal those on f through z's classifiers
    net, x, d, y = _net_and_inputs()
    _, kept = loss(net(x, d), y)
    _, dropped = loss(_run(net, x, d, _hook_choice(r, 5, 1, step)), y)
    assert dropped["tri_zG"] != pytest.approx(kept["tri_zG"])
    assert dropped["tri_zG"] == pytest.approx(TripletBatchHard(r.margin)(net(x)["f_G"], y).item(), rel=1e-5)


def test_dsag_first_epochs_fuse_d_only_then_the_paper():
    r = PAPER.replace(dsag_first_epochs=2)
    loss = DSALoss(r, "dsa")
    assert [_hook_choice(r, 0, e, 10 * e) for e in range(4)] == ["f", "f", None, None]
    net, x, d, y = _net_and_inputs()
    out = _run(net, x, d, _hook_choice(r, 0, 0, 0))
    total, _ = loss(out, y)
    # z = d: the fused terms send no gradient into f; only f's own ID terms do
    fused = sum(w * t for name, w, t in loss.last_terms if name.endswith(("zG", "zL")))
    g = torch.autograd.grad(fused, [out["f_G"]], retain_graph=True)[0]
    assert g.abs().sum() == 0
    g_all = torch.autograd.grad(total, [out["f_G"]])[0]
    assert g_all.abs().sum() > 0


def test_trunk_blocks_default_and_json_roundtrip():
    import json

    from dsa.config import ModelConfig

    assert ModelConfig().trunk_blocks == (3, 4, 6)                 # ResNet-50: the paper's trunk
    cfg = get_preset("bench").model
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.trunk_blocks == (1, 1, 1)
    net = DSANet(cfg, 5, "dsa")
    assert [len(getattr(net.mf.backbone, f"layer{i}")) for i in (1, 2, 3)] == [1, 1, 1]
    with pytest.raises(ValueError, match="trunk_blocks"):
        ModelConfig(trunk_blocks=(3, 0, 6))
    assert ModelConfig(trunk_blocks=[2, 2, 2]).trunk_blocks == (2, 2, 2)
