"""The gain benchmark's verdict line (bench/bench_reid_gain.py): what `make demo` prints as its conclusion."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
gain = pytest.importorskip("bench_reid_gain")


def runs(maps: dict[str, list[float]]) -> dict[str, list[dict]]:
    return {name: [{"seed": s, "train_s": 1.0, "metrics": {"mf": {"rank1": m, "mAP": m}}} for s, m in enumerate(ms)]
            for name, ms in maps.items()}


HIST = {"rank1": 0.05, "mAP": 0.04}


def verdicts(maps):
    return gain.summarise(runs(maps), "two-branch", "test", HIST, "bench16")[2]


def test_a_clear_gain_beats_and_its_interval_is_above_zero():
    (line,) = verdicts({"two-branch": [0.30, 0.32, 0.28, 0.31], "dsa": [0.36, 0.37, 0.35, 0.36]})
    assert line.startswith("dsa: MF features BEAT two-branch") and "contains 0" not in line


def test_a_mean_above_the_spread_with_an_interval_across_zero_says_so():
    (line,) = verdicts({"two-branch": [0.30, 0.32], "dsa": [0.40, 0.31]})
    assert "BEAT" in line and "the interval still contains 0: not shown at this number of seeds" in line


def test_no_gain_does_not_beat():
    (line,) = verdicts({"two-branch": [0.30, 0.32, 0.28], "dsa": [0.29, 0.33, 0.27]})
    assert "do NOT beat" in line and "contains 0" not in line


def test_one_seed_has_no_interval_and_its_results_are_strict_json():
    variants, diffs, (line,) = gain.summarise(runs({"two-branch": [0.30], "dsa": [0.36]}), "two-branch", "val",
                                              HIST, "bench16")
    assert "do NOT beat" in line and "1 seed: no interval" in line
    assert diffs["dsa"]["mAP"]["ci95"] is None and diffs["dsa"]["mAP"]["mean"] == pytest.approx(0.06)
    json.dumps(diffs, allow_nan=False)  # NaN would make the results file unreadable to strict JSON parsers


def test_seeds_are_paired_by_value_not_position():
    rs = runs({"two-branch": [0.30, 0.20, 0.25], "dsa": [0.31, 0.22]})
    rs["dsa"] = [dict(r, seed=s) for r, s in zip(rs["dsa"], (2, 0))]  # dsa ran seeds 2 and 0 only
    _, diffs, _ = gain.summarise(rs, "two-branch", "test", HIST, "bench16")
    assert diffs["dsa"]["seeds"] == [0, 2]
    assert diffs["dsa"]["mAP"]["per_seed"] == pytest.approx([0.22 - 0.30, 0.31 - 0.25])
