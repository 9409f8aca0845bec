"""The evaluate stage end to end on a tiny network: features file, metrics, CLI, pictures, API."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evaluate.__main__ import cli
from conftest import write_tiny_run
from data.runtime import DeviceError
from evaluate.api import ReidModel, rank
from evaluate.features import EvaluationError, Features, load_features, save_features
from evaluate.metrics import pairwise_distance
from tests.oracles import evaluate_reference


def _tiny_checkpoint(folder: Path, variant: str = "dsa") -> Path:
    return write_tiny_run(folder, variant)


@pytest.fixture
def run_dir(tmp_path):
    _tiny_checkpoint(tmp_path / "runs" / "r1")
    return tmp_path / "runs"


def test_run_writes_features_metrics_and_pictures(run_dir, market_tree):
    res = CliRunner().invoke(cli, ["run", "--run", "r1", "--runs-dir", str(run_dir), "--dataset", "market1501",
                                   "--root", str(market_tree.parent), "--queries", "2", "--flip", "--json"])
    assert res.exit_code == 0, res.output
    out = run_dir / "r1" / "eval" / "market1501" / "mf-flip"  # settings other than the defaults: their own folder
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"] == "market" and m["feature_set"] == "mf" and m["flip"] is True and m["setting"] == "mf-flip"
    assert m["num_queries"] == 2 and m["num_evaluated"] + m["num_skipped"] == 2 and m["step"] == 7
    assert len(m["checkpoint_sha256"]) == 64 and (out / "cmc.png").stat().st_size > 0
    assert len(list((out / "ranked").glob("*.png"))) == 2
    feats = load_features(out / "features.h5")
    assert feats.query.shape == (2, 96) and feats.gallery.shape[0] == 5  # junk pid -1 dropped
    assert feats.attrs["feature_set"] == "mf" and feats.attrs["dataset"] == "market1501"
    # offline evaluation of the file gives the same figures as the run
    res = CliRunner().invoke(cli, ["features", str(out / "features.h5"), "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.output)
    assert again["mAP"] == pytest.approx(m["mAP"]) and again["rank1"] == m["rank1"]
    ref = evaluate_reference(pairwise_distance(feats.query, feats.gallery), feats.q_pids, feats.g_pids,
                             feats.q_camids, feats.g_camids)
    assert m["mAP"] == pytest.approx(ref.mAP)
    import shutil

    shutil.copytree(run_dir / "r1" / "eval", run_dir / "r2" / "eval")
    res = CliRunner().invoke(cli, ["compare", "r1", "r2", "--dataset", "market1501", "--runs-dir", str(run_dir)])
    assert res.exit_code == 2 and "with the settings" not in res.output and "No metrics for run 'r1'" in res.output
    res = CliRunner().invoke(cli, ["compare", "r1", "r2", "--dataset", "market1501", "--runs-dir", str(run_dir),
                                   "--setting", "mf-flip"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].startswith("r1") and lines[2].startswith("r2") and f"{100 * m['mAP']:.2f}" in lines[2]
    # the default evaluation goes to the dataset's folder and leaves the flip one as it was
    res = CliRunner().invoke(cli, ["run", "--run", "r1", "--runs-dir", str(run_dir), "--dataset", "market1501",
                                   "--root", str(market_tree.parent), "--queries", "0", "--json"])
    assert res.exit_code == 0, res.output
    plain = json.loads((out.parent / "metrics.json").read_text())
    assert plain["flip"] is False and plain["setting"] == "default"
    assert json.loads((out / "metrics.json").read_text()) == m


def test_features_match_api_and_global_local_split(run_dir, market_tree):
    model = ReidModel.from_run(run_dir / "r1")
    keys = ["query/0007_c1s1_000010_00.jpg", "query/0009_c1s1_000011_00.jpg"]
    f = model.extract(keys, root=market_tree)
    assert f.shape == (2, model.dim) and f.dtype == np.float32
    g = ReidModel.from_run(run_dir / "r1" / "checkpoint.pt", feature_set="global").extract(keys, root=market_tree)
    loc = ReidModel.from_run("r1", runs_dir=run_dir, feature_set="local").extract(keys, root=market_tree)
    np.testing.assert_allclose(np.concatenate([g, loc], 1), f, atol=1e-5)
    from data.io import read_image

    arrays = [read_image(market_tree / k) for k in keys]
    np.testing.assert_allclose(model.extract(arrays), f, atol=1e-6)


def test_rank_orders_nearest_first_and_breaks_ties_by_index():
    q = np.array([[1.0, 0.0]])
    g = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    idx, dist = rank(q, g, top_k=3)
    assert idx.tolist() == [[1, 2, 0]]  # 1 and 2 tie at cosine distance 0: lower index first
    assert np.all(np.diff(dist[0]) >= 0)


def _features(n_q=3, n_g=4, dim=5, g_dim=None):
    rng = np.random.default_rng(0)
    return Features(rng.normal(size=(n_q, dim)), rng.normal(size=(n_g, g_dim or dim)),
                    np.array([1, 2, 3][:n_q]), np.array([1, 2, 3, 4][:n_g]), np.zeros(n_q, int),
                    np.ones(n_g, int), [f"q{i}" for i in range(n_q)], [f"g{i}" for i in range(n_g)],
                    attrs={"protocol": "market", "feature_set": "mf"})


def _invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_cli_bad_inputs_are_sentences(tmp_path, run_dir, market_tree):
    good = tmp_path / "good.h5"
    save_features(good, _features())
    assert _invoke("features", good).exit_code == 0
    # a features file without gallery
    bad = tmp_path / "nogallery.h5"
    with h5py.File(bad, "w") as f:
        f.create_group("query").create_dataset("features", data=np.ones((2, 3)))
    res = _invoke("features", bad)
    assert res.exit_code == 2 and "no gallery features" in res.output and "Traceback" not in res.output
    # mismatched feature sizes
    mism = tmp_path / "mismatch.h5"
    save_features(mism, _features(g_dim=7))
    res = _invoke("features", mism)
    assert res.exit_code == 2 and "do not match" in res.output
    # a run without checkpoint
    res = _invoke("run", "--run", "nothing", "--runs-dir", run_dir, "--dataset", "market1501", "--root",
                  market_tree.parent)
    assert res.exit_code == 2 and "no checkpoint" in res.output.lower()
    res = _invoke("export", "--run", "nothing", "--runs-dir", run_dir)
    assert res.exit_code == 2 and "no checkpoint" in res.output.lower()
    # an unknown dataset
    res = _invoke("run", "--run", "r1", "--runs-dir", run_dir, "--dataset", "nope", "--root", market_tree.parent)
    assert res.exit_code == 2 and "Unknown dataset" in res.output
    # compare without metrics
    res = _invoke("compare", "r1", "--dataset", "market1501", "--runs-dir", run_dir)
    assert res.exit_code == 2 and "No metrics" in res.output
    # unknown query key for the pictures
    res = _invoke("run", "--run", "r1", "--runs-dir", run_dir, "--dataset", "market1501", "--root",
                  market_tree.parent, "--query-keys", "query/missing.jpg")
    assert res.exit_code == 2 and "not in the query set" in res.output


def test_features_file_is_written_atomically(tmp_path):
    path = tmp_path / "f.h5"
    save_features(path, _features())
    assert [p.name for p in tmp_path.iterdir()] == ["f.h5"]
    with pytest.raises(EvaluationError, match="No features file"):
        load_features(tmp_path / "missing.h5")


def test_ranked_list_marks_junk(tmp_path, make_images):
    from data.io import read_image
    from evaluate.plots import ranked_list

    paths = make_images(tmp_path, ["q.jpg", "a.jpg", "b.jpg", "c.jpg"])
    out = tmp_path / "r.png"
    ranked_list(paths[0], paths[1:], ["correct", "wrong", "junk"], ["1", "2", "3"], out)
    img = read_image(out)
    step = 64 + 8
    x0 = step + 8  # first gallery tile after the query tile and the gap
    assert tuple(img[1, x0 + 1]) == (40, 170, 40) and tuple(img[1, x0 + step + 1]) == (210, 40, 40)
    assert tuple(img[1, x0 + 2 * step + 1]) == (150, 150, 150)


def test_bad_device_and_unreadable_image_in_a_worker_are_sentences(run_dir, market_tree):
    res = _invoke("run", "--run", "r1", "--runs-dir", run_dir, "--dataset", "market1501", "--root",
                  market_tree.parent, "--device", "gpu0")
    assert res.exit_code == 2 and "unknown device 'gpu0'" in res.output and "Traceback" not in res.output
    if not torch.cuda.is_available():
        res = _invoke("run", "--run", "r1", "--runs-dir", run_dir, "--dataset", "market1501", "--root",
                      market_tree.parent, "--device", "cuda")
        assert res.exit_code == 2 and "no CUDA device" in res.output
        with pytest.raises(DeviceError, match="no CUDA device"):
            ReidModel.from_run(run_dir / "r1", device="cuda")
    (market_tree / "bounding_box_test" / "0007_c3s1_000013_00.jpg").write_bytes(b"")
    for workers in ("0", "1"):  # in a DataLoader worker the error arrives wrapped by torch
        res = _invoke("run", "--run", "r1", "--runs-dir", run_dir, "--dataset", "market1501", "--root",
                      market_tree.parent, "--workers", workers, "--queries", "0")
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert res.output.strip().splitlines()[-1].startswith("error: cannot read image ") and \
            res.output.strip().endswith("0007_c3s1_000013_00.jpg: file is empty (0 bytes)"), res.output


@pytest.mark.parametrize("protocol, junk", [("market", True), ("cuhk03-new", True), ("cuhk01-single-shot", False)])
def test_ranked_lists_grey_same_camera_matches_under_market_style_protocols(tmp_path, monkeypatch, protocol, junk):
    import evaluate.report as report

    seen = []
    monkeypatch.setattr(report, "ranked_list", lambda q, g, status, *a, **k: seen.append(status))
    feats = _features()
    feats.attrs["protocol"] = protocol
    feats.g_camids[:] = 0  # gallery item 0 has query 0's pid and camera
    dist = np.array([[0.0, 1.0, 2.0, 3.0]] * 3, np.float32)
    report.draw_ranked_lists(feats, dist, tmp_path, tmp_path / "ranked", [0], top_k=2)
    assert seen == [["junk" if junk else "correct", "wrong"]]


def test_compare_overlays_the_cmc_curves_with_map_in_the_legend(tmp_path, monkeypatch):
    import json as _json

    import cv2 as _cv2
    from click.testing import CliRunner as _Runner

    import evaluate.report as report
    from evaluate.__main__ import cli as _cli

    for name, r1, m in (("a", 0.5, 0.4), ("b", 0.75, 0.6)):
        d = tmp_path / "runs" / name / "eval" / "toy"
        d.mkdir(parents=True)
        curve = [r1 + (1 - r1) * k / 19 for k in range(20)]
        (d / "metrics.json").write_text(_json.dumps({"rank1": r1, "rank5": curve[4], "rank10": curve[9],
                                                     "rank20": curve[19], "mAP": m, "mINP": m / 2, "cmc": curve,
                                                     "dataset": "toy", "protocol": "market", "feature_set": "mf"}))
    seen = {}
    real = report.plot_cmc

    def spy(curves, path, title="CMC"):
        seen.update(curves)
        real(curves, path, title=title)

    monkeypatch.setattr(report, "plot_cmc", spy)
    res = _Runner().invoke(_cli, ["compare", "a", "b", "--dataset", "toy", "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    png = tmp_path / "runs" / "compare" / "toy" / "a_vs_b.png"
    assert f"CMC curves: {png}" in res.output and "50.00" in res.output and "75.00" in res.output
    assert list(seen) == ["a (mf): mAP 40.0%, R1 50.0%", "b (mf): mAP 60.0%, R1 75.0%"]
    assert seen["b (mf): mAP 60.0%, R1 75.0%"][0] == 0.75 and len(seen["a (mf): mAP 40.0%, R1 50.0%"]) == 20
    assert _cv2.imread(str(png)) is not None


def test_feature_set_is_one_name_with_the_old_one_hidden(run_dir, market_tree):
    common = ["run", "--run", "r1", "--runs-dir", str(run_dir), "--dataset", "market1501",
              "--root", str(market_tree.parent), "--queries", "0", "--json", "--device", "cpu"]
    metrics = run_dir / "r1" / "eval" / "market1501" / "global" / "metrics.json"
    seen = []
    for option in ("--feature-set", "--features"):
        res = CliRunner().invoke(cli, [*common, option, "global"])
        assert res.exit_code == 0, res.output
        m = json.loads(metrics.read_text())
        seen.append((m["feature_set"], m["feature_dim"]))
    assert seen == [("global", 32), ("global", 32)]
    helptext = CliRunner().invoke(cli, ["run", "-h"]).output
    assert "--feature-set" in helptext and "--features " not in helptext


def test_compare_plot_stays_inside_the_runs_folder_whatever_the_dataset_spec(run_dir, tmp_path):
    """A dataset spec with options (a regex, a folder path) never becomes a path: the plot goes to
    RUNS_DIR/compare/<name>+<digest>/."""
    import json as _json

    from data.runs import RunFolder, dataset_dirname
    from evaluate.report import compare_runs

    spec = "folder:pattern=(?P<pid>\\d+)/../../../x,train_dir=a/b"
    for r in ("r1", "r2"):
        d = RunFolder(run_dir / r).eval_dir(spec)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(_json.dumps({"rank1": 0.5, "rank5": 0.6, "rank10": 0.7, "mAP": 0.4,
                                                     "mINP": 0.1, "cmc": [0.5] * 20, "feature_set": "mf"}))
    _, plot = compare_runs(["r1", "r2"], spec, runs_dir=run_dir)
    assert plot.resolve().parent == (run_dir / "compare" / dataset_dirname(spec)).resolve() and plot.is_file()


def test_features_cli_block_options_give_the_same_figures(tmp_path):
    path = tmp_path / "f.h5"
    save_features(path, _features())
    outs = []
    for extra in ([], ["--block-size", "1"], ["--max-memory", "64M"], ["--block-size", "2", "--max-memory", "1G"]):
        res = CliRunner().invoke(cli, ["features", str(path), "--json", *extra])
        assert res.exit_code == 0, res.output
        outs.append({k: v for k, v in json.loads(res.output).items() if k != "created"})
    assert all(o == outs[0] for o in outs[1:]) and outs[0]["num_evaluated"] > 0
    res = CliRunner().invoke(cli, ["features", str(path), "--max-memory", "lots"])
    assert res.exit_code == 2 and "is not a memory size" in res.output
