"""bench/bench_reid.py --combine: result files merged into the reid_gain schema, paired by seed."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench_reid = pytest.importorskip("bench_reid")

BUDGET = {"dataset": "market1501", "estimator": "pose", "preset": "mobilenet-cpu", "pretrained": "imagenet",
          "epochs": 12}


def results(path: Path, name: str, rows: list[tuple[str, int, float]], **over) -> Path:
    doc = {**BUDGET, "benchmark": "reid", "name": name, "train_args": "", "command": f"bench_reid.py --name {name}",
           "uptime_before": "load 1", "uptime_after": "load 2", "machine": "test",
           "rows": [{"variant": v, "seed": s, "run": f"{name}-{v}-s{s}", "rank1": m + 0.1, "mAP": m,
                     "train_s": 1.0, "eval_s": 1.0} for v, s, m in rows], **over}
    f = path / f"{name}.json"
    f.write_text(json.dumps(doc))
    return f


def test_combine_pairs_each_configuration_with_the_baseline_by_seed(tmp_path):
    base = results(tmp_path, "base", [("two-branch", 0, 0.30), ("two-branch", 1, 0.20), ("two-branch", 2, 0.25)])
    # seeds out of order, one seed the baseline lacks: pairing must follow the seed, not the position
    switch = results(tmp_path, "switch", [("dsa-drop-d", 2, 0.27), ("dsa-drop-d", 0, 0.31), ("dsa-drop-d", 9, 0.9)])
    dsa = results(tmp_path, "dsa", [("dsa", 1, 0.18), ("dsa", 0, 0.33)])
    entry = bench_reid.combine([base, switch, dsa], "gain", "cuhk", tmp_path)

    drop = entry["paired_diffs"]["dsa-drop-d"]
    assert drop["seeds"] == [0, 2]
    assert drop["mAP"]["per_seed"] == pytest.approx([0.01, 0.02])
    assert entry["paired_diff"]["seeds"] == [0, 1]
    assert entry["paired_diff"]["mAP"]["per_seed"] == pytest.approx([0.03, -0.02])
    assert entry["paired_diff"]["mAP"]["ci95"][0] < 0 < entry["paired_diff"]["mAP"]["ci95"][1]
    assert entry["variants"]["dsa-drop-d"]["seeds"] == [0, 2, 9]
    assert entry["variants"]["two-branch"]["mf_mAP"] == [0.30, 0.20, 0.25]
    assert entry["seeds"] == [0, 1, 2, 9] and entry["epochs"] == 12
    written = json.loads((tmp_path / "gain.json").read_text())
    assert written["cuhk"]["paired_diffs"] == json.loads(json.dumps(entry["paired_diffs"]))


def test_combine_refuses_runs_of_another_budget(tmp_path):
    base = results(tmp_path, "base", [("two-branch", 0, 0.30)])
    other = results(tmp_path, "short", [("dsa", 0, 0.31)], epochs=3)
    with pytest.raises(SystemExit, match="differs .* in epochs"):
        bench_reid.combine([base, other], "gain", "cuhk", tmp_path)
    assert not (tmp_path / "gain.json").exists()


def test_a_seed_given_twice_for_one_configuration_is_refused(tmp_path):
    a = results(tmp_path, "a", [("two-branch", 0, 0.30)])
    b = results(tmp_path, "b", [("two-branch", 0, 0.31)])
    with pytest.raises(ValueError, match="seed"):
        bench_reid.combine([a, b], "gain", "cuhk", tmp_path)


def _refuse(name: str):
    raise ValueError(f"{name} is not JSON")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "bench" / "results").glob("*.json")),
                         ids=lambda p: p.name)
def test_committed_results_are_strict_json(path):
    json.loads(path.read_text(), parse_constant=_refuse)  # NaN / Infinity: unreadable by strict parsers (jq, JS)


def _run(tmp_path: Path, name: str, variant: str, overrides: dict, losses: list[float]):
    from data.runs import RunFolder

    run = RunFolder(tmp_path / name)
    run.path.mkdir()
    run.write_config({"variant": variant, "overrides": overrides})
    for epoch, loss in enumerate(losses):
        run.append_log({"step": 10 * epoch + 5, "epoch": epoch, "loss": 99.0, "id_fG": 99.0})  # a step record
        run.append_log({"step": 10 * epoch + 10, "epoch": epoch, "event": "epoch_end", "loss": loss,
                        "id_fG": loss / 2, "distill_G": 0.1, "images_per_s": 50.0, "memory_mb": 900.0})
    return run


def test_training_curves_take_the_epoch_means_and_name_each_configuration(tmp_path, monkeypatch, capsys):
    curves = pytest.importorskip("plot_train_curves")
    a = _run(tmp_path, "a", "two-branch", {}, [6.0, 5.0, 4.5])
    b = _run(tmp_path, "b", "dsa", {"recipe.drop_d": 0.5}, [7.0, 5.5])
    assert curves.epoch_means(a) == {"loss": [(1, 6.0), (2, 5.0), (3, 4.5)], "id_fG": [(1, 3.0), (2, 2.5), (3, 2.25)],
                                     "distill_G": [(1, 0.1), (2, 0.1), (3, 0.1)]}  # a term no list names
    assert curves.configuration(b) == "dsa (recipe.drop_d=0.5)"
    out = tmp_path / "curves.png"
    monkeypatch.setattr(sys, "argv", ["plot_train_curves.py", str(a.path), str(b.path), "--out", str(out)])
    curves.main()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 runs, 2 configurations" in capsys.readouterr().out


def test_training_curves_of_runs_without_an_epoch_end_say_so(tmp_path, monkeypatch):
    curves = pytest.importorskip("plot_train_curves")
    empty = _run(tmp_path, "empty", "dsa", {}, [])
    monkeypatch.setattr(sys, "argv", ["plot_train_curves.py", str(empty.path), "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="no.*epoch_end|none of these runs"):
        curves.main()


@pytest.mark.parametrize("settings, reused", [
    ({"feature_set": "mf", "flip": False, "rerank": False}, True),
    ({"feature_set": "fused", "flip": False, "rerank": False}, False),
    ({"feature_set": "mf", "flip": True, "rerank": False}, False),
    ({"feature_set": "mf", "flip": False, "rerank": True}, False),
])
def test_an_earlier_evaluation_is_reused_only_with_the_benchmarks_settings(tmp_path, settings, reused):
    import os

    ckpt, metrics = tmp_path / "checkpoint.pt", tmp_path / "metrics.json"
    ckpt.write_bytes(b"x")
    metrics.write_text(json.dumps({"rank1": 0.5, "mAP": 0.4, **settings}))
    os.utime(ckpt, (1_000, 1_000))
    earlier = bench_reid.earlier_metrics(metrics, ckpt)
    assert (earlier is not None) is reused
    if reused:
        assert earlier["mAP"] == 0.4
    os.utime(ckpt, None)  # the checkpoint is now newer than the metrics: evaluate afresh
    os.utime(metrics, (1_000, 1_000))
    assert bench_reid.earlier_metrics(metrics, ckpt) is None
