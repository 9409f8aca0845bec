"""Estimators (precompute.estimators): registry, synthetic error simulation, IUV files, INDS person
pick, apply_net dump and DensePose output conversion (without detectron2)."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from data.io import read_image, read_iuv_png, write_iuv_png
from dsa.iuv import IUV
from precompute.estimators import ESTIMATORS, EstimatorError, build_estimator
from precompute.estimators.densepose import INSTALL_HINT, chart_output_to_iuv
from precompute.estimators.iuv import (
    dump_entry_to_maps, load_apply_net_dump, paste_box_results, persons_from_inds, pick_person,
    read_inds_png, select_person,
)
from precompute.estimators.synthetic import simulate_errors

#: real DensePose output shared beside the checkout (absent in a user's fresh clone: tests skip)
DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "densepose-demo"


def _person_iuv(h: int = 32, w: int = 16, seed: int = 0) -> IUV:
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), dtype=np.uint8)
    labels[4:28, 4:12] = rng.integers(1, 25, (24, 8))
    u = np.where(labels > 0, rng.integers(0, 256, (h, w)) / 255.0, 0).astype(np.float32)
    v = np.where(labels > 0, rng.integers(0, 256, (h, w)) / 255.0, 0).astype(np.float32)
    return IUV(I=labels, U=u, V=v)


def _write_image(path: Path, h: int = 32, w: int = 16) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(len(str(path))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return read_image(path)


# ------------------------------------------------------------------------------------- registry
def test_registry_names_and_errors(tmp_path):
    assert {"synthetic", "iuv", "densepose", "pose"} <= set(ESTIMATORS)
    with pytest.raises(ValueError, match="choose one of: densepose, iuv, pose, synthetic"):
        build_estimator("nope", tmp_path)
    with pytest.raises(EstimatorError, match="has no option colour; its options are: miss=0.0"):
        build_estimator("synthetic", tmp_path, colour=1)
    with pytest.raises(EstimatorError, match="must be a float"):
        build_estimator("synthetic", tmp_path, miss="often")
    with pytest.raises(EstimatorError, match="between 0 and 1"):
        build_estimator("synthetic", tmp_path, miss=1.5)
    est = build_estimator("synthetic", tmp_path, miss="0.25", seed="7")  # CLI strings are coerced
    assert est.settings()["miss"] == 0.25 and est.settings()["seed"] == 7


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None, reason="detectron2 is installed")
def test_densepose_without_detectron2_says_how_to_install(tmp_path):
    with pytest.raises(EstimatorError) as err:
        build_estimator("densepose", tmp_path)
    assert str(err.value) == INSTALL_HINT
    assert "--no-build-isolation" in INSTALL_HINT and "--no-deps <detectron2>/projects/DensePose" in INSTALL_HINT


# ------------------------------------------------------------------------------------ synthetic
def test_synthetic_reads_ground_truth(tmp_path):
    image = _write_image(tmp_path / "query" / "0001_c1s1_000001_00.jpg")
    truth = _person_iuv()
    write_iuv_png(tmp_path / "query" / "0001_c1s1_000001_00_IUV.png", truth)
    est = build_estimator("synthetic", tmp_path)
    (iuv,) = est.estimate([image], [tmp_path / "query" / "0001_c1s1_000001_00.jpg"], ["query/0001_c1s1_000001_00.jpg"])
    np.testing.assert_array_equal(iuv.I, truth.I)
    np.testing.assert_allclose(iuv.U, truth.U, atol=1e-6)
    np.testing.assert_allclose(iuv.V, truth.V, atol=1e-6)


def test_simulated_error_rates():
    truth = _person_iuv(h=64, w=32)
    body = truth.I > 0
    keys = [f"bounding_box_train/{i:04d}.jpg" for i in range(600)]
    missed = sum(simulate_errors(truth, k, miss=0.3) is None for k in keys)
    assert abs(missed / len(keys) - 0.3) < 0.06

    present = np.unique(truth.I[body])
    kept = [np.isin(present, np.unique(simulate_errors(truth, k, drop_part=0.25).I)).mean() for k in keys[:200]]
    assert abs(1 - np.mean(kept) - 0.25) < 0.05

    noisy = simulate_errors(truth, keys[0], label_noise=0.2)
    changed = (noisy.I != truth.I)[body]
    assert abs(changed.mean() - 0.2) < 0.03
    assert (noisy.I[body] > 0).all() and (noisy.I[~body] == 0).all()  # relabelled to another part, never background

    jittered = simulate_errors(truth, keys[0], uv_jitter=0.05)
    inner = body & (truth.U > 0.2) & (truth.U < 0.8)  # away from the clamp
    assert abs(np.std(jittered.U[inner] - truth.U[inner]) - 0.05) < 0.01
    assert jittered.U.min() >= 0 and jittered.U.max() <= 1 and (jittered.U[~body] == 0).all()


def test_simulation_is_deterministic_per_key_regardless_of_order(tmp_path):
    keys, paths, images = [], [], []
    for i in range(4):
        key = f"bounding_box_test/{i:04d}_c1s1_000001_00.jpg"
        images.append(_write_image(tmp_path / key))
        write_iuv_png(tmp_path / key.replace(".jpg", "_IUV.png"), _person_iuv(seed=i))
        keys.append(key)
        paths.append(tmp_path / key)
    opts = dict(drop_part=0.3, label_noise=0.2, uv_jitter=0.05, seed=1)
    forward = build_estimator("synthetic", tmp_path, **opts).estimate(images, paths, keys)
    backward = build_estimator("synthetic", tmp_path, **opts).estimate(images[::-1], paths[::-1], keys[::-1])[::-1]
    single = [build_estimator("synthetic", tmp_path, **opts).estimate([im], [p], [k])[0]
              for im, p, k in zip(images, paths, keys)]
    for a, b, c in zip(forward, backward, single):
        for name in "IUV":
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            np.testing.assert_array_equal(getattr(a, name), getattr(c, name))
    other_seed = build_estimator("synthetic", tmp_path, **{**opts, "seed": 2}).estimate(images, paths, keys)
    assert any((a.I != b.I).any() for a, b in zip(forward, other_seed))


# ------------------------------------------------------------------------------- INDS person pick
def test_pick_person_prefers_the_central_person():
    inds = np.zeros((40, 20), dtype=np.uint8)
    inds[:, 0:4] = 1        # a big neighbour at the left edge (160 pixels, none central)
    inds[10:30, 8:12] = 2   # the crop's own person in the centre (80 pixels)
    assert pick_person(inds) == 2
    assert pick_person(np.zeros((5, 5), np.uint8)) is None
    inds[:] = 0
    inds[10:20, 6:10], inds[20:36, 10:14] = 3, 4  # both central: more central pixels wins
    assert pick_person(inds) == 4


def test_select_person_clears_the_others():
    iuv = _person_iuv()
    inds = np.zeros(iuv.shape, dtype=np.uint8)
    inds[iuv.I > 0] = 1
    inds[4:28, 4:6] = 5  # a sliver of someone else at the left of the body
    kept = select_person(iuv, inds)
    assert (kept.I[inds == 5] == 0).all() and (kept.U[inds == 5] == 0).all()
    np.testing.assert_array_equal(kept.I[inds == 1], iuv.I[inds == 1])


def test_iuv_estimator_files_beside_and_under_iuv_dir(tmp_path):
    key = "query/0002_c2s1_000001_00.jpg"
    image = _write_image(tmp_path / "data" / key)
    iuv = _person_iuv()
    write_iuv_png(tmp_path / "data" / "query" / "0002_c2s1_000001_00_IUV.png", iuv)
    inds = np.where(iuv.I > 0, 1, 0).astype(np.uint8)
    inds[4:28, 4:6] = np.where(iuv.I[4:28, 4:6] > 0, 2, 0)  # a second person at the edge
    cv2.imwrite(str(tmp_path / "data" / "query" / "0002_c2s1_000001_00_INDS.png"), inds)

    (beside,) = build_estimator("iuv", tmp_path / "data").estimate([image], [tmp_path / "data" / key], [key])
    assert (beside.I[inds == 2] == 0).all()
    np.testing.assert_array_equal(beside.I[inds == 1], iuv.I[inds == 1])

    mirror = tmp_path / "dp_out"
    write_iuv_png(mirror / "query" / "0002_c2s1_000001_00_IUV.png", iuv)
    (under,) = build_estimator("iuv", tmp_path / "data", iuv_dir=str(mirror)).estimate(
        [image], [tmp_path / "data" / key], [key])
    np.testing.assert_array_equal(under.I, iuv.I)  # no INDS there: everything kept

    other = "query/0003_c1s1_000001_00.jpg"
    image2 = _write_image(tmp_path / "data" / other)
    with pytest.raises(EstimatorError, match="no DensePose output for query/0003"):
        build_estimator("iuv", tmp_path / "data").estimate([image2], [tmp_path / "data" / other], [other])
    assert build_estimator("iuv", tmp_path / "data", missing="not-found").estimate(
        [image2], [tmp_path / "data" / other], [other]) == [None]


def test_persons_from_inds_fabricated():
    h, w = 60, 80
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = np.zeros((h, w), np.uint8)
    inds = np.zeros((h, w), np.uint8)
    labels[10:50, 5:25], inds[10:50, 5:25] = 2, 3     # 800 pixels
    labels[20:40, 50:60], inds[20:40, 50:60] = 23, 7  # 200 pixels
    labels[0:2, 70:72], inds[0:2, 70:72] = 4, 9       # tiny: skipped
    iuv = IUV(I=labels, U=np.full((h, w), 0.5, np.float32), V=np.full((h, w), 0.5, np.float32))
    people = persons_from_inds(image, iuv, inds, margin=0.1, min_pixels=100)
    assert [p[2] for p in people] == [(3, 6, 27, 54), (49, 18, 61, 42)]
    crop, crop_iuv, (x0, y0, x1, y1) = people[0]
    np.testing.assert_array_equal(crop, image[y0:y1, x0:x1])
    assert crop_iuv.shape == crop.shape[:2] and set(np.unique(crop_iuv.I)) == {0, 2}


@pytest.mark.skipif(not DEMO.is_dir(), reason="shared densepose-demo data not available")
def test_densepose_demo_persons():
    image = read_image(DEMO / "demo_im.jpg")
    people = persons_from_inds(image, read_iuv_png(DEMO / "demo_im_IUV.png"), read_inds_png(DEMO / "demo_im_INDS.png"))
    assert len(people) >= 2
    for crop, iuv, box in people[:2]:
        assert crop.shape[:2] == iuv.shape and crop.shape[0] > 50
        assert iuv.body_fraction > 0.2 and len(np.unique(iuv.I)) > 5


# ---------------------------------------------------------------- apply_net dump / DensePose output
def test_paste_box_results_places_and_clips():
    labels = np.array([[1, 0], [2, 3]], dtype=np.uint8)
    uv = np.stack([np.full((2, 2), 0.25), np.full((2, 2), 1.5)]).astype(np.float32)
    iuv, inds = paste_box_results((4, 5), [[3.7, 2.2, 5.7, 4.2], [-1.0, -1.0, 1.0, 1.0]], [labels, labels], [uv, uv])
    assert iuv.I[2, 3] == 1 and iuv.I[3, 3] == 2 and iuv.I[3, 4] == 3 and iuv.I[2, 4] == 0
    assert iuv.I[0, 0] == 3  # the second box starts outside the image: only its bottom-right pixel lands
    assert iuv.U[3, 3] == 0.25 and iuv.V[3, 3] == 1.0  # V clamped to 1
    assert inds[3, 4] == 1 and inds[0, 0] == 2 and inds[2, 4] == 0


def _fake_dump_entry(file_name: str) -> dict:
    lab_a = torch.ones((10, 4), dtype=torch.int64) * 2
    lab_b = torch.ones((20, 8), dtype=torch.int64) * 23
    uv_a = torch.full((2, 10, 4), 0.5)
    uv_b = torch.full((2, 20, 8), 0.75)
    return {"file_name": file_name, "scores": torch.tensor([0.6, 0.9]),
            "pred_boxes_XYXY": torch.tensor([[0.0, 0.0, 4.0, 10.0], [4.0, 6.0, 12.0, 26.0]]),
            "pred_densepose": [SimpleNamespace(labels=lab_a, uv=uv_a), SimpleNamespace(labels=lab_b, uv=uv_b)]}


def test_dump_entry_conversion_and_estimator(tmp_path):
    iuv, inds = dump_entry_to_maps(_fake_dump_entry("x.jpg"), (32, 16))
    assert (iuv.I[0:10, 0:4] == 2).all() and (iuv.I[6:26, 4:12] == 23).all()
    assert inds[0, 0] == 1 and inds[10, 8] == 2  # score order: the 0.9 box is pasted last (index 2)

    key = "bounding_box_test/0005_c3s1_000001_00.jpg"
    image = _write_image(tmp_path / key)
    dump = tmp_path / "results.pkl"
    torch.save([_fake_dump_entry(str(tmp_path / key))], dump)
    est = build_estimator("iuv", tmp_path, dump=str(dump))
    (picked,) = est.estimate([image], [tmp_path / key], [key])
    # the person covering the centre of the 32×16 crop is the larger head box (index 2)
    assert set(np.unique(picked.I)) == {0, 23}


def test_dump_needing_detectron2_gives_a_sentence(tmp_path):
    dump = tmp_path / "dump.pkl"
    dump.write_bytes(b"cdensepose_missing_module.structures\nDensePoseChartResult\n.")
    with pytest.raises(EstimatorError, match="needs the module .* install detectron2"):
        load_apply_net_dump(dump)
    with pytest.raises(EstimatorError, match="does not exist"):
        load_apply_net_dump(tmp_path / "absent.pkl")
    for content in (b"garbage\n", b"", b"\x80\x04\x95"):  # text, empty, truncated pickle
        dump.write_bytes(content)
        with pytest.raises(EstimatorError, match="is not a readable apply_net dump"):
            build_estimator("iuv", tmp_path, dump=str(dump))


def test_chart_output_to_iuv_identity_size():
    # 4×4 box-local output, box of the same size at (2, 3): no resampling, so values are checkable by hand
    fine = torch.zeros(1, 25, 4, 4)
    fine[0, 5] = 1.0          # part 5 everywhere ...
    fine[0, 9, :, 2:] = 2.0   # ... part 9 in the right half
    coarse = torch.zeros(1, 2, 4, 4)
    coarse[0, 1] = 1.0
    coarse[0, 0, 0, :] = 2.0  # top row is background
    u = torch.zeros(1, 25, 4, 4)
    v = torch.zeros(1, 25, 4, 4)
    u[0, 5], v[0, 5] = 0.2, 0.4
    u[0, 9], v[0, 9] = 1.3, -0.1  # out of range: clamped
    iuv = chart_output_to_iuv(coarse, fine, u, v, (2.0, 3.0, 6.0, 7.0), (10, 8))
    assert iuv.shape == (10, 8)
    box = iuv.I[3:7, 2:6]
    np.testing.assert_array_equal(box, [[0, 0, 0, 0], [5, 5, 9, 9], [5, 5, 9, 9], [5, 5, 9, 9]])
    assert iuv.I.sum() == box.sum()  # nothing outside the box
    np.testing.assert_allclose([iuv.U[4, 2], iuv.V[4, 2]], [0.2, 0.4], rtol=1e-6)
    assert iuv.U[4, 4] == 1.0 and iuv.V[4, 4] == 0.0 and iuv.U[3, 2] == 0.0


def test_chart_output_to_iuv_resamples_to_the_box():
    fine = np.zeros((1, 25, 8, 8), np.float32)
    fine[0, 24] = 1.0
    coarse = np.zeros((1, 15, 8, 8), np.float32)
    coarse[0, 3] = 1.0  # any non-background coarse class counts as foreground
    u = np.full((1, 25, 8, 8), 0.6, np.float32)
    v = np.full((1, 25, 8, 8), 0.3, np.float32)
    iuv = chart_output_to_iuv(coarse, fine, u, v, (0, 0, 16, 32), (32, 16))
    assert (iuv.I == 24).all()
    np.testing.assert_allclose(iuv.U, 0.6, atol=1e-6)
    np.testing.assert_allclose(iuv.V, 0.3, atol=1e-6)


# --------------------------------------------------- densepose with the fake detectron2 (tests/fakes)
FAKES = Path(__file__).resolve().parent / "fakes"
REPO = Path(__file__).resolve().parents[1]


def _forget_detectron2() -> None:
    import sys

    for name in [m for m in sys.modules if m.split(".")[0] in ("detectron2", "densepose")]:
        del sys.modules[name]


@pytest.fixture
def fake_d2(monkeypatch):
    """The fake detectron2 + densepose first on sys.path (even where the real ones are installed)."""
    _forget_detectron2()
    monkeypatch.syspath_prepend(str(FAKES))
    import detectron2.checkpoint
    import detectron2.modeling

    assert detectron2.__version__ == "0.0-fake"
    detectron2.modeling.CALLS.clear()
    yield SimpleNamespace(checkpoint=detectron2.checkpoint, modeling=detectron2.modeling)
    _forget_detectron2()


#: the fake's base config: as detectron2's Base-DensePose-RCNN-FPN.yaml, it names the DensePose ROI heads
BASE_YAML = 'MODEL:\n  WIDTH: 4\n  ROI_HEADS:\n    NAME: "DensePoseROIHeads"\n'


def _configs(folder: Path) -> tuple[Path, Path]:
    """An IUV-like config and a CSE-like config with the same file name (as detectron2's two
    densepose_rcnn_R_50_FPN_s1x.yaml), each with a _BASE_."""
    (folder / "cse").mkdir(parents=True, exist_ok=True)
    (folder / "Base.yaml").write_text(BASE_YAML)
    iuv = folder / "densepose_rcnn_R_50_FPN_s1x.yaml"
    iuv.write_text('_BASE_: "Base.yaml"\n# a comment\nINPUT:\n  FORMAT: "BGR"\n')
    (folder / "cse" / "Base.yaml").write_text(BASE_YAML + '  ROI_DENSEPOSE_HEAD:\n    PREDICTOR_NAME: "DensePoseEmbeddingPredictor"\n')
    cse = folder / "cse" / "densepose_rcnn_R_50_FPN_s1x.yaml"
    cse.write_text('_BASE_: "Base.yaml"\n# a comment\nINPUT:\n  FORMAT: "BGR"\n')
    return iuv, cse


def _crops(n: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(323, 91), (128, 64), (300, 110), (128, 64), (256, 100), (97, 40)][:n]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _save_weights(path: Path, config: Path, fake_d2, **changes) -> Path:
    from detectron2.config import get_cfg
    from densepose import add_densepose_config

    cfg = get_cfg()
    add_densepose_config(cfg)
    cfg.merge_from_file(str(config))
    torch.manual_seed(123)
    state = fake_d2.modeling.build_model(cfg).state_dict()
    state.update(changes)
    torch.save({"model": state}, path)
    return path


def test_densepose_install_hint_names_the_working_commands():
    from precompute.estimators.base import DETECTRON2_INSTALL

    for needed in ("make install-densepose", "pip install --no-build-isolation <detectron2>",
                   "pip install --no-build-isolation --no-deps <detectron2>/projects/DensePose", "pip install av"):
        assert needed in INSTALL_HINT and needed in DETECTRON2_INSTALL
    readme = (REPO / "docs" / "precompute.md").read_text()  # the DensePose guide
    for command in ("--no-build-isolation", "--no-deps", "projects/DensePose", "install av", "make install-densepose"):
        assert command in readme


def test_make_install_densepose_commands(tmp_path):
    import os
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    checkout = tmp_path / "detectron2"
    checkout.mkdir()
    (checkout / "setup.py").write_text("")

    def commands(*args: str) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "DETECTRON2"}  # the Makefile's default, not the user's
        done = subprocess.run(["make", "-n", "-o", ".venv/.installed", "install-densepose", *args], cwd=REPO,
                              capture_output=True, text=True, check=True, env=env)
        return [line for line in done.stdout.splitlines() if "pip install" in line]

    local = commands(f"DETECTRON2={checkout}")
    assert local == [f".venv/bin/python -m pip install --no-build-isolation '{checkout}'",
                     f".venv/bin/python -m pip install --no-build-isolation --no-deps '{checkout}/projects/DensePose'",
                     ".venv/bin/python -m pip install av"]
    url = "https://github.com/facebookresearch/detectron2.git"
    assert commands(f"DETECTRON2={url}")[:2] == commands()[:2] == [
        f".venv/bin/python -m pip install --no-build-isolation 'git+{url}'",
        f".venv/bin/python -m pip install --no-build-isolation --no-deps 'git+{url}#subdirectory=projects/DensePose'"]


def test_densepose_random_weights_are_explicit_seeded_and_marked(tmp_path, fake_d2):
    iuv_cfg, _ = _configs(tmp_path / "configs")
    with pytest.raises(EstimatorError, match="weights=PATH or URL .*weights=random"):
        build_estimator("densepose", tmp_path, config=str(iuv_cfg))  # no zoo config of that content
    a = build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights="random")
    b = build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights="random")
    s = a.settings()
    assert s["weights"] == "random (seed 0)" and s["weights_sha256"] is None and "smoke tests only" in s["testing_only"]
    crops = _crops(3)
    for x, y in zip(a.estimate(crops, ["x"] * 3, ["k"] * 3), b.estimate(crops, ["x"] * 3, ["k"] * 3)):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x.I, y.I)


def test_inspect_warns_about_random_weight_stores(tmp_path, fake_d2):
    from data.store import DSAPStore, store_dir
    from precompute.inspect import format_summary, summarise
    from precompute.runner import PrecomputeConfig, run_precompute

    iuv_cfg, _ = _configs(tmp_path / "configs")
    dataset = _toy_dataset(tmp_path / "data", 4)
    cfg = PrecomputeConfig(dataset="toy", root=tmp_path, estimator="densepose",
                           options={"config": str(iuv_cfg), "weights": "random"}, size=16)
    assert run_precompute(cfg, dataset=dataset)["complete"]
    summary = summarise(DSAPStore(store_dir(tmp_path, "toy", "densepose")))
    assert summary["warnings"] and "for testing only" in summary["warnings"][0]
    assert "WARNING    this store is for testing only" in format_summary(summary)
    assert summary["settings"]["batching"] == "shape" and summary["settings"]["config_sha256"]
    assert "computed   1 shard(s); " in format_summary(summary) and f"config {iuv_cfg}" in format_summary(summary)


def _toy_dataset(data: Path, n: int, seed: int = 0) -> SimpleNamespace:
    """``n`` crops of a few sizes (sizes repeat, so shape batching has groups) under ``data/query``, as a dataset."""
    rng = np.random.default_rng(seed)
    sizes = [(323, 91), (128, 64), (300, 110), (128, 64), (256, 100), (97, 40)]
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        path = data / f"query/{i:04d}_c1s1_000001_00.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    keys = [p.relative_to(data).as_posix() for p in sorted(data.rglob("*.jpg"))]
    return SimpleNamespace(root=data, all_items=lambda: [SimpleNamespace(path=k, key=k) for k in keys])


def test_densepose_weights_that_fail_are_one_sentence_before_any_image(tmp_path, fake_d2):
    iuv_cfg, _ = _configs(tmp_path / "configs")

    def fails(weights: str, match: str) -> str:
        with pytest.raises(EstimatorError, match=match) as err:
            build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights=weights)
        assert "\n" not in str(err.value) and fake_d2.modeling.CALLS == []  # no image went through the model
        return str(err.value)

    msg = fails("https://example.invalid/model_final.pkl", "cannot fetch the weights .*URLError.*weights=PATH")
    assert "Temporary failure in name resolution" in msg
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x04 not a checkpoint")
    fails(str(garbage), "cannot read the weights .*garbage.pth")
    empty = tmp_path / "empty.pth"
    torch.save({"model": {}}, empty)
    fails(str(empty), r"do not fit the config densepose_rcnn_R_50_FPN_s1x.yaml: 40 of 40 model tensors")
    wrong = _save_weights(tmp_path / "wrong.pth", iuv_cfg, fake_d2, **{"fine.weight": torch.zeros(3, 4, 1, 1)})
    fails(str(wrong), r"1 of 40 model tensors are missing or of another shape \(e.g. fine.weight\)")
    fails(str(tmp_path / "absent.pth"), "does not exist")
    good = _save_weights(tmp_path / "good.pth", iuv_cfg, fake_d2)
    est = build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights=str(good))
    assert est.settings()["weights_sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert "testing_only" not in est.settings()


def test_densepose_cli_weight_failure_exits_2_with_one_line(tmp_path, fake_d2):
    import os
    import subprocess
    import sys

    iuv_cfg, _ = _configs(tmp_path / "configs")
    root = tmp_path / "root"
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        _write_image(root / "market1501" / split / "0001_c1s1_000001_00.jpg")
    empty = tmp_path / "empty.pth"
    torch.save({"model": {}}, empty)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "precompute", "run", "--dataset", "market1501", "--root", str(root),
                           "--estimator", "densepose", "-o", f"config={iuv_cfg}", "-o", f"weights={empty}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "do not fit the config" in errors[0] and "Traceback" not in done.stderr
    assert not list(root.rglob("*.h5"))  # stopped before any image: no shard written


@pytest.mark.parametrize("batching", ["shape", "fixed"])
def test_densepose_labels_do_not_depend_on_the_batch(tmp_path, fake_d2, batching):
    iuv_cfg, _ = _configs(tmp_path / "configs")
    est = build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights="random", batching=batching,
                          min_body_fraction=0.0)
    assert est.settings()["batching"] == batching
    crops = _crops(6)
    alone = [est.estimate([c], ["x"], ["k"])[0] for c in crops]
    fake_d2.modeling.CALLS.clear()
    mixed = est.estimate(crops, ["x"] * 6, ["k"] * 6)
    shuffled = est.estimate(crops[::-1], ["x"] * 6, ["k"] * 6)[::-1]
    for a, b, c in zip(alone, mixed, shuffled):
        np.testing.assert_array_equal(a.I, b.I)
        np.testing.assert_array_equal(a.I, c.I)
        np.testing.assert_allclose(a.U, b.U, atol=1e-6)
    if batching == "shape":  # the two 128×64 crops share a forward pass, the others run alone
        assert sorted(n for n, _, _ in fake_d2.modeling.CALLS[:5]) == [1, 1, 1, 1, 2]
    else:
        assert fake_d2.modeling.CALLS[0] == (6, 512, 256)
    # the fake is sensitive to padding: padded to the largest crop of the batch, a small crop's labels change
    padded = est._model.inference(*_padded_inputs(est, crops))
    small = padded[1]["instances"].pred_densepose
    alone_small = est._run([crops[1]])[0]["instances"].pred_densepose
    if batching == "shape":
        assert not torch.equal(small.fine_segm.argmax(1), alone_small.fine_segm.argmax(1))


def _padded_inputs(est, crops):
    """The old path: every crop at its own size in one batch (padded to the largest)."""
    from detectron2.structures import Boxes, Instances

    inputs, given = [], []
    for crop in crops:
        h, w = crop.shape[:2]
        nh, nw = est._scaled_size(h, w)
        img = cv2.resize(crop, (nw, nh))
        inputs.append({"image": torch.as_tensor(img.transpose(2, 0, 1).copy()), "height": h, "width": w})
        inst = Instances((nh, nw))
        inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, float(nw), float(nh)]]))
        given.append(inst)
    return inputs, given


def test_densepose_cse_config_is_refused_before_any_image(tmp_path, fake_d2):
    _, cse_cfg = _configs(tmp_path / "configs")
    with pytest.raises(EstimatorError, match="is a CSE .*not a chart-based \\(IUV\\) one"):
        build_estimator("densepose", tmp_path, config=str(cse_cfg), weights="random")
    assert fake_d2.modeling.CALLS == []


class CseOutput:
    """Like DensePose's DensePoseEmbeddingPredictorOutput, which apply_net stores as a CSE entry's
    ``pred_densepose`` (one object for all boxes, sliced by index)."""

    def __init__(self, coarse_segm, embedding):
        self.coarse_segm, self.embedding = coarse_segm, embedding

    def __len__(self):
        return self.coarse_segm.size(0)

    def __getitem__(self, i):
        if i >= len(self):
            raise IndexError(i)
        return CseOutput(self.coarse_segm[i : i + 1], self.embedding[i : i + 1])


def test_cse_apply_net_dump_is_one_sentence(tmp_path):
    dump = tmp_path / "cse.pkl"
    entry = {"file_name": "x.jpg", "scores": torch.tensor([0.9]), "pred_boxes_XYXY": torch.zeros(1, 4),
             "pred_densepose": CseOutput(torch.zeros(1, 2, 4, 4), torch.zeros(1, 16, 4, 4))}
    torch.save([entry], dump)
    with pytest.raises(EstimatorError, match="holds CSE \\(continuous surface embedding\\) results, not chart-based"):
        build_estimator("iuv", tmp_path, dump=str(dump))


def test_densepose_provenance_zoo_fallback_by_content(tmp_path, fake_d2, monkeypatch):
    from precompute.estimators import densepose as dp

    iuv_cfg, cse_cfg = _configs(tmp_path / "configs")
    assert iuv_cfg.name == cse_cfg.name and dp.config_digest(iuv_cfg) != dp.config_digest(cse_cfg)
    copy = tmp_path / "elsewhere" / "renamed.yaml"  # the same content (and base) under another name
    copy.parent.mkdir()
    copy.write_text(iuv_cfg.read_text().replace("# a comment\n", "\n\n"))
    (copy.parent / "Base.yaml").write_text((iuv_cfg.parent / "Base.yaml").read_text() + "  \n")
    assert dp.config_digest(copy) == dp.config_digest(iuv_cfg)  # comments, blank lines, trailing spaces ignored
    (copy.parent / "Base.yaml").write_text("MODEL:\n  WIDTH: 6\n")
    assert dp.config_digest(copy) != dp.config_digest(iuv_cfg)  # the base is part of the content

    weights = _save_weights(tmp_path / "model_final.pkl", iuv_cfg, fake_d2)
    url = "https://zoo.invalid/densepose_rcnn_R_50_FPN_s1x/model_final.pkl"
    monkeypatch.setitem(dp.MODEL_ZOO, "densepose_rcnn_R_50_FPN_s1x", url)
    monkeypatch.setattr(dp, "ZOO_CONFIG_DIGESTS", {dp.config_digest(iuv_cfg): "densepose_rcnn_R_50_FPN_s1x"})
    monkeypatch.setitem(fake_d2.checkpoint.DOWNLOADS, url, str(weights))
    est = build_estimator("densepose", tmp_path, config=str(iuv_cfg))
    s, where = est.settings(), est.provenance()
    assert where["model_zoo"] == "densepose_rcnn_R_50_FPN_s1x" and where["weights"] == url
    assert "weights" not in s and "model_zoo" not in s  # names and places are provenance, contents are settings
    assert s["config_sha256"] == dp.config_digest(iuv_cfg)
    assert s["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(EstimatorError, match="is not one of the model zoo's configs"):
        build_estimator("densepose", tmp_path, config=str(cse_cfg))  # same file name, other content
    # a changed weights file under the same name changes the settings (a store refuses to mix them)
    _save_weights(weights, iuv_cfg, fake_d2, **{"fine.bias": torch.ones(25)})
    assert build_estimator("densepose", tmp_path, config=str(iuv_cfg)).settings()["weights_sha256"] != s["weights_sha256"]


def test_zoo_config_digests_cover_the_four_zoo_models():
    from precompute.estimators.densepose import MODEL_ZOO, ZOO_CONFIG_DIGESTS

    assert set(ZOO_CONFIG_DIGESTS.values()) == set(MODEL_ZOO)
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in ZOO_CONFIG_DIGESTS)


# ------------------------------------------- reproducible stores, the wrong model refused (fake detectron2)
@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_densepose_pins_its_thread_count(tmp_path, fake_d2, restore_threads):
    iuv_cfg, _ = _configs(tmp_path / "configs")
    est = build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights="random", min_body_fraction=0.0)
    assert est.settings()["threads"] == 1
    crops = _crops(4)
    runs = {}
    for n in (1, 2):  # the process's own thread count (--threads) is scheduling: the output does not move
        torch.set_num_threads(n)
        runs[n] = est.estimate(crops, ["x"] * 4, ["k"] * 4)
        assert torch.get_num_threads() == n  # restored after the model ran
    for a, b in zip(runs[1], runs[2]):
        for name in "IUV":
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # the fake, like a CPU backbone, gives other low-order bits with another thread count: threads= is a setting
    two = build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights="random", min_body_fraction=0.0,
                          threads=2)
    assert two.settings()["threads"] == 2
    assert any(not np.array_equal(a.U, b.U) for a, b in zip(runs[1], two.estimate(crops, ["x"] * 4, ["k"] * 4)))
    with pytest.raises(EstimatorError, match="threads must be at least 1.*--workers N"):
        build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights="random", threads=0)


def _shard_contents(folder: Path) -> dict[str, tuple]:
    """Every shard's arrays as bytes and its settings: what a store holds, without its provenance record."""
    import h5py

    out = {}
    for shard in sorted(folder.glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            out[shard.name] = (tuple(f[name][()].tobytes() for name in ("dsap", "written", "found", "coverage")),
                               list(f["keys"].asstr()[()]), f.attrs["settings"])
    return out


def test_densepose_store_bytes_do_not_depend_on_scheduling(tmp_path, fake_d2, restore_threads):
    """One store built at 1 and 2 threads, with 2 workers, batch sizes 1 and 32, and resumed with other
    threads and batch size: the same bytes; the provenance says how each shard was computed."""
    from data.store import DSAPStore, StoreSettings, store_dir
    from precompute.runner import PrecomputeConfig, PrecomputeError, run_precompute

    iuv_cfg, _ = _configs(tmp_path / "configs")
    dataset = _toy_dataset(tmp_path / "data", 10)
    options = {"config": str(iuv_cfg), "weights": "random", "min_body_fraction": 0.0, "min_size": 64,
               "max_size": 128}  # small crops: a fast test

    def build(tag: str, threads: int = 1, **kw) -> Path:
        torch.set_num_threads(threads)
        cfg = PrecomputeConfig(dataset="toy", root=tmp_path, estimator="densepose", options={**options, **kw.pop("o", {})},
                               size=16, shard_size=3, tag=tag, **kw)
        assert run_precompute(cfg, dataset=dataset)["complete"]
        return store_dir(tmp_path, "toy", "densepose", tag)

    reference = _shard_contents(build("t1", threads=1))
    assert len(reference) == 4
    stores = {"t2": build("t2", threads=2), "w2": build("w2", threads=2, workers=2),
              "b1": build("b1", threads=2, batch_size=1), "b32": build("b32", threads=1, batch_size=32)}
    resumed = build("resumed", threads=2, batch_size=2)
    for name in ("shard-00001.h5", "shard-00003.h5", "manifest.json"):  # a killed run: resume it otherwise
        (resumed / name).unlink()
    stores["resumed"] = build("resumed", threads=1, batch_size=5)
    for tag, folder in stores.items():
        assert _shard_contents(folder) == reference, tag

    record = {tag: DSAPStore(folder).provenance for tag, folder in stores.items()}
    assert [r["process"]["intra_op_threads"] for r in record["t2"]] == [2]
    # each of the 2 workers ran with 1 thread (as --help says), whatever the parent's
    assert [(r["process"]["workers"], r["process"]["intra_op_threads"], len(r["shards"])) for r in record["w2"]] == [
        (2, 1, 4)]
    assert sorted(tuple(r["shards"]) for r in record["resumed"]) == [
        ("shard-00000.h5", "shard-00002.h5"), ("shard-00001.h5", "shard-00003.h5")]
    assert record["b1"][0]["estimator"]["config"] == str(iuv_cfg)

    # a model thread count other than the store's gives other bytes, so it is refused rather than mixed in
    other = build("two-threads", threads=1, o={"threads": 2})
    assert _shard_contents(other) != reference
    (other / "shard-00002.h5").unlink()
    with pytest.raises(PrecomputeError, match=r"settings\.threads is 2 in the store and 1 now; .*--force"):
        build("two-threads", threads=2)
    assert StoreSettings("densepose", {}).explain({"estimator": "densepose", "settings": {}, "size": 32,
                                                   "kind": "dsap"}) == ""


def test_densepose_store_settings_are_contents_not_paths(tmp_path, fake_d2):
    from data.store import store_dir
    from precompute.runner import PrecomputeConfig, PrecomputeError, run_precompute

    iuv_cfg, _ = _configs(tmp_path / "configs")
    weights = _save_weights(tmp_path / "a" / "model.pth", iuv_cfg, fake_d2) if (tmp_path / "a").mkdir() is None else None
    dataset = _toy_dataset(tmp_path / "data", 3)

    def run(weights: Path, **options) -> dict:
        cfg = PrecomputeConfig(dataset="toy", root=tmp_path, estimator="densepose", size=16,
                               options={"config": str(iuv_cfg), "weights": str(weights), **options})
        return run_precompute(cfg, dataset=dataset)

    assert run(weights)["complete"]
    moved = tmp_path / "b" / "renamed.pth"
    moved.parent.mkdir()
    weights.rename(moved)
    assert run(moved)["up_to_date"]  # the same content elsewhere: the same settings
    with pytest.raises(PrecomputeError) as err:
        run(moved, min_size=128)
    assert "settings.min_size is 256 in the store and 128 now; run with the store's settings" in str(err.value)
    assert "--force" in str(err.value) and "--tag NAME" in str(err.value)
    other = _save_weights(tmp_path / "b" / "other.pth", iuv_cfg, fake_d2, **{"fine.bias": torch.ones(25)})
    with pytest.raises(PrecomputeError, match=r"settings\.weights_sha256 is [0-9a-f]{12}\.\.\. in the store and "
                                              r"[0-9a-f]{12}\.\.\. now"):
        run(other)
    assert store_dir(tmp_path, "toy", "densepose").is_dir()


def test_densepose_store_is_not_mixed_across_hardware(tmp_path, fake_d2, monkeypatch):
    from data.store import DSAPStore, store_dir
    from precompute.estimators import densepose as dp
    from precompute.runner import PrecomputeConfig, PrecomputeError, run_precompute

    iuv_cfg, _ = _configs(tmp_path / "configs")
    dataset = _toy_dataset(tmp_path / "data", 4)

    def run(**kw) -> dict:
        cfg = PrecomputeConfig(dataset="toy", root=tmp_path, estimator="densepose", size=16, shard_size=2,
                               options={"config": str(iuv_cfg), "weights": "random", "min_size": 64, "max_size": 128},
                               **kw)
        return run_precompute(cfg, dataset=dataset)

    assert run()["complete"]
    folder = store_dir(tmp_path, "toy", "densepose")
    here = DSAPStore(folder).provenance[0]["estimator"]["hardware"]
    assert set(here) == {"cpu_capability"}
    monkeypatch.setattr(dp.DensePoseEstimator, "_hardware", lambda self: {"cpu_capability": "OTHER"})
    assert run()["up_to_date"]  # complete: nothing to compute here, nothing mixed
    (folder / "shard-00001.h5").unlink()
    with pytest.raises(PrecomputeError) as err:
        run()
    assert (f"shard-00000.h5 was computed on other hardware than this run's (cpu_capability is "
            f"'{here['cpu_capability']}' in the store and 'OTHER' now)") in str(err.value)
    assert "finish the store where it was started, pass --force" in str(err.value)
    assert run(force=True)["complete"]


def _config_of_depth(folder: Path, depth: int) -> Path:
    path = folder / f"densepose_rcnn_R_{depth}_FPN_s1x.yaml"
    path.write_text(f'_BASE_: "Base.yaml"\nMODEL:\n  RESNETS:\n    DEPTH: {depth}\n')
    return path


def test_densepose_weights_of_another_model_are_refused_naming_it(tmp_path, fake_d2):
    iuv_cfg, _ = _configs(tmp_path / "configs")
    r50, r101 = (_config_of_depth(tmp_path / "configs", d) for d in (50, 101))
    w50 = _save_weights(tmp_path / "r50.pth", r50, fake_d2)
    w101 = _save_weights(tmp_path / "r101.pth", r101, fake_d2)

    def refusal(config: Path, weights: Path, **changes) -> str:
        if changes:
            state = torch.load(weights, weights_only=True)["model"]
            state.update(changes)
            weights = tmp_path / "changed.pth"
            torch.save({"model": state}, weights)
        with pytest.raises(EstimatorError) as err:
            build_estimator("densepose", tmp_path, config=str(config), weights=str(weights))
        assert fake_d2.modeling.CALLS == [] and "\n" not in str(err.value)
        return str(err.value)

    msg = refusal(r50, w101)  # 17 more res4 blocks: once only a warning, now the model is named
    assert "are of another model than the config densepose_rcnn_R_50_FPN_s1x.yaml: 34 of their tensors" in msg
    assert ("they hold a ResNet-101 (3-4-23-3 blocks in res2-res5) and the config builds a ResNet-50 (3-4-6-3 "
            "blocks in res2-res5): pass the config they were trained with (densepose_rcnn_R_101_FPN_*)") in msg
    msg = refusal(r101, w50)
    assert "do not fit the config densepose_rcnn_R_101_FPN_s1x.yaml: 34 of 74 model tensors are missing" in msg
    assert "they hold a ResNet-50 (3-4-6-3 blocks in res2-res5) and the config builds a ResNet-101" in msg
    msg = refusal(r50, w50, **{"fine.extra": torch.zeros(3)})  # a head tensor this model does not have
    assert "1 of their tensors are not in this model (e.g. fine.extra); pass the config they were trained with" in msg
    # tensors outside the model's modules (e.g. an EMA copy kept beside it) are only logged
    state = {**torch.load(w50, weights_only=True)["model"], "ema.stem.weight": torch.zeros(1)}
    torch.save({"model": state}, tmp_path / "ema.pth")
    assert build_estimator("densepose", tmp_path, config=str(r50), weights=str(tmp_path / "ema.pth"))


def test_densepose_config_without_densepose_heads_is_refused_before_any_image(tmp_path, fake_d2):
    (tmp_path / "mask_rcnn_R_50_FPN_3x.yaml").write_text('MODEL:\n  ROI_HEADS:\n    NAME: "StandardROIHeads"\n')
    with pytest.raises(EstimatorError, match=r"mask_rcnn_R_50_FPN_3x.yaml is not a DensePose config: its ROI heads "
                                             r"are StandardROIHeads, which give no DensePose output"):
        build_estimator("densepose", tmp_path, config=str(tmp_path / "mask_rcnn_R_50_FPN_3x.yaml"), weights="random")
    assert fake_d2.modeling.CALLS == []


def test_densepose_text_file_as_weights_is_named(tmp_path, fake_d2):
    iuv_cfg, _ = _configs(tmp_path / "configs")
    notes = tmp_path / "notes.pth"
    notes.write_text("this is not a checkpoint\n")
    with pytest.raises(EstimatorError, match=r"cannot read the weights .*notes.pth: it is a text file beginning "
                                             r"'this is not a checkpoint', not a detectron2 DensePose checkpoint"):
        build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights=str(notes))
    notes.write_bytes(b"")
    with pytest.raises(EstimatorError, match=r"notes.pth: it is an empty file, not a detectron2 DensePose checkpoint"):
        build_estimator("densepose", tmp_path, config=str(iuv_cfg), weights=str(notes))


def test_inspect_refuses_label_maps_of_another_model(tmp_path, fake_d2, caplog):
    from data.store import DSAPStore, store_dir
    from precompute.inspect import OtherModelError, inspect_store
    from precompute.runner import PrecomputeConfig, run_precompute

    iuv_cfg, _ = _configs(tmp_path / "configs")
    weights = _save_weights(tmp_path / "model.pth", iuv_cfg, fake_d2)
    other = _save_weights(tmp_path / "other.pth", iuv_cfg, fake_d2, **{"fine.bias": torch.ones(25)})
    dataset = _toy_dataset(tmp_path / "data", 2)
    cfg = PrecomputeConfig(dataset="toy", root=tmp_path, estimator="densepose", size=16,
                           options={"config": str(iuv_cfg), "weights": str(weights)})
    run_precompute(cfg, dataset=dataset)
    store = DSAPStore(store_dir(tmp_path, "toy", "densepose"))
    key = store.keys[0]

    def montage(**options) -> dict:
        return inspect_store(store, dataset, montage_keys=[key], out=tmp_path / "montages",
                             options={"config": str(iuv_cfg), **options})

    with pytest.raises(OtherModelError) as err:
        montage(weights=str(other))
    assert "settings.weights_sha256 is" not in str(err.value) and "weights_sha256 is" in str(err.value)
    assert f"the store's provenance names {iuv_cfg}, {weights}" in str(err.value)
    copy = tmp_path / "copy" / "same.pth"
    copy.parent.mkdir()
    copy.write_bytes(weights.read_bytes())
    assert len(montage(weights=str(copy))["montages"]) == 1  # the same model under another name draws
    caplog.clear()
    assert len(montage(weights=str(copy), min_size=128)["montages"]) == 1
    assert "drawn with other settings than the store's: min_size is 256 in the store and 128 now" in caplog.text
