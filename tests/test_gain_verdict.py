"""The gain benchmark's verdict line (bench/bench_reid_gain.py): what `make demo` prints as its conclusion."""
from __future__ import annotations

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
