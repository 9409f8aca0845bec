"""The synthetic dataset generator: exact ground truth, determinism, Market layout, variety, CLI."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from data.io import read_image, read_iuv_png
from data.synthetic import (
    KEYPOINT_NAMES,
    SyntheticError,
    generate,
    make_camera,
    make_identity,
    plan,
    render,
    render_spec,
    sample_view,
    synth_command,
    texture,
)
from dsa.parts import FLIP_PARTNER, NUM_PARTS, PART_NAMES

MARKET_RE = re.compile(r"(-?\d+)_c(\d)")
TINY = dict(num_ids=8, num_cameras=3, seed=3, workers=1, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "synthetic"
    generate(out, **TINY)
    return out


def _views(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for k in range(n):
        cam = make_camera(seed, k % 4)
        yield make_identity(seed, 1 + k % 5), sample_view(rng, cam), cam


def test_ground_truth_is_exact_in_memory():
    for ident, view, cam in _views(12):
        r = render(ident, view, cam)
        body = r.iuv.I > 0
        assert body.mean() > 0.05
        expected = texture(ident, r.iuv.I[body], r.iuv.U[body], r.iuv.V[body])
        np.testing.assert_array_equal(r.clean_rgb[body], expected)
        assert not r.clean_rgb[~body].any()
        # U, V lie on the PNG's 1/255 grid
        for m in (r.iuv.U, r.iuv.V):
            np.testing.assert_allclose(m * 255, np.rint(m * 255), atol=1e-3)


def test_ground_truth_is_exact_through_the_files(tiny):
    specs = {s.rel_path: s for s in plan(8, 3, 3)}
    for rel in sorted(specs)[::7]:
        iuv = read_iuv_png(tiny / rel.replace(".jpg", "_IUV.png"))
        r = render_spec(specs[rel], 3, 128, 64)
        np.testing.assert_array_equal(iuv.I, r.iuv.I)
        body = iuv.I > 0
        ident = make_identity(3, specs[rel].pid)
        np.testing.assert_array_equal(texture(ident, iuv.I[body], iuv.U[body], iuv.V[body]), r.clean_rgb[body])
        # the JPEG is the final image (lossy and noisy, so close, not equal; far from other images)
        jpg = read_image(tiny / rel).astype(np.int16)
        assert np.abs(jpg - r.final_rgb).mean() < 8
        assert np.abs(jpg - r.final_rgb).mean() * 3 < np.abs(jpg - np.roll(r.final_rgb, 16, axis=1)).mean()


def test_final_image_is_the_lit_texture():
    """With blur and noise off, a body pixel's colour is its texture colour times lighting and cast."""
    ident, view, cam = next(_views(1, seed=5))
    view = dataclasses.replace(view, blur=0.0, noise=0.0, occluder="none")
    r = render(ident, view, cam)
    body = r.iuv.I > 0
    clean, final = r.clean_rgb[body].astype(float), r.final_rgb[body].astype(float)
    bright = (clean > 60).all(1) & (final < 250).all(1)
    ratio = (final[bright] - cam.offset) / clean[bright] / np.asarray(cam.gain)
    # one shading factor per pixel, shared by the three channels
    assert np.abs(ratio - ratio.mean(1, keepdims=True)).max() < 0.05
    assert 0.3 < ratio.mean() < 1.6


def test_all_parts_appear_and_keypoints_follow_the_body():
    seen = set()
    for ident, view, cam in _views(16, seed=2):
        r = render(ident, view, cam)
        seen |= set(np.unique(r.iuv.I).tolist())
    assert seen == set(range(NUM_PARTS + 1))
    assert len(KEYPOINT_NAMES) == 14
    cam = make_camera(0, 0)
    ident = make_identity(0, 1)
    base = sample_view(np.random.default_rng(0), cam)
    for yaw, right_is_left_in_image in ((0.0, True), (np.pi, False)):
        v = dataclasses.replace(base, yaw=yaw, occluder="none", shift_x=0.0, shift_y=0.0)
        r = render(ident, v, cam)
        kp = dict(zip(KEYPOINT_NAMES, r.keypoints))
        assert (kp["right_shoulder"][0] < kp["left_shoulder"][0]) == right_is_left_in_image
        assert kp["head"][1] < kp["neck"][1] < kp["right_hip"][1] < kp["right_knee"][1] < kp["right_ankle"][1]
        # right-side parts (person's right) lie on the same side of the image as the right keypoints
        cols = np.nonzero(r.iuv.I)[1]
        labels = r.iuv.I[r.iuv.I > 0]
        right_parts = [p for p in range(1, NUM_PARTS + 1) if "right" in PART_NAMES[p]]
        x_right = cols[np.isin(labels, right_parts)].mean()
        x_left = cols[np.isin(labels, [FLIP_PARTNER[p] for p in right_parts])].mean()
        assert (x_right < x_left) == right_is_left_in_image


def test_variety_views_and_faces_differ():
    ident = make_identity(0, 7)
    images = [render(ident, v, c).final_rgb.astype(float) for _, v, c in _views(4, seed=9)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(images[a] - images[b]).mean() > 10
    u, v = np.meshgrid(np.linspace(0, 1, 64), np.linspace(0, 1, 64))
    for pid in range(1, 60):
        ident = make_identity(0, pid)
        front = texture(ident, np.full(u.size, 2), u.ravel(), v.ravel())
        back = texture(ident, np.full(u.size, 1), u.ravel(), v.ravel())
        assert (front != back).any(1).mean() > 0.02, pid
    # identities differ mostly by colour: shirt or trousers colours are rarely all equal
    shirts = {(make_identity(0, p).shirt, make_identity(0, p).trousers) for p in range(1, 200)}
    assert len(shirts) == 199


def test_layout_reads_as_market_and_splits(tiny):
    meta = json.loads((tiny / "synthetic.json").read_text())
    assert meta["settings"]["num_ids"] == 8 and meta["settings"]["seed"] == 3
    ids = {}
    for d in ("bounding_box_train", "bounding_box_test", "query"):
        jpgs = sorted((tiny / d).glob("*.jpg"))
        assert jpgs
        for f in jpgs:
            m = MARKET_RE.search(f.name)
            assert m and re.fullmatch(r"\d{4}_c\ds1_\d{6}_00\.jpg", f.name)
            assert 1 <= int(m.group(2)) <= 3
            assert f.with_name(f.stem + "_IUV.png").is_file()
            ids.setdefault(d, []).append((int(m.group(1)), int(m.group(2))))
    train = {p for p, _ in ids["bounding_box_train"]}
    test = {p for p, _ in ids["bounding_box_test"]}
    assert len(train) == 4 and len(test) == 4 and not train & test
    assert {p for p, _ in ids["query"]} == test
    # one query per (test id, camera); every query has a gallery match from another camera
    assert len(ids["query"]) == len(set(ids["query"]))
    for pid, cam in ids["query"]:
        assert any(p == pid and c != cam for p, c in ids["bounding_box_test"])
    total = sum(len(v) for v in ids.values())
    assert meta["summary"]["num_images"] == total
    kps = json.loads((tiny / "keypoints.json").read_text())
    assert len(kps["images"]) == total and kps["names"] == list(KEYPOINT_NAMES)
    assert (tiny / "preview.png").stat().st_size > 1000
    datasets = pytest.importorskip("data.datasets")
    if hasattr(datasets, "build_dataset"):
        ds = datasets.build_dataset("synthetic", tiny.parent)
        assert len(ds.train) + len(ds.query) + len(ds.gallery) == total
        assert ds.num_train_pids == 4


def test_same_seed_gives_identical_bytes(tiny, tmp_path):
    other = tmp_path / "synthetic"
    generate(other, **{**TINY, "workers": 2})
    files = sorted(p.relative_to(tiny) for p in tiny.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for f in files:
        assert (tiny / f).read_bytes() == (other / f).read_bytes(), f
    third = tmp_path / "s2" / "synthetic"
    generate(third, **{**TINY, "seed": 4, "preview": False})
    first_a, first_b = (sorted((d / "query").glob("*.jpg"))[0] for d in (tiny, third))
    assert first_a.read_bytes() != first_b.read_bytes()
    assert not (third / "preview.png").exists()
    assert not list(tmp_path.glob(".synthetic.tmp-*"))


def test_reuse_force_and_errors(tmp_path):
    out = tmp_path / "synthetic"
    small = dict(num_ids=3, num_cameras=2, workers=1, progress=False, preview=False)
    first = generate(out, **small)
    assert not first["reused"]
    again = generate(out, **small)
    assert again["reused"] and again["num_images"] == first["num_images"]
    with pytest.raises(SyntheticError, match="--force"):
        generate(out, **{**small, "num_ids": 4})
    forced = generate(out, **{**small, "num_ids": 4}, force=True)
    assert not forced["reused"] and json.loads((out / "synthetic.json").read_text())["settings"]["num_ids"] == 4
    with pytest.raises(SyntheticError, match="cameras"):
        generate(tmp_path / "x", num_ids=3, num_cameras=1)
    stale = tmp_path / ".synthetic.tmp-999999999"  # a staging folder of a run that died
    (stale / "query").mkdir(parents=True)
    generate(out, **small, force=True)
    assert not stale.exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("mine")
    with pytest.raises(SyntheticError, match="not a synthetic dataset"):
        generate(tmp_path / "busy", **small)


def test_cli(tmp_path):
    runner = CliRunner()
    args = ["--root", str(tmp_path), "--ids", "3", "--cameras", "2", "--workers", "1", "--no-preview"]
    res = runner.invoke(synth_command, args)
    assert res.exit_code == 0, res.output
    assert "generated" in res.output and (tmp_path / "synthetic" / "synthetic.json").is_file()
    res = runner.invoke(synth_command, args)
    assert res.exit_code == 0 and "reused" in res.output
    res = runner.invoke(synth_command, args[:3] + ["4"] + args[4:])
    assert res.exit_code == 2 and "--force" in res.output and "Traceback" not in res.output


def test_default_plan_size_and_split():
    specs = plan(300, 4, 0)
    assert 2000 <= len(specs) <= 4000
    train = {s.pid for s in specs if s.rel_path.startswith("bounding_box_train/")}
    test = {s.pid for s in specs if not s.rel_path.startswith("bounding_box_train/")}
    assert len(train) == 150 and len(test) == 150 and not train & test
    assert len({s.rel_path for s in specs}) == len(specs)
    assert {s.cam for s in specs} == {0, 1, 2, 3}
