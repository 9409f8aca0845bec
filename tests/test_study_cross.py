"""The cross-dataset study (studies/cross): one tiny study end to end through the product's trainer and
evaluator, its paired differences, and a second invocation that reuses the finished runs and evaluations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from studies.cross.run import CrossStudy, format_table, run_study

A, B = "synthetic:ids=first", "synthetic:ids=second"


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    from click.testing import CliRunner

    from data.synthetic import generate
    from precompute.__main__ import cli

    generate(tmp_path / "synthetic", num_ids=16, num_cameras=2, seed=1, preview=False, workers=1, progress=False)
    result = CliRunner().invoke(cli, ["run", "--dataset", f"{A}+{B}", "--root", str(tmp_path), "--estimator", "synthetic"])
    assert result.exit_code == 0, result.output
    return tmp_path


def test_a_tiny_cross_study_end_to_end_and_again(root: Path) -> None:
    study = CrossStudy(other=A, target=B, seeds=[0], root=str(root), preset="tiny", epochs=1, finetune_epochs=1,
                       runs_dir=str(root / "runs"), prefix="x")
    entry = run_study(study, "test")
    table = entry["table"]
    assert list(table) == ["target", "target-steps", "union", "other", "finetune", "target-short"]
    assert table["union"]["dataset"] == f"{A}+{B}" and set(table["union"]["sets"]) == {A, B}
    assert set(table["other"]["sets"]) == {A, B} and set(table["target"]["sets"]) == {B}
    pairs = [(d["config"], d["reference"], d["test_set"]) for d in entry["paired_diffs"]]
    assert pairs == [("union", "target", B), ("union", "target-steps", B), ("union", "other", A),
                     ("other", "target", B), ("finetune", "target-short", B), ("finetune", "other", B)]
    union, target = (table[c]["sets"][B]["mAP"][0] for c in ("union", "target"))
    assert entry["paired_diffs"][0]["mAP"]["mean"] == pytest.approx(union - target)
    steps = {c: json.loads((root / "runs" / f"x-{c}-s0" / "log.jsonl").read_text().splitlines()[-1])["step"]
             for c in ("target", "target-steps", "union")}
    assert steps["target-steps"] > steps["target"] and abs(steps["target-steps"] - steps["union"]) <= 2, steps
    assert all(table[c]["steps"] == [steps[c]] for c in steps)
    assert all(t["train_s"][0] > 0 and all(t["load"][0]) for t in table.values())  # trained now: time and load
    finetune = json.loads((root / "runs" / "x-finetune-s0" / "config.json").read_text())
    assert finetune["init"] == "x-other-s0" and finetune["data"]["dataset"] == B
    assert "union - target on synthetic:ids=second: R1" in format_table(entry)
    json.dumps(entry, allow_nan=False)
    # a second invocation trains and evaluates nothing again: the same figures from the same run folders
    stamps = {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*/checkpoint.pt")}
    again = run_study(study, "test")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert all(v["sets"] == table[k]["sets"] for k, v in again["table"].items())
