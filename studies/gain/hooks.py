"""The study's trainer hooks (``train.hooks.HookBase``): gradient diagnostics and evaluation snapshots.

Both run inside the product's training loop; they add records, they change nothing the step does.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from train.hooks import HookBase


class GradDiagnostics(HookBase):
    """Every ``every`` steps, before backward: the norm of the gradient that each weighted loss term sends
    into f_G and f_L (batch-summed Frobenius norm), and the mean per-image norms of f and d."""

    def __init__(self, every: int = 10) -> None:
        self.every = max(1, every)
        self.records: list[dict[str, Any]] = []

    def after_loss(self) -> None:
        t = self.trainer
        if t.step % self.every:
            return
        out = t.outputs
        names = [k for k in ("f_G", "f_L") if out.get(k) is not None]
        rec: dict[str, Any] = {"step": t.step, "epoch": t.epoch}
        for name, w, term in t.loss_terms:
            grads = torch.autograd.grad(w * term, [out[k] for k in names], retain_graph=True, allow_unused=True)
            for key, g in zip(names, grads):
                rec[f"grad_{key}/{name}"] = 0.0 if g is None else float(g.norm())
        for key in ("f_G", "f_L", "d_G", "d_L"):
            if key in out:
                rec[f"norm_{key}"] = float(out[key].detach().flatten(1).norm(dim=1).mean())
        self.records.append(rec)


@torch.no_grad()
def stream_features(net: torch.nn.Module, root, items, store, size: tuple[int, int],
                    batch: int = 128) -> dict[str, np.ndarray]:
    """mf = f_G ⊕ f_L (kept at inference), d = d_G ⊕ d_L (DSAG-only), z = z_G ⊕ z_L (fused) of ``items``,
    with the evaluation transform (what ``evaluate run`` extracts for each feature set)."""
    from data.io import read_image
    from data.transforms import build_test_transform
    from dsa.dsap import normalise_dsap
    from dsa.transforms import normalise

    was = net.training
    net.eval()
    tf = build_test_transform(*size)
    out: dict[str, list[np.ndarray]] = {"mf": [], "d": [], "z": []}
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        x = normalise(torch.stack([tf(read_image(root / it.key)) for it in chunk]))
        d = (normalise_dsap(torch.stack([torch.from_numpy(store.get(it.key)) for it in chunk]))
             if store is not None and getattr(net, "dsag", None) is not None else None)
        o = net(x, d)
        for key, names in (("mf", ("f_G", "f_L")), ("d", ("d_G", "d_L")), ("z", ("z_G", "z_L"))):
            got = [o[n].flatten(1) for n in names if n in o]
            if got:
                out[key].append(torch.cat(got, 1).numpy())
    net.train(was)
    return {k: np.concatenate(v) for k, v in out.items() if v}


def snapshot_evaluator(dataset, store, size: tuple[int, int]):
    """An ``EvalHook`` function: Rank-1 and mAP of mf, d and z on ``dataset``'s query and gallery."""
    from evaluate.metrics import evaluate_features

    def evaluate(trainer) -> dict[str, float]:
        net = trainer.bare_model
        fq = stream_features(net, dataset.root, dataset.query, store, size)
        fg = stream_features(net, dataset.root, dataset.gallery, store, size)
        res = {}
        for key in fq:
            m = evaluate_features(fq[key], fg[key], [i.pid for i in dataset.query], [i.pid for i in dataset.gallery],
                                  [i.camid for i in dataset.query], [i.camid for i in dataset.gallery], metric="cosine")
            res[f"{key}_rank1"], res[f"{key}_mAP"] = m.cmc[1], m.mAP
        return res

    return evaluate
