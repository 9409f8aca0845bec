"""Paired comparison over seeds.

A seed fixes the shared initialisation and the batch order of both configurations, so two
configurations are compared seed by seed: the mean of the per-seed differences and its Student-t 95%
interval.  One seed has no spread and no interval: ``std`` and ``ci95`` are then ``None`` (null in the
JSON, never NaN, which strict JSON readers refuse).
"""
from __future__ import annotations

import math
from typing import Sequence


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired difference a - b over seeds: per-seed values, mean, std and the 95% interval of the mean."""
    from scipy import stats

    if len(a) != len(b) or not a:
        raise ValueError(f"a paired difference needs two equally long, non-empty lists (got {len(a)} and {len(b)})")
    diff = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(diff)
    m = sum(diff) / n
    if n < 2:
        return {"per_seed": [round(d, 5) for d in diff], "mean": m, "std": None, "ci95": None, "n": n}
    s = math.sqrt(sum((d - m) ** 2 for d in diff) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1) * s / math.sqrt(n))
    return {"per_seed": [round(d, 5) for d in diff], "mean": m, "std": s, "ci95": [m - half, m + half], "n": n}


def paired_by_seed(variants: dict[str, dict], reference: str, keys: dict[str, str]) -> dict[str, dict]:
    """Every configuration against ``reference`` on the seeds both have, matched by value.

    ``variants[name]`` holds ``seeds`` and one list per metric, in the order of ``seeds``; ``keys`` maps
    each output name to its list (``{"rank1": "mf_rank1", "mAP": "mf_mAP"}``).  A configuration that
    shares no seed with the reference is left out."""
    ref = variants.get(reference)
    diffs: dict[str, dict] = {}
    if ref is None:
        return diffs
    for name, v in variants.items():
        common = [s for s in v["seeds"] if s in ref["seeds"]]
        if name == reference or not common:
            continue

        def pick(cfg: dict, key: str) -> list[float]:
            return [cfg[key][cfg["seeds"].index(s)] for s in common]

        diffs[name] = {"seeds": common, **{out: paired(pick(v, key), pick(ref, key)) for out, key in keys.items()}}
    return diffs


def interval_text(d: dict, digits: int = 1) -> str:
    """``[low, high]`` in points (×100), or a note when one seed gives no interval."""
    if d["ci95"] is None:
        return "(1 seed: no interval)"
    return f"[{100 * d['ci95'][0]:+.{digits}f}, {100 * d['ci95'][1]:+.{digits}f}]"


def verdict(name: str, reference: str, d: dict, metric: str = "mAP") -> str:
    """One line a newcomer reads right: whether ``name``'s paired difference to ``reference`` is shown
    (its 95% interval above or below 0) or not shown at this number of seeds."""
    n, mean = d["n"], 100 * d["mean"]
    if d["ci95"] is None:
        return f"{name}: Δ{metric} {mean:+.1f} vs {reference} on 1 seed: no interval, nothing shown"
    lo, hi = (100 * x for x in d["ci95"])
    where = f"Δ{metric} {mean:+.1f} [{lo:+.1f}, {hi:+.1f}] (95% interval, {n} paired seeds)"
    if lo > 0:
        return f"{name}: its MF features BEAT {reference}: {where}, the interval is above 0"
    if hi < 0:
        return f"{name}: its MF features are WORSE than {reference}: {where}, the interval is below 0"
    return f"{name}: not shown at {n} seeds: {where} contains 0"
