"""Dataset adapters and ``python -m data stats`` on fabricated folder trees (and the real cuhk03-p1 subset)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from conftest import SHARED_DATA, write_tiny_image
from data.cli import cli
from data.datasets import DATASETS, DatasetError, Item, ReidDataset, build_dataset
from data.io import read_image


def split_counts(ds: ReidDataset) -> dict[str, tuple[int, int, int]]:
    return {s: (v["ids"], v["images"], v["cameras"]) for s, v in ds.stats()["splits"].items()}


def pids(items: list[Item]) -> set[int]:
    return {it.pid for it in items}


# --------------------------------------------------------------------------------------------- base
def test_registry_names() -> None:
    assert set(DATASETS) == {"market1501", "dukemtmcreid", "cuhk03-labeled", "cuhk03-detected", "cuhk01",
                             "msmt17", "folder", "synthetic"}


def test_base_relabels_train_and_dedups_all_items() -> None:
    ds = ReidDataset("/x", [("t/a.jpg", 42, 0), ("t/b.jpg", 7, 1), ("t/c.jpg", 42, 1)],
                     [("q/a.jpg", 3, 0)], [("g/a.jpg", 3, 1), ("q/a.jpg", 3, 0)], name="toy")
    assert [it.pid for it in ds.train] == [1, 0, 1]  # sorted original pids 7, 42 → 0, 1
    assert ds.train_pid_map == {7: 0, 42: 1} and ds.num_train_pids == 2
    assert [it.key for it in ds.all_items()] == ["g/a.jpg", "q/a.jpg", "t/a.jpg", "t/b.jpg", "t/c.jpg"]
    with pytest.raises(DatasetError, match="no query images"):
        ReidDataset("/x", [("a.jpg", 1, 0)], [], [("b.jpg", 1, 0)])
    with pytest.raises(DatasetError, match="relative"):
        ReidDataset("/x", [("/abs/a.jpg", 1, 0)], [("q.jpg", 1, 0)], [("b.jpg", 1, 0)])


# ------------------------------------------------------------------------------------------- market
def test_market_counts_junk_distractors_relabel(market_tree: Path) -> None:
    ds = build_dataset("market1501", market_tree.parent)  # ROOT/market1501
    assert ds.root == market_tree and ds.protocol == "market"
    assert split_counts(ds) == {"train": (3, 6, 2), "query": (2, 2, 1), "gallery": (3, 5, 3)}
    assert pids(ds.train) == {0, 1, 2} and ds.train_pid_map == {1: 0, 2: 1, 5: 2}
    assert pids(ds.query) == {7, 9} and pids(ds.gallery) == {0, 7, 9}  # pid 0 distractors stay in gallery
    assert all(it.pid != -1 for it in ds.all_items())
    assert {it.camid for it in ds.gallery} == {0, 1, 2}  # c1..c3 → 0..2
    assert ds.train[0] == Item("bounding_box_train/0001_c1s1_000001_00.jpg", 0, 0)
    assert all(not Path(it.key).is_absolute() and (ds.root / it.key).is_file() for it in ds.all_items())


@pytest.mark.parametrize("sub", ["market1501/Market-1501-v15.09.15", "Market-1501-v15.09.15", "market1501", ""])
def test_market_folder_variants(tmp_path: Path, market_tree: Path, sub: str) -> None:
    target = tmp_path / "root" / sub
    target.parent.mkdir(parents=True, exist_ok=True)
    market_tree.rename(target) if sub else market_tree.rename(tmp_path / "root")
    ds = build_dataset("market1501", tmp_path / "root")
    assert ds.root == (tmp_path / "root" / sub if sub else tmp_path / "root") and len(ds.train) == 6


def test_duke_layout_and_camera_limit(tmp_path: Path, make_images) -> None:
    folder = tmp_path / "dukemtmc-reid" / "DukeMTMC-reID"
    make_images(folder / "bounding_box_train", ["0001_c8_f0001.jpg", "0003_c7_f0002.jpg"])
    make_images(folder / "query", ["0005_c1_f0003.jpg"])
    make_images(folder / "bounding_box_test", ["0005_c2_f0004.jpg", "0099_c3_f0005.jpg"])
    ds = build_dataset("dukemtmcreid", tmp_path)
    assert ds.root == folder and split_counts(ds)["train"] == (2, 2, 2)
    assert {it.camid for it in ds.train} == {6, 7}
    make_images(folder / "query", ["0005_c9_f0006.jpg"])  # Duke has 8 cameras
    with pytest.raises(DatasetError, match=r"outside c1\.\.c8.*0005_c9_f0006"):
        build_dataset("dukemtmcreid", tmp_path)
    with pytest.raises(DatasetError, match=r"outside c1\.\.c6"):
        build_dataset("market1501", folder)  # Market allows c1..c6 only


def test_market_bad_inputs(tmp_path: Path, market_tree: Path, make_images) -> None:
    with pytest.raises(DatasetError, match=r"data root .*nowhere does not exist"):
        build_dataset("market1501", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as err:
        build_dataset("market1501", empty)
    msg = str(err.value)
    assert "Market-1501 layout" in msg and "bounding_box_train/" in msg and str(empty / "market1501") in msg
    make_images(market_tree / "query", ["IMG_1234.jpg", "person.jpg"])
    with pytest.raises(DatasetError, match=r"2 file name\(s\) .*do not match the pattern .*IMG_1234.jpg"):
        build_dataset("market1501", tmp_path)


def test_synthetic_adapter(tmp_path: Path, market_tree: Path) -> None:
    with pytest.raises(DatasetError, match="make synth"):
        build_dataset("synthetic", tmp_path)
    synth = tmp_path / "synthetic"
    market_tree.rename(synth)
    (synth / "synthetic.json").write_text("{}")
    write_tiny_image(synth / "query" / "0007_c1s1_000010_00_IUV.png")  # ground truth beside images is skipped
    ds = build_dataset("synthetic", tmp_path)
    assert ds.name == "synthetic" and ds.root == synth and len(ds.query) == 2
    assert build_dataset("synthetic", synth).root == synth  # ROOT pointing at the folder itself


# ------------------------------------------------------------------------------------------ folder
def test_folder_dataset_custom_pattern(tmp_path: Path, make_images) -> None:
    make_images(tmp_path / "tr", ["a/id3_cam0.png", "a/id3_cam1.png", "b/id8_cam1.png", "id-1_cam0.png"])
    make_images(tmp_path / "q", ["id4_cam0.png"])
    make_images(tmp_path / "g", ["id4_cam1.png", "id5_cam1.png"])
    pattern = r"id(?P<pid>-?\d+)_cam(?P<camid>\d+)"
    ds = build_dataset("folder", tmp_path, pattern=pattern, train_dir="tr", query_dir="q", gallery_dir="g",
                       camid_base="0")
    assert split_counts(ds) == {"train": (2, 3, 2), "query": (1, 1, 1), "gallery": (2, 2, 1)}
    assert ds.train[0] == Item("tr/a/id3_cam0.png", 0, 0)
    make_images(tmp_path / "q", ["frame_001.png"])
    with pytest.raises(DatasetError, match=r"do not match the pattern .*frame_001\.png"):
        build_dataset("folder", tmp_path, pattern=pattern, train_dir="tr", query_dir="q", gallery_dir="g")
    with pytest.raises(DatasetError, match=r"missing train/, query/, gallery/"):
        build_dataset("folder", tmp_path)
    with pytest.raises(DatasetError, match="lacks the named group"):
        build_dataset("folder", tmp_path, pattern=r"(\d+)", train_dir="tr", query_dir="q", gallery_dir="g")
    with pytest.raises(DatasetError, match="not a valid regular expression"):
        build_dataset("folder", tmp_path, pattern=r"(?P<pid", train_dir="tr", query_dir="q", gallery_dir="g")



def test_folder_pattern_groups_that_are_not_numbers(tmp_path: Path, make_images) -> None:
    for d in ("train", "query", "gallery"):
        make_images(tmp_path / d, ["0001_cA_x.jpg"])
    with pytest.raises(DatasetError, match=r"not integers for 1 file\(s\) .*0001_cA_x\.jpg \(pid '0001', camid 'A'\)"):
        build_dataset("folder", tmp_path, pattern=r"(?P<pid>\d+)_c(?P<camid>[A-Z])")
    res = CliRunner().invoke(cli, ["stats", "--dataset", "folder", "--root", str(tmp_path),
                                   "-o", r"pattern=(?P<pid>\d+)_c(?P<camid>[A-Z])"])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "Traceback" not in res.output

def test_build_dataset_rejects_unknown_names_and_options(market_tree: Path) -> None:
    with pytest.raises(DatasetError, match="Unknown dataset 'market'; choose one of: market1501"):
        build_dataset("market", market_tree)
    with pytest.raises(DatasetError, match="no option split; it accepts: val_ids, val_seed"):
        build_dataset("market1501", market_tree, split=1)
    with pytest.raises(DatasetError, match="must be an integer"):
        build_dataset("cuhk01", market_tree, split="abc")


# ------------------------------------------------------------------------------------------- cuhk01
def make_cuhk01(root: Path, num_ids: int) -> Path:
    for p in range(1, num_ids + 1):
        for k in range(1, 5):
            write_tiny_image(root / "cuhk01" / "campus" / f"{p:04d}{k:03d}.png", value=p)
    return root / "cuhk01"


def test_cuhk01_single_shot_protocol(tmp_path: Path) -> None:
    folder = make_cuhk01(tmp_path, 20)
    ds = build_dataset("cuhk01", tmp_path, num_train_ids=10, seed=3)
    assert ds.protocol == "cuhk01-single-shot" and ds.root == folder
    assert split_counts(ds) == {"train": (10, 40, 2), "query": (10, 20, 1), "gallery": (10, 10, 1)}
    assert {it.camid for it in ds.query} == {0} and {it.camid for it in ds.gallery} == {1}
    assert pids(ds.query) == pids(ds.gallery) and len(pids(ds.query) & set(ds.train_pid_map)) == 0
    assert all(int(Path(it.key).stem[4:]) in (3, 4) for it in ds.gallery)
    again = build_dataset("cuhk01", folder, num_train_ids="10", seed="3")  # same seed → same split
    assert again.train == ds.train and again.gallery == ds.gallery
    other = build_dataset("cuhk01", tmp_path, num_train_ids=10, seed=3, split=1)
    assert set(other.train_pid_map) != set(ds.train_pid_map)
    spec = build_dataset("cuhk01:num_train_ids=10,seed=3,split=1", tmp_path)  # options in the name
    assert spec.train == other.train and spec.gallery == other.gallery
    assert build_dataset("cuhk01:split=1", tmp_path, num_train_ids=10, seed=3).train == other.train
    with pytest.raises(DatasetError, match="key=value"):
        build_dataset("cuhk01:split", tmp_path)
    write_tiny_image(folder / "campus" / "img_1.png")
    with pytest.raises(DatasetError, match="not NNNNKKK.png"):
        build_dataset("cuhk01", tmp_path)


# ------------------------------------------------------------------------------------------- msmt17
def make_msmt(folder: Path, train_dir: str, test_dir: str) -> None:
    lists = {
        "list_train.txt": (train_dir, [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                                       ("0000/0000_001_05_0303morning_0016_0.jpg", 0),
                                       ("0001/0001_000_15_0303noon_0001_0.jpg", 1)]),
        "list_val.txt": (train_dir, [("0002/0002_000_03_0303noon_0002_0.jpg", 2)]),
        "list_query.txt": (test_dir, [("0000/0000_000_02_0303morning_0001_0.jpg", 0)]),
        "list_gallery.txt": (test_dir, [("0000/0000_001_07_0303morning_0002_0.jpg", 0),
                                        ("0001/0001_000_08_0303noon_0003_0.jpg", 1)]),
    }
    for name, (sub, rows) in lists.items():
        for rel, _ in rows:
            write_tiny_image(folder / sub / rel)
        (folder / name).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows))


@pytest.mark.parametrize("version, train_dir, test_dir", [("MSMT17_V1", "train", "test"),
                                                          ("MSMT17_V2", "mask_train_v2", "mask_test_v2")])
def test_msmt17_versions(tmp_path: Path, version: str, train_dir: str, test_dir: str) -> None:
    folder = tmp_path / "msmt17" / version
    make_msmt(folder, train_dir, test_dir)
    ds = build_dataset("msmt17", tmp_path)
    assert ds.root == folder
    assert split_counts(ds) == {"train": (3, 4, 4), "query": (1, 1, 1), "gallery": (2, 2, 2)}
    assert ds.train[0] == Item(f"{train_dir}/0000/0000_000_01_0303morning_0015_0.jpg", 0, 0)
    assert {it.camid for it in ds.train} == {0, 4, 14, 2}
    assert all((folder / it.key).is_file() for it in ds.all_items())
    (folder / "list_query.txt").write_text("garbage line here\n")
    with pytest.raises(DatasetError, match=r"list_query.txt line 1"):
        build_dataset("msmt17", folder)
    (folder / "list_query.txt").write_bytes(b"\xff\xfe0000/0000_000_02_x.jpg 0\n")  # UTF-16 BOM: not UTF-8
    with pytest.raises(DatasetError, match=r"list_query.txt cannot be read as UTF-8"):
        build_dataset("msmt17", folder)
    with pytest.raises(DatasetError, match="No MSMT17 layout"):
        build_dataset("msmt17", tmp_path / "msmt17" / version / train_dir)


# ------------------------------------------------------------------------------------------- cuhk03
CUHK03_IDS = [3, 2]  # ids per camera pair (the real file has 5 pairs, 1467 ids)


def cuhk03_image(pair: int, pid: int, idx: int) -> np.ndarray:
    """A distinctive H×W×3 image (H ≠ W, so a missing transpose is caught)."""
    img = np.zeros((6 + idx % 3, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = pair * 50 + 10, pid * 40 + 5, idx * 20
    img[0, 0] = (255, 255, 0)
    return img


def make_cuhk03(root: Path) -> Path:
    """A small MATLAB-v7.3-style cuhk-03.mat (object references into #refs#, arrays transposed) + splits."""
    folder = root / "cuhk03"
    (folder / "cuhk03_release").mkdir(parents=True)
    with h5py.File(folder / "cuhk03_release" / "cuhk-03.mat", "w") as f:
        counter = iter(range(10 ** 6))

        def put(arr: np.ndarray, empty: bool = False):
            ds = f.create_dataset(f"#refs#/{next(counter)}", data=arr)
            if empty:
                ds.attrs["MATLAB_empty"] = 1
            return ds.ref

        for kind in ("labeled", "detected"):
            pair_refs = []
            for pair, n in enumerate(CUHK03_IDS):
                cell = np.empty((10, n), dtype=h5py.ref_dtype)  # MATLAB n×10, stored transposed
                for pid in range(n):
                    for idx in range(10):
                        missing = pair == 0 and pid == 2 and idx >= 8  # an id with only 8 images
                        cell[idx, pid] = put(np.zeros(2, np.uint64), True) if missing else put(cuhk03_image(pair, pid, idx).T)
                pair_refs.append(put(cell))
            f.create_dataset(kind, data=np.array([pair_refs], dtype=h5py.ref_dtype))  # MATLAB 5×1 → (1, 5)
    filelist, labels, cams = [], [], []
    label = 0
    for pair, n in enumerate(CUHK03_IDS):
        for pid in range(n):
            label += 1
            for idx in range(8 if (pair == 0 and pid == 2) else 10):
                filelist.append(f"{pair + 1}_{pid + 1:03d}_{1 if idx < 5 else 2}_{idx + 1:02d}.png")
                labels.append(label)
                cams.append(1 if idx < 5 else 2)
    labels_a = np.array(labels)
    train = np.flatnonzero(labels_a <= 2) + 1  # ids 1, 2 train; 3, 4, 5 test (1-based indices)
    test = np.flatnonzero(labels_a > 2)
    query = [i for i in test if filelist[i].endswith(("_01.png", "_06.png"))]
    gallery = [i for i in test if i not in query]
    for kind in ("labeled", "detected"):
        scipy.io.savemat(folder / f"cuhk03_new_protocol_config_{kind}.mat", {
            "filelist": np.array(filelist, dtype=object).reshape(-1, 1),
            "labels": labels_a.reshape(-1, 1).astype(float),
            "camId": np.array(cams, float).reshape(-1, 1),
            "train_idx": train.reshape(-1, 1).astype(float),
            "query_idx": (np.array(query) + 1).reshape(-1, 1).astype(float),
            "gallery_idx": (np.array(gallery) + 1).reshape(-1, 1).astype(float),
        })
    return folder


@pytest.mark.parametrize("name, kind", [("cuhk03-labeled", "labeled"), ("cuhk03-detected", "detected")])
def test_cuhk03_new_protocol_extracts_once(tmp_path: Path, name: str, kind: str) -> None:
    folder = make_cuhk03(tmp_path)
    ds = build_dataset(name, tmp_path)
    assert ds.root == folder and ds.protocol == "cuhk03-new"
    assert split_counts(ds) == {"train": (2, 20, 2), "query": (3, 6, 2), "gallery": (3, 22, 2)}
    assert pids(ds.train) == {0, 1} and pids(ds.query) == {3, 4, 5}
    extracted = sorted((folder / f"images_{kind}").glob("*.png"))
    assert len(extracted) == 48  # 5 ids × 10 images, minus the 2 empty cells
    item = next(it for it in ds.query if it.key.endswith("2_001_2_06.png"))
    assert item.key == f"images_{kind}/2_001_2_06.png" and item.camid == 1 and item.pid == 4
    np.testing.assert_array_equal(read_image(folder / item.key), cuhk03_image(1, 0, 5))
    # an interrupted extraction (no marker) resumes and restores what is missing
    (folder / f"images_{kind}" / ".complete").unlink()
    (folder / item.key).unlink()
    assert build_dataset(name, tmp_path).query == ds.query and (folder / item.key).is_file()
    # the cache is reused: the .mat is no longer needed once extraction is complete
    (folder / "cuhk03_release" / "cuhk-03.mat").write_bytes(b"gone")
    assert build_dataset(name, folder).train == ds.train


def test_cuhk03_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"CUHK03 layout \(cuhk03_release/cuhk-03.mat and cuhk03_new_protocol_config_labeled"):
        build_dataset("cuhk03-labeled", tmp_path)
    folder = make_cuhk03(tmp_path)
    (folder / "cuhk03_release" / "cuhk-03.mat").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="not a readable MATLAB v7.3"):
        build_dataset("cuhk03-detected", tmp_path)


def test_cuhk03_unwritable_image_folder_is_a_sentence(tmp_path: Path, monkeypatch) -> None:
    import data.datasets.cuhk03 as cuhk03

    folder = make_cuhk03(tmp_path)

    def refuse(path, data):  # what a read-only dataset folder does (the tests run as root: chmod would not stop it)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cuhk03, "atomic_write_bytes", refuse)
    with pytest.raises(DatasetError, match=rf"Cannot extract the CUHK03 labeled images to {folder / 'images_labeled'} "
                                           r"\(Permission denied\)"):
        build_dataset("cuhk03-labeled", tmp_path)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_stats_table_and_json(market_tree: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["stats", "--dataset", "market1501", "--root", str(market_tree.parent)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[1].split() == ["split", "ids", "images", "cameras"]
    assert lines[3].split() == ["train", "3", "6", "2"] and lines[5].split() == ["gallery", "3", "5", "3"]
    res = runner.invoke(cli, ["stats", "--dataset", "market1501", "--root", str(market_tree), "--json"])
    assert json.loads(res.stdout)["splits"]["query"] == {"ids": 2, "images": 2, "cameras": 1}


def test_cli_errors_are_one_sentence_exit_2(tmp_path: Path, market_tree: Path) -> None:
    runner = CliRunner()
    for args in (["--dataset", "market1501", "--root", str(tmp_path / "nowhere")],
                 ["--dataset", "cuhk01", "--root", str(market_tree), "-o", "split"],
                 ["--dataset", "market1501", "--root", str(market_tree), "-o", "seed=1"]):
        res = runner.invoke(cli, ["stats", *args])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
        assert "Traceback" not in res.output



def test_cli_stats_takes_dataset_specs(tmp_path: Path) -> None:
    make_cuhk01(tmp_path, 12)  # DATASET=cuhk01:split=3 works for `make stats` as for every stage
    res = CliRunner().invoke(cli, ["stats", "--dataset", "cuhk01:num_train_ids=5,split=3", "--root", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    expected = build_dataset("cuhk01", tmp_path, num_train_ids=5, split=3)
    assert json.loads(res.stdout)["splits"] == expected.stats()["splits"]
    res = CliRunner().invoke(cli, ["stats", "--dataset", "market", "--root", str(tmp_path)])
    assert res.exit_code == 2 and res.output.startswith("error: Unknown dataset 'market'; choose one of")

def test_cli_check_images_reports_unreadable(market_tree: Path) -> None:
    (market_tree / "query" / "0009_c1s1_000011_00.jpg").write_bytes(b"")
    (market_tree / "bounding_box_test" / "0007_c2s1_000012_00.jpg").write_bytes(b"\xff\xd8garbage" * 20)
    res = CliRunner().invoke(cli, ["stats", "--dataset", "market1501", "--root", str(market_tree),
                                   "--check-images", "--json"])
    assert res.exit_code == 1
    report = json.loads(res.stdout)["check_images"]
    assert report["checked"] == 13 and report["unreadable"] == 2
    reasons = {e["key"]: e["reason"] for e in report["examples"]}
    assert "empty (0 bytes)" in reasons["query/0009_c1s1_000011_00.jpg"]
    assert "not a decodable image" in reasons["bounding_box_test/0007_c2s1_000012_00.jpg"]


def test_cli_synth_is_registered() -> None:
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and "synth" in res.output and "stats" in res.output


# -------------------------------------------------------------------------------------- real data
@pytest.mark.skipif(not (SHARED_DATA / "cuhk03-p1").is_dir(), reason="shared real data not present")
def test_real_cuhk03_p1_through_market_adapter() -> None:
    res = CliRunner().invoke(cli, ["stats", "--dataset", "market1501", "--root", str(SHARED_DATA / "cuhk03-p1"), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert stats["splits"] == {"train": {"ids": 443, "images": 4307, "cameras": 2},
                               "query": {"ids": 400, "images": 800, "cameras": 2},
                               "gallery": {"ids": 400, "images": 3070, "cameras": 2}}
    assert stats["num_train_pids"] == 443


def test_folder_one_folder_per_identity_with_optional_cameras(tmp_path: Path, make_images) -> None:
    """layumi's layout: train/<pid>/*.jpg; cameras from Market names when present, else query 0 / gallery 1."""
    make_images(tmp_path / "train", ["0002/0002_c1s1_000451_03.jpg", "0002/0002_c3s1_000551_01.jpg",
                                     "0007/0007_c2s3_070952_01.jpg", "-1/x.jpg"])
    make_images(tmp_path / "query", ["0010/a.jpg", "0011/b.jpg"])
    make_images(tmp_path / "gallery", ["0010/c.jpg", "0011/d.jpg", "0011/e.jpg", "0000/f.jpg"])
    ds = build_dataset("folder", tmp_path)
    assert ds.train[0] == Item("train/0002/0002_c1s1_000451_03.jpg", 0, 0)
    assert ds.train[1].camid == 2 and ds.num_train_pids == 2  # pid -1 dropped
    assert {it.camid for it in ds.query} == {0} and {it.camid for it in ds.gallery} == {1}
    assert sorted({it.pid for it in ds.gallery}) == [0, 10, 11]
    assert build_dataset("folder:layout=folders", tmp_path).gallery == ds.gallery
    # scored under the Market protocol, the camera-less images still have their matches
    import numpy as np

    from evaluate.metrics import evaluate_distances

    dist = np.array([[0.5, 0.1, 0.9, 0.8], [0.5, 0.9, 0.2, 0.3]])  # gallery order: pids 0, 10, 11, 11
    m = evaluate_distances(dist, [it.pid for it in ds.query], [it.pid for it in ds.gallery],
                           [it.camid for it in ds.query], [it.camid for it in ds.gallery], protocol="market")
    assert m.num_evaluated == 2 and m.cmc[1] == 1.0
    make_images(tmp_path / "query", ["loose.jpg"])  # an image outside any identity folder
    with pytest.raises(DatasetError, match=r"not inside a sub-folder named by an integer pid"):
        build_dataset("folder:layout=folders", tmp_path)
    with pytest.raises(DatasetError, match="layout must be one of auto, names, folders"):
        build_dataset("folder:layout=tree", tmp_path)


def test_folder_names_without_camera_ids(tmp_path: Path, make_images) -> None:
    make_images(tmp_path / "train", ["p1_a.jpg", "p2_b.jpg"])
    make_images(tmp_path / "query", ["p3_a.jpg"])
    make_images(tmp_path / "gallery", ["p3_b.jpg", "p4_c.jpg"])
    ds = build_dataset("folder", tmp_path, pattern=r"p(?P<pid>\d+)_")
    assert ds.query == [Item("query/p3_a.jpg", 3, 0)] and {it.camid for it in ds.gallery} == {1}


def test_no_match_explains_the_same_camera_rule() -> None:
    import numpy as np

    from evaluate.metrics import MetricsError, evaluate_distances

    with pytest.raises(MetricsError, match="same-camera|own camera") as e:
        evaluate_distances(np.zeros((1, 2)), [5], [5, 5], [0], [0, 0], protocol="market")
    assert "data without camera ids" in str(e.value) and "evaluate search" in str(e.value)
