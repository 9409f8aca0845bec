"""Precompute runner: determinism, resumability after SIGKILL, failed images, workers, torchrun ranks, CLI.

Unit tests use fabricated images and a small fake estimator (below) so that they stay fast and
independent of the real estimators and dataset adapters; subprocess tests drive the runner through a
tiny script that imports these fakes.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.store import MANIFEST_NAME, DSAPStore, StoreError, store_dir
from dsa.iuv import IUV
from precompute.runner import PrecomputeConfig, PrecomputeError, plan_shards, run_precompute

S = 16
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- fakes
@dataclass(frozen=True)
class FakeItem:
    key: str
    pid: int = 0
    camid: int = 0


class FakeDataset:
    """Every image file under ``root`` (sorted), as a dataset with one split."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.name = "toy"

    def all_items(self) -> list[FakeItem]:
        return [FakeItem(p.relative_to(self.root).as_posix()) for p in sorted(self.root.rglob("*.jpg"))]


class FakeEstimator:
    """Deterministic IUV from the image itself: a centred body box, part = band of rows, u/v = position.

    Keys containing ``noperson`` give "not found"; ``delay`` simulates a slow model (per image)."""

    name = "fake"

    def __init__(self, delay: float = 0.0, scale: float = 1.0, batch_size: int = 3) -> None:
        self.delay, self.scale, self.batch_size = delay, scale, batch_size

    def settings(self) -> dict:
        return {"scale": self.scale}

    def estimate(self, images, paths, keys):
        out = []
        for img, key in zip(images, keys):
            time.sleep(self.delay)
            if "noperson" in key:
                out.append(None)
                continue
            h, w = img.shape[:2]
            I = np.zeros((h, w), np.uint8)
            y, x = np.mgrid[0:h, 0:w]
            body = (y >= h // 8) & (y < h - h // 8) & (x >= w // 6) & (x < w - w // 6)
            part = 1 + (y * 24 // h + img[..., 0] // 128) % 24
            I[body] = part[body]
            U = ((y % 7) / 6.0 * self.scale).astype(np.float32)
            V = (x / max(w - 1, 1)).astype(np.float32)
            out.append(IUV(I=I, U=U, V=V))
        return out


def fake_factory(dataset_root: Path, delay: float = 0.0, scale: float = 1.0) -> FakeEstimator:
    return FakeEstimator(delay=delay, scale=scale)


def make_images(root: Path, n: int = 23, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    keys = []
    for i in range(n):
        split = ("bounding_box_train", "query", "bounding_box_test")[i % 3]
        tag = "noperson" if i % 11 == 5 else "p"
        key = f"{split}/{i:04d}_c{i % 2 + 1}s1_{tag}.jpg"
        p = root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(40, 72)), int(rng.integers(20, 36))
        cv2.imwrite(str(p), rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        keys.append(key)
    return sorted(keys)


def config(root: Path, **kw) -> PrecomputeConfig:
    base = dict(dataset="toy", root=root, estimator="fake", size=S, shard_size=5)
    base.update(kw)
    return PrecomputeConfig(**base)


def run(root: Path, data: Path, delay: float = 0.0, scale: float = 1.0, **kw) -> dict:
    return run_precompute(config(root, **kw), dataset=FakeDataset(data),
                          estimator_factory=partial(fake_factory, delay=delay, scale=scale))


def store_arrays(folder: Path) -> dict[str, tuple]:
    store = DSAPStore(folder)
    return {k: (store.get(k), store.get_written(k), store.found(k)) for k in store.keys}


def assert_same_store(a: Path, b: Path) -> None:
    x, y = store_arrays(a), store_arrays(b)
    assert sorted(x) == sorted(y)
    for k in x:
        np.testing.assert_array_equal(x[k][0], y[k][0], err_msg=k)
        np.testing.assert_array_equal(x[k][1], y[k][1], err_msg=k)
        assert x[k][2] == y[k][2], k


@pytest.fixture()
def data(tmp_path):
    d = tmp_path / "data"
    make_images(d)
    return d


# --------------------------------------------------------------------------- in-process
def test_plan_is_sorted_and_fixed():
    keys = [f"k{i:02d}" for i in range(12)][::-1]
    assert plan_shards(keys, 5) == [[f"k{i:02d}" for i in range(a, min(a + 5, 12))] for a in (0, 5, 10)]
    with pytest.raises(PrecomputeError):
        plan_shards(keys, 0)


def test_store_matches_direct_warp(tmp_path, data):
    from data.io import read_image
    from dsa.dsap import warp_dsap

    s = run(tmp_path / "root", data)
    assert s["complete"] and s["num_images"] == 23 and s["computed_images"] == 23
    folder = store_dir(tmp_path / "root", "toy", "fake")
    store = DSAPStore(folder)
    assert store.keys == [i.key for i in FakeDataset(data).all_items()]
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["num_found"] == 21 and len(manifest["shards"]) == 5 and manifest["settings"] == {"scale": 1.0}
    assert manifest["summary"]["computed_images"] == 23
    for key in store.keys[:6]:
        img = read_image(data / key)
        iuv = FakeEstimator().estimate([img], [data / key], [key])[0]
        if iuv is None:
            assert not store.found(key) and not store.get_written(key).any()
            continue
        dsap, written = warp_dsap(img, iuv.I, iuv.U, iuv.V, S)
        np.testing.assert_array_equal(store.get(key), dsap)
        np.testing.assert_array_equal(store.get_written(key), written)
        assert store.found(key)


def test_csa_kind(tmp_path, data):
    run(tmp_path, data, kind="csa")
    store = DSAPStore(store_dir(tmp_path, "toy", "fake"))
    assert store.kind == "csa" and len(store) == 23


def test_resume_skips_complete_shards(tmp_path, data):
    run(tmp_path, data)
    folder = store_dir(tmp_path, "toy", "fake")
    again = run(tmp_path, data)
    assert again["up_to_date"]
    (folder / MANIFEST_NAME).unlink()
    (folder / "shard-00002.h5").unlink()
    mtime = (folder / "shard-00000.h5").stat().st_mtime_ns
    s = run(tmp_path, data)
    assert s["computed_images"] == 5 and s["complete"]  # only the missing shard was computed
    assert (folder / "shard-00000.h5").stat().st_mtime_ns == mtime


def test_failed_images_are_recorded_and_run_goes_on(tmp_path, data):
    keys = [i.key for i in FakeDataset(data).all_items()]
    (data / keys[0]).write_bytes(b"")  # zero bytes
    (data / keys[7]).write_bytes(b"not a jpeg at all")  # corrupt
    s = run(tmp_path, data)
    assert s["complete"] and s["computed_failures"] == 2
    reasons = {f["key"]: f["reason"] for f in s["failures"]}
    assert set(reasons) == {keys[0], keys[7]} and "empty" in reasons[keys[0]]
    store = DSAPStore(store_dir(tmp_path, "toy", "fake"))
    store.check_covers(keys)  # failed images are still covered, as not found
    assert not store.found(keys[0]) and not store.get_written(keys[7]).any()
    assert (store.get(keys[0]) == 128).all()


class BrokenEstimator(FakeEstimator):
    """Fails on every batch: ``systemic`` with one reason for all images (naming each image, as real
    errors do), else only on keys containing ``bad``, each with its own reason."""

    def __init__(self, systemic: bool, batch_size: int = 3) -> None:
        super().__init__(batch_size=batch_size)
        self.systemic = systemic

    def estimate(self, images, paths, keys):
        for path, key in zip(paths, keys):
            if self.systemic:
                raise AttributeError(f"'DensePoseEmbeddingPredictorOutput' object has no attribute 'u' ({path})")
            if "0003" in key or "0012" in key:
                raise RuntimeError(f"odd pixels in {key}: {len(key)}")
        return super().estimate(images, paths, keys)


def test_systemic_estimator_failure_stops_with_a_sentence(tmp_path, data):
    from precompute.runner import SystemicFailure

    for batch_size in (3, 1):
        with pytest.raises(SystemicFailure) as err:
            run_precompute(config(tmp_path), dataset=FakeDataset(data),
                           estimator_factory=lambda root: BrokenEstimator(True, batch_size=batch_size))
        msg = str(err.value)
        assert f"failed on {max(batch_size, 2)} images in a row" in msg and "no attribute 'u' (<image>)" in msg
        assert "\n" not in msg and isinstance(err.value, PrecomputeError)
        assert not list((tmp_path / "dsap").rglob("*.h5"))  # nothing stored
    # per-image failures (other reasons) are still recorded and the run goes on
    s = run_precompute(config(tmp_path), dataset=FakeDataset(data),
                       estimator_factory=lambda root: BrokenEstimator(False))
    assert s["complete"] and s["computed_failures"] == 2
    assert all(f["reason"].startswith("estimator failed: odd pixels") for f in s["failures"])


@pytest.mark.parametrize("workers", [1, 2])
def test_iuv_missing_error_on_every_image_stops(tmp_path, data, workers):
    with pytest.raises(PrecomputeError, match="the iuv estimator failed on 5 images in a row .*no DensePose output "
                                              "for <image>.*missing=not-found"):
        run_precompute(config(tmp_path, estimator="iuv", options={"missing": "error"}, workers=workers),
                       dataset=FakeDataset(data))


def test_different_settings_refused_unless_force_or_tag(tmp_path, data):
    run(tmp_path, data)
    with pytest.raises(PrecomputeError, match="other settings.*--force.*--tag"):
        run(tmp_path, data, scale=0.5)
    with pytest.raises(PrecomputeError, match="size"):
        run(tmp_path, data, size=8)
    run(tmp_path, data, scale=0.5, tag="half")
    assert DSAPStore(store_dir(tmp_path, "toy", "fake", "half")).settings == {"scale": 0.5}
    run(tmp_path, data, scale=0.5, force=True)
    assert DSAPStore(store_dir(tmp_path, "toy", "fake")).settings == {"scale": 0.5}


def test_partial_shards_with_other_settings_refused(tmp_path, data):
    run(tmp_path, data)
    (store_dir(tmp_path, "toy", "fake") / MANIFEST_NAME).unlink()
    with pytest.raises(PrecomputeError, match="other settings"):
        run(tmp_path, data, scale=0.5)


def test_dataset_change_rewrites_stale_shards(tmp_path, data):
    run(tmp_path, data)
    keys = [i.key for i in FakeDataset(data).all_items()]
    (data / keys[3]).unlink()
    s = run(tmp_path, data)
    assert s["complete"] and s["num_images"] == 22
    store = DSAPStore(store_dir(tmp_path, "toy", "fake"))
    assert keys[3] not in store and len(store) == 22 and store.verify() == []


# --------------------------------------------------------------------------- subprocesses
DRIVER = """
import json, sys
from functools import partial
from pathlib import Path
sys.path.insert(0, {here!r})
from test_precompute import FakeDataset, fake_factory, config
from precompute.runner import run_precompute
if __name__ == "__main__":
    root, data, workers, delay = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    s = run_precompute(config(root, workers=workers), dataset=FakeDataset(data),
                       estimator_factory=partial(fake_factory, delay=delay))
    print(json.dumps(s))
"""


def driver(tmp_path: Path) -> Path:
    p = tmp_path / "driver.py"
    p.write_text(DRIVER.format(here=str(HERE)))
    return p


def start(script: Path, root: Path, data: Path, workers: int = 1, delay: float = 0.0, env: dict | None = None):
    e = {**os.environ, "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(script), str(root), str(data), str(workers), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)


def finish(proc) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, data):
    script = driver(tmp_path)
    reference = tmp_path / "ref"
    run(reference, data)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for attempt, workers in enumerate((1, 2)):  # with 2 workers the orphaned workers must stop too
        root = tmp_path / f"killed{attempt}"
        proc = start(script, root, data, workers=workers, delay=0.06)  # >= 1.4 s of work after start-up
        time.sleep(rng.uniform(0.2, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        folder = store_dir(root, "toy", "fake")
        assert not (folder / MANIFEST_NAME).exists(), f"seed {seed}: the run finished before the kill"
        s = finish(start(script, root, data))
        assert s["complete"], f"seed {seed}"
        assert not list(folder.glob("*.tmp-*")), f"seed {seed}: temporary files left"
        assert_same_store(store_dir(reference, "toy", "fake"), folder)


def test_two_workers_equal_one(tmp_path, data):
    run(tmp_path / "one", data)
    s = finish(start(driver(tmp_path), tmp_path / "two", data, workers=2))
    assert s["complete"] and s["computed_images"] == 23 and s["workers"] == 2
    assert_same_store(store_dir(tmp_path / "one", "toy", "fake"), store_dir(tmp_path / "two", "toy", "fake"))


def test_torchrun_ranks_complete_the_store(tmp_path, data):
    script, root = driver(tmp_path), tmp_path / "ranks"
    procs = [start(script, root, data, delay=0.005, env={"RANK": str(r), "WORLD_SIZE": "2"}) for r in (0, 1)]
    results = [finish(p) for p in procs]
    assert sum(r["computed_images"] for r in results) == 23
    assert any(r["complete"] for r in results)
    folder = store_dir(root, "toy", "fake")
    assert (folder / MANIFEST_NAME).exists()
    assert_same_store(store_dir(tmp_path / "ranks", "toy", "fake"), folder)
    run(tmp_path / "one", data)
    assert_same_store(store_dir(tmp_path / "one", "toy", "fake"), folder)


def test_rerun_with_one_worker_completes_a_rank_store(tmp_path, data):
    root = tmp_path / "r"
    finish(start(driver(tmp_path), root, data, env={"RANK": "1", "WORLD_SIZE": "3"}))
    folder = store_dir(root, "toy", "fake")
    assert not (folder / MANIFEST_NAME).exists()
    with pytest.raises(StoreError, match="incomplete"):
        DSAPStore(folder)
    s = run(root, data)
    assert s["complete"] and s["computed_images"] == 23 - 8  # rank 1 of 3 wrote shards 1 and 4 (5 + 3 images)


# --------------------------------------------------------------------------- inspect
def test_summarise_and_verify(tmp_path, data):
    from precompute.inspect import format_summary, summarise, verify

    run(tmp_path, data)
    store = DSAPStore(store_dir(tmp_path, "toy", "fake"))
    keys = store.keys
    s = summarise(store, keys[1:] + ["query/extra.jpg"])
    assert s["num_images"] == 23 and s["num_found"] == 21 and s["found_rate"] == round(21 / 23, 4)
    cov = store.table("coverage")
    assert [p["coverage"] for p in s["parts"]] == [round(float(c), 4) for c in cov.mean(0)]
    torso = next(g for g in s["groups"] if g["group"] == "torso")
    assert torso["coverage"] == round(float(cov[:, :2].mean()), 4)
    pr = s["problems"]
    assert pr["missing_keys"] == 1 and pr["missing_examples"] == ["query/extra.jpg"] and pr["extra_keys"] == 1
    text = format_summary(s)
    assert "torso front" in text and "1 dataset images not in the store" in text
    assert verify(store, keys) == []
    problems = verify(store, keys + ["query/extra.jpg"])
    assert len(problems) == 1 and "1 of 24 dataset images missing" in problems[0]


def test_montage_png(tmp_path, data):
    from data.io import read_image
    from precompute.inspect import draw_coverage, draw_montage

    run(tmp_path, data)
    store = DSAPStore(store_dir(tmp_path, "toy", "fake"))
    key = next(k for k in store.keys if store.found(k))
    img = read_image(data / key)
    labels = FakeEstimator().estimate([img], [data / key], [key])[0].I
    out = draw_montage(tmp_path / "m" / "x.png", img, store.get(key), store.get_written(key), labels, title=key)
    png = cv2.imread(str(out))
    assert png.shape == (720, 1700, 3) and png.std() > 10
    out = draw_coverage(tmp_path / "m" / "c.png", store.table("coverage").mean(0))
    assert cv2.imread(str(out)).shape == (400, 1000, 3)
    assert not list((tmp_path / "m").glob("*.tmp-*"))


@pytest.fixture()
def synthetic_root(tmp_path):
    synthetic = pytest.importorskip("data.synthetic")
    pytest.importorskip("precompute.estimators.synthetic")
    synthetic.generate(tmp_path / "synthetic", num_ids=4, num_cameras=2, workers=1, progress=False, preview=False)
    return tmp_path


def test_cli_run_inspect_verify(synthetic_root):
    from click.testing import CliRunner

    from precompute.__main__ import cli

    root = str(synthetic_root)
    args = ["--dataset", "synthetic", "--root", root, "--estimator", "synthetic"]
    r = CliRunner().invoke(cli, ["inspect", *args])
    assert r.exit_code == 2 and "no DSAP store" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["run", *args, "--shard-size", "7", "-o", "seed=3"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["inspect", *args, "--verify", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["verify"] == [] and s["num_found"] == s["num_images"] > 0 and s["problems"]["missing_keys"] == 0
    r = CliRunner().invoke(cli, ["run", *args, "--size", "16"])
    assert r.exit_code == 2 and "--force" in r.output
    folder = store_dir(synthetic_root, "synthetic", "synthetic")
    shard = folder / "shard-00000.h5"
    with open(shard, "r+b") as f:  # damage DSAP pixels in the middle of the file: only the checksum sees it
        f.seek(shard.stat().st_size // 2)
        f.write(b"\xff" * 16)
    r = CliRunner().invoke(cli, ["inspect", *args, "--verify"])
    assert r.exit_code == 1 and "checksum" in r.output
    with open(shard, "r+b") as f:  # damage the HDF5 metadata at the end: the reader says so in a sentence
        f.seek(-64, 2)
        f.write(b"\xff" * 16)
    r = CliRunner().invoke(cli, ["inspect", *args, "--verify"])
    assert r.exit_code == 2 and "damaged" in r.output and "make precompute" in r.output, r.output
    r = CliRunner().invoke(cli, ["run", *args, "--shard-size", "7", "-o", "seed=3"])  # a plain rerun repairs it
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["inspect", *args, "--verify"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["inspect", *args, "--verify", "--montage", "query/nope.jpg"])
    assert r.exit_code == 2 and "not a key" in r.output


DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "densepose-demo"


@pytest.mark.skipif(not (DEMO / "demo_im_IUV.png").exists(), reason="densepose-demo data not present")
def test_inspect_iuv_demo(tmp_path):
    from click.testing import CliRunner

    from precompute.__main__ import cli

    r = CliRunner().invoke(cli, ["inspect-iuv", "--image", str(DEMO / "demo_im.jpg"), "--iuv", str(DEMO / "demo_im_IUV.png"),
                                 "--inds", str(DEMO / "demo_im_INDS.png"), "--out", str(tmp_path), "--max-persons", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["demo_im_person0_coverage.png", "demo_im_person0_montage.png"]


def test_montage_label_maps_follow_the_store_settings(synthetic_root):
    """The label map drawn beside the DSAP images comes from the estimator as the store ran it (here with
    parts dropped), not from its defaults: every part drawn in the map has written cells, and vice versa."""
    from data.io import read_image
    from precompute.inspect import label_map as _label_map, label_map_estimator

    cfg = PrecomputeConfig(dataset="synthetic", root=synthetic_root, estimator="synthetic", shard_size=50,
                           options={"drop_part": 0.5, "seed": 7})
    run_precompute(cfg)
    store = DSAPStore(store_dir(synthetic_root, "synthetic", "synthetic"))
    est = label_map_estimator("synthetic", synthetic_root / "synthetic", store.settings, {})
    assert (est.drop_part, est.seed) == (0.5, 7)
    checked = 0
    for key in store.keys:
        if not store.found(key):
            continue
        path = synthetic_root / "synthetic" / key
        labels = _label_map(est, read_image(path), path, key)
        drawn = {int(p) for p in np.unique(labels) if p > 0}
        written = {p + 1 for p in range(24) if store.get_written(key)[p].any()}
        assert drawn == written, key
        checked += 1
    assert checked > 0
    # explicit options override the store's, and a wrong one is the user's to fix
    assert label_map_estimator("synthetic", synthetic_root / "synthetic", store.settings, {"seed": 1}).seed == 1
    with pytest.raises(Exception, match="has no option bogus"):
        label_map_estimator("synthetic", synthetic_root / "synthetic", store.settings, {"bogus": 1})


def test_inspect_never_unpickles_a_file_named_by_the_store(tmp_path):
    """A manifest may come from anyone: a dump= (pickle) named in its settings is not loaded for label maps."""
    import pickle

    from precompute.inspect import label_map_estimator

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    dump = tmp_path / "dump.pkl"
    dump.write_bytes(pickle.dumps([Evil()]))
    est = label_map_estimator("iuv", tmp_path, {"dump": str(dump), "missing": "not-found"}, {})
    assert est is not None and est.dump_path is None and est.missing == "not-found"
    assert not marker.exists()
