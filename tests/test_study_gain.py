"""The gain study (studies/gain): paired statistics, the verdict lines `make demo` prints, and one tiny study
end to end through the product's trainer and evaluator (run folders that `evaluate` reads afterwards)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from studies.gain.run import Study, run_study, summarise, table
from studies.gain.stats import paired, verdict


def runs(maps: dict[str, list[float]]) -> dict[str, list[dict]]:
    return {name: [{"seed": s, "run": f"{name}-s{s}", "train_s": 1.0, "metrics": {"mf": {"rank1": m, "mAP": m}}}
                   for s, m in enumerate(ms)] for name, ms in maps.items()}


def verdicts(maps):
    return summarise(runs(maps), "two-branch")[2]


def test_a_clear_gain_is_shown_and_its_interval_is_above_zero():
    (line,) = verdicts({"two-branch": [0.30, 0.32, 0.28, 0.31], "dsa": [0.36, 0.37, 0.35, 0.36]})
    assert line.startswith("dsa: its MF features BEAT two-branch: ΔmAP +5.7 [") and "the interval is above 0" in line


def test_a_large_mean_on_two_seeds_is_not_shown_and_says_so():
    (line,) = verdicts({"two-branch": [0.30, 0.32], "dsa": [0.40, 0.31]})
    assert line.startswith("dsa: not shown at 2 seeds: ΔmAP +4.5 [") and line.endswith("contains 0")
    assert "BEAT" not in line


def test_a_clear_loss_is_shown_as_worse():
    (line,) = verdicts({"two-branch": [0.30, 0.32, 0.28], "dsa": [0.25, 0.26, 0.24]})
    assert "are WORSE than two-branch" in line and "below 0" in line


def test_one_seed_has_no_interval_and_its_results_are_strict_json():
    variants, diffs, (line,) = summarise(runs({"two-branch": [0.30], "dsa": [0.36]}), "two-branch")
    assert line == "dsa: ΔmAP +6.0 vs two-branch on 1 seed: no interval, nothing shown"
    assert diffs["dsa"]["mAP"]["ci95"] is None and diffs["dsa"]["mAP"]["mean"] == pytest.approx(0.06)
    json.dumps(diffs, allow_nan=False)  # NaN would make the results file unreadable to strict JSON parsers


def test_seeds_are_paired_by_value_not_position():
    rs = runs({"two-branch": [0.30, 0.20, 0.25], "dsa": [0.31, 0.22]})
    rs["dsa"] = [dict(r, seed=r["seed"] + 1) for r in rs["dsa"]]  # dsa has seeds 1 and 2
    _, diffs, _ = summarise(rs, "two-branch")
    assert diffs["dsa"]["seeds"] == [1, 2]
    assert diffs["dsa"]["mAP"]["per_seed"] == pytest.approx([0.31 - 0.20, 0.22 - 0.25])


def test_paired_interval_by_hand():
    d = paired([3.0, 5.0, 4.0], [1.0, 2.0, 1.0])  # differences 2, 3, 3: mean 8/3, sd 0.577, t(0.975, 2) = 4.303
    assert d["mean"] == pytest.approx(8 / 3) and d["std"] == pytest.approx(0.57735, rel=1e-4)
    assert d["ci95"] == pytest.approx([8 / 3 - 4.3027 * 0.57735 / 3 ** 0.5, 8 / 3 + 4.3027 * 0.57735 / 3 ** 0.5], rel=1e-4)
    assert verdict("x", "y", d).startswith("x: its MF features BEAT y: ΔmAP +266.7 [")  # lower end 1.23 > 0


def test_a_tiny_study_end_to_end_leaves_run_folders_that_evaluate_reads(tmp_path, monkeypatch):
    """Two configurations, one seed, the tiny preset: each is a run folder of the product (checkpoint, config,
    log, evaluations with other settings kept apart); the two share their MF-Stream initialisation."""
    from data.runs import load_checkpoint
    from evaluate.report import evaluate_run
    root = _synthetic_with_store(tmp_path / "data")
    study = Study(configs=["two-branch", "dsa"], seeds=[3], root=str(root), tag="s16", preset="tiny",
                  overrides=["model.dsap_size=16", "recipe.batch_p=2"], epochs=1, split="test",
                  runs_dir=str(tmp_path / "runs"), prefix="t")
    entry = run_study(study, "test")
    assert set(entry["variants"]) == {"two-branch", "dsa"} and entry["seeds"] == [3]
    assert "z_rank1" in entry["variants"]["dsa"] and "z_rank1" not in entry["variants"]["two-branch"]
    assert entry["verdicts"] == [verdict("dsa", "two-branch", entry["paired_diffs"]["dsa"]["mAP"])]
    assert table(entry).splitlines()[0].startswith("test split of synthetic, MF features")
    runs = tmp_path / "runs"
    for name in ("t-two-branch-s3", "t-dsa-s3"):
        assert (runs / name / "checkpoint.pt").is_file() and (runs / name / "config.json").is_file()
        assert (runs / name / "eval" / "synthetic" / "metrics.json").is_file()
    assert (runs / "t-dsa-s3" / "eval" / "synthetic" / "fused" / "metrics.json").is_file()
    assert (runs / "t-dsa-s3" / "eval" / "synthetic" / "dsag" / "metrics.json").is_file()
    a, b = (load_checkpoint(runs / n / "checkpoint.pt") for n in ("t-two-branch-s3", "t-dsa-s3"))
    assert a.info.step == b.info.step > 0
    # evaluate reads the run as any other: the dataset defaults to the one it was trained on
    m = evaluate_run("t-dsa-s3", None, root, runs_dir=runs, num_pictures=0, progress=False)
    assert m["mAP"] == pytest.approx(entry["variants"]["dsa"]["mf_mAP"][0])
    # a second run of the same study reuses the finished runs and their evaluations
    again = run_study(study, "test")
    assert again["variants"]["dsa"]["mf_mAP"] == entry["variants"]["dsa"]["mf_mAP"]


def _synthetic_with_store(root: Path) -> Path:
    from data.datasets import build_dataset
    from data.synthetic import generate
    from tests.test_train import write_store

    generate(root / "synthetic", num_ids=8, num_cameras=2, seed=0, preview=False, workers=1, progress=False)
    keys = [it.key for it in build_dataset("synthetic", root).all_items()]
    write_store(root, keys, tag="s16", size=16)
    return root


def test_same_seed_same_mf_initialisation_in_every_variant():
    """What pairs the seeds: the MF-Stream and its classifiers come from the seed alone."""
    import torch

    from dsa.config import get_preset
    from train.run import build_model

    cfg = get_preset("tiny")
    nets = {v: build_model(cfg.replace(variant=v, seed=5), 4) for v in ("two-branch", "dsa", "dsa-concat")}
    ref = nets["two-branch"].state_dict()
    for v, net in nets.items():
        own = net.state_dict()
        for k, t in ref.items():
            if k.startswith(("mf.", "cls_fG.", "cls_fL.")):
                assert torch.equal(own[k], t), (v, k)
    other = build_model(cfg.replace(variant="dsa", seed=6), 4).state_dict()
    assert not torch.equal(other["mf.backbone.conv1.weight"], ref["mf.backbone.conv1.weight"])
