"""Losses on hand-made cases: label smoothing value, batch-hard mining, the DSA weighting."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dsa.losses import CrossEntropyLabelSmooth, DSALoss, TripletBatchHard
from dsa.model import DSANet
from dsa.config import get_preset

RECIPE = get_preset("paper").recipe


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # a shared 2-core machine: oversubscribed OpenMP threads cost 10-100x
    before = torch.get_num_threads(); torch.set_num_threads(1)  # noqa: E702
    yield
    torch.set_num_threads(before)


def test_label_smoothing_value_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 1])
    eps, k = 0.1, 3
    expect = 0.0
    for row, y in zip(logits.tolist(), targets.tolist()):
        z = math.log(sum(math.exp(v) for v in row))
        logp = [v - z for v in row]
        expect += -((1 - eps) * logp[y] + eps / k * sum(logp))
    got = CrossEntropyLabelSmooth(eps)(logits, targets)
    assert got.item() == pytest.approx(expect / 2, rel=1e-6)
    assert CrossEntropyLabelSmooth(0.0)(logits, targets).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-6)
    with pytest.raises(ValueError):
        CrossEntropyLabelSmooth(1.0)


def test_triplet_hardest_positive_and_negative_by_hand():
    # 1-D features: ids 0 at 0 and 1; ids 1 at 3 and 10.
    feats = torch.tensor([[0.0], [1.0], [3.0], [10.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = TripletBatchHard(margin=0.3)(feats, labels)
    # anchors (hardest positive d_ap, hardest negative d_an):
    #   x=0: 1, 3 -> 0;  x=1: 1, 2 -> 0;  x=3: 7, 2 (to x=1) -> 5.3;  x=10: 7, 9 -> 0
    assert loss.item() == pytest.approx(5.3 / 4, rel=1e-5)
    loss.backward()
    # only anchor x2=3 is active: L = ((x3 - x2) - (x2 - x1) + m) / 4
    #   -> dL/dx0 = 0, dL/dx1 = 1/4, dL/dx2 = -2/4, dL/dx3 = 1/4
    torch.testing.assert_close(feats.grad.flatten(), torch.tensor([0.0, 0.25, -0.5, 0.25]))


def _triplet_reference(x: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    losses = []
    for i in range(len(y)):
        ap = max(((x[i] - x[j]).norm() for j in range(len(y)) if j != i and y[j] == y[i]), default=None)
        an = min(((x[i] - x[j]).norm() for j in range(len(y)) if y[j] != y[i]), default=None)
        if ap is not None and an is not None:
            losses.append(torch.relu(ap - an + margin))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 5, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    torch.testing.assert_close(TripletBatchHard(0.3)(x, y), _triplet_reference(x, y, 0.3), rtol=1e-5, atol=1e-5)


def test_triplet_degenerate_batches_are_finite():
    x = torch.zeros(4, 3, requires_grad=True)          # identical features: zero distances
    loss = TripletBatchHard(0.3)(x, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.3) and torch.isfinite(x.grad).all()
    one_id = TripletBatchHard(0.3)(torch.randn(3, 2, requires_grad=True), torch.tensor([5, 5, 5]))
    assert one_id.item() == 0.0 and one_id.requires_grad


def _out(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = get_preset("tiny").model
    net = DSANet(cfg, 4, variant)
    images = torch.randn(8, 3, cfg.height, cfg.width)
    dsap = torch.randn(8, 24, 3, cfg.dsap_size, cfg.dsap_size)
    return net, net(images, dsap), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_dsa_loss_weighting_by_hand():
    """The paper's loss (§3.2.4, §4.2): 0.5 × (ID(f_G) + the 8 ID(f_L,i) summed) + 1.5 × triplets on z + 1.0 ×
    ID on z; ``part_id_reduction="mean"`` is the other reading, the 8 part terms averaged."""
    _, out, y = _out("dsa")
    assert RECIPE.part_id_reduction == "sum"
    total, terms = DSALoss(RECIPE, "dsa")(out, y)
    assert list(terms) == ["id_fG", "id_fL", "tri_zG", "tri_zL", "id_zG", "id_zL"]
    ce, tri = CrossEntropyLabelSmooth(0.1), TripletBatchHard(0.3)
    parts = sum(ce(lg, y) for lg in out["logits_fL"])
    expect = (0.5 * ce(out["logits_fG"], y) + sum(0.5 * ce(lg, y) for lg in out["logits_fL"])
              + 1.5 * (tri(out["z_G"], y) + tri(out["z_L"], y)) + 1.0 * (ce(out["logits_zG"], y) + ce(out["logits_zL"], y)))
    torch.testing.assert_close(total, expect)
    assert terms["id_fL"] == pytest.approx(parts.item(), rel=1e-6)
    assert all(isinstance(v, float) for v in terms.values())
    total_mean, terms_mean = DSALoss(RECIPE.replace(part_id_reduction="mean"), "dsa")(out, y)
    assert terms_mean["id_fL"] == pytest.approx(terms["id_fL"] / 8, rel=1e-5)
    assert total_mean.item() == pytest.approx(total.item() - 0.5 * 7 / 8 * terms["id_fL"], rel=1e-5)


@pytest.mark.parametrize("variant,names", [
    ("baseline", ["id_fG", "tri_fG"]),
    ("two-branch", ["id_fG", "id_fL", "tri_fG", "tri_fL"]),
    ("dsa-global", ["id_fG", "tri_zG", "id_zG"]),
    ("dsa-local", ["id_fL", "tri_zL", "id_zL"]),
])
def test_dsa_loss_variants(variant, names):
    _, out, y = _out(variant)
    total, terms = DSALoss(RECIPE, variant)(out, y)
    assert list(terms) == names
    w = {"id_fG": 0.5, "id_fL": 0.5, "id_zG": 1.0, "id_zL": 1.0, "tri_zG": 1.5, "tri_zL": 1.5,
         "tri_fG": 1.5, "tri_fL": 1.5}
    if variant in ("baseline", "two-branch"):    # no fused features: ID on f carries 0.5 + 1.0
        w.update(id_fG=1.5, id_fL=1.5)
    assert total.item() == pytest.approx(sum(w[k] * v for k, v in terms.items()), rel=1e-5)


def test_dsa_loss_needs_fused_features():
    net, _, y = _out("dsa")
    cfg = get_preset("tiny").model
    out = net(torch.randn(8, 3, cfg.height, cfg.width))       # no DSAP: no z
    with pytest.raises(ValueError, match="DSAP"):
        DSALoss(RECIPE, "dsa")(out, y)


def test_training_on_one_batch_lowers_the_loss():
    net, _, y = _out("dsa", seed=3)
    cfg = get_preset("tiny").model
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, cfg.height, cfg.width, generator=g)
    dsap = torch.randn(8, 24, 3, cfg.dsap_size, cfg.dsap_size, generator=g)
    loss_fn = DSALoss(RECIPE, "dsa")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        total, _ = loss_fn(net(images, dsap), y)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]
