"""``evaluate search``: a folder of synthetic crops with scrambled names (no pid, no camera) ranked for query
images; the ranking equals a direct computation, the gallery cache is reused and invalidated, and the
CSV / JSON / pictures agree."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_tiny_run


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """gallery/: the synthetic gallery crops renamed to hashes (some in a sub-folder); query/: two query crops
    renamed, one of them a byte copy of a gallery crop (its copy must come first, at distance 0)."""
    from data.datasets import build_dataset
    from data.synthetic import generate

    base = tmp_path_factory.mktemp("crops")
    generate(base / "synthetic", num_ids=6, num_cameras=2, seed=0, preview=False, workers=1, progress=False)
    ds = build_dataset("synthetic", base)
    gallery, query = base / "gallery", base / "query"
    names = {}
    for i, it in enumerate(ds.gallery):
        scrambled = hashlib.sha1(it.key.encode()).hexdigest()[:10] + ".jpg"
        dest = gallery / ("more" if i % 3 == 0 else "") / scrambled
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ds.root / it.key, dest)
        names[dest.relative_to(gallery).as_posix()] = it.key
    query.mkdir()
    twin = sorted(names)[1]
    shutil.copyfile(gallery / twin, query / "a.jpg")
    shutil.copyfile(ds.root / ds.query[0].key, query / "b.jpg")
    write_tiny_run(base / "runs" / "r")
    return {"base": base, "gallery": gallery, "query": query, "twin": Path(twin), "run": base / "runs" / "r"}


def invoke(*args: str):
    from evaluate.__main__ import cli

    return CliRunner().invoke(cli, ["search", *args])


def test_search_ranks_scrambled_crops_and_writes_csv_json_pictures(crops, tmp_path: Path) -> None:
    from evaluate.api import ReidModel, rank
    from evaluate.search import list_images

    out = tmp_path / "out"
    res = invoke("--run", str(crops["run"]), "--query", str(crops["query"]), "--gallery", str(crops["gallery"]),
                 "--top", "5", "--out", str(out), "--device", "cpu")
    assert res.exit_code == 0, res.output
    record = json.loads((out / "ranking.json").read_text())
    assert record["num_gallery"] == len(list_images(crops["gallery"])[1]) and not record["gallery_cached"]
    q_a, q_b = record["queries"]
    assert [r["rank"] for r in q_a["results"]] == [1, 2, 3, 4, 5]
    assert q_a["results"][0]["file"] == crops["twin"].as_posix() and q_a["results"][0]["distance"] < 1e-5
    for q in record["queries"]:
        d = [r["distance"] for r in q["results"]]
        assert d == sorted(d) and len(set(r["file"] for r in q["results"])) == 5
    # the same ranking, computed directly with the Python API
    model = ReidModel.from_run(crops["run"], device="cpu")
    folder, names = list_images(crops["gallery"])
    g = model.extract(names, root=folder)
    q = model.extract(["a.jpg", "b.jpg"], root=crops["query"])
    idx, dist = rank(q, g, top_k=5)
    assert [[r["file"] for r in qq["results"]] for qq in record["queries"]] == [[names[j] for j in row] for row in idx]
    np.testing.assert_allclose([[r["distance"] for r in qq["results"]] for qq in record["queries"]], dist, atol=1e-5)
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert len(rows) == 10 and rows[0]["gallery"] == crops["twin"].as_posix() and rows[5]["rank"] == "1"
    pictures = sorted((out / "pictures").glob("*.png"))
    assert [p.name for p in pictures] == ["000-a.png", "001-b.png"]
    import cv2

    strip = cv2.imread(str(pictures[0]))
    assert strip is not None and strip.shape[1] > 5 * 64  # query + 5 tiles


def test_gallery_cache_is_reused_and_invalidated(crops, tmp_path: Path) -> None:
    from evaluate.api import ReidModel

    model = ReidModel.from_run(crops["run"], device="cpu")
    cache = tmp_path / "cache"
    gallery = tmp_path / "gallery"
    shutil.copytree(crops["gallery"], gallery)
    first = model.search(crops["query"] / "b.jpg", gallery, top=3, cache_dir=cache, progress=False)
    second = model.search(crops["query"] / "b.jpg", gallery, top=3, cache_dir=cache, progress=False)
    assert not first["gallery_cached"] and second["gallery_cached"]
    assert first["queries"] == second["queries"] and len(list(cache.glob("*.h5"))) == 1
    shutil.copyfile(crops["query"] / "a.jpg", gallery / "new.jpg")  # the folder changed: recomputed
    third = model.search(crops["query"] / "b.jpg", gallery, top=3, cache_dir=cache, progress=False)
    assert not third["gallery_cached"] and third["num_gallery"] == first["num_gallery"] + 1
    p = gallery / "new.jpg"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))  # a touched file: recomputed
    assert not model.search(p, gallery, top=3, cache_dir=cache, progress=False)["gallery_cached"]
    other = tmp_path / "other"
    write_tiny_run(other, seed=5)  # another checkpoint: its own features
    m2 = ReidModel.from_run(other, device="cpu")
    assert not m2.search(p, gallery, top=3, cache_dir=cache, progress=False)["gallery_cached"]
    # a query inside the gallery is not its own answer
    rec = model.search(p, gallery, top=3, cache_dir=cache, progress=False)
    assert "new.jpg" not in [r["file"] for r in rec["queries"][0]["results"]]


def test_search_errors_are_sentences(crops, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for args, message in [
        (["--gallery", str(tmp_path / "empty")], "holds no images"),
        (["--gallery", str(tmp_path / "nowhere")], "There is no gallery image or folder"),
        (["--gallery", str(crops["query"] / "a.jpg")], "must be a folder of images"),
    ]:
        res = invoke("--run", str(crops["run"]), "--query", str(crops["query"]), "--device", "cpu",
                     "--out", str(tmp_path / "o"), *args)
        assert res.exit_code == 2 and res.output.startswith("error: ") and message in res.output, res.output


def test_search_with_an_index_ranks_like_the_exact_search(crops, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    args = ["--run", str(crops["run"]), "--query", str(crops["query"]), "--gallery", str(crops["gallery"]),
            "--top", "4", "--device", "cpu", "--no-pictures"]
    exact = invoke(*args, "--out", str(tmp_path / "exact"))
    flat = invoke(*args, "--out", str(tmp_path / "flat"), "--index", "flat")
    assert exact.exit_code == 0 and flat.exit_code == 0, flat.output
    a, b = (json.loads((tmp_path / d / "ranking.json").read_text()) for d in ("exact", "flat"))
    assert b["index"] == "flat" and a["index"] == "exact"
    assert [[r["file"] for r in q["results"]] for q in a["queries"]] == \
        [[r["file"] for r in q["results"]] for q in b["queries"]]
    assert len(list((crops["run"] / "search-cache").glob("*-flat-cosine-*.faiss"))) == 1
    again = invoke(*args, "--out", str(tmp_path / "again"), "--index", "ivf", "--nprobe", "64", "--max-memory", "64M")
    assert again.exit_code == 0 and "ivf index" in again.output, again.output
