"""Several datasets at once: a union's spec and configuration, identities and cameras kept apart, each item read
from its own dataset's store, provenance and exact resume, evaluation on several sets in one table.

The end-to-end tests run the real command-line programs (precompute, train with the `tiny` preset, evaluate,
compare) on the two disjoint halves of a small synthetic set.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

A, B = "synthetic:ids=first", "synthetic:ids=second"
UNION = f"{A}+{B}"


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic set of 16 people (4 training identities in each half) and the DSAP store of each half, made by
    `python -m precompute run --dataset A+B`."""
    from data.synthetic import generate
    from precompute.__main__ import cli

    root = tmp_path_factory.mktemp("union")
    generate(root / "synthetic", num_ids=16, num_cameras=2, seed=1, preview=False, workers=1, progress=False)
    result = CliRunner().invoke(cli, ["run", "--dataset", UNION, "--root", str(root), "--estimator", "synthetic"])
    assert result.exit_code == 0, result.output
    return root


def train(root: Path, runs: Path, run: str, *extra: str, dataset: str | None = UNION):
    from train.__main__ import main

    args = [*(["--dataset", dataset] if dataset else []), "--root", str(root), "--preset", "tiny", "--run", run,
            "--runs-dir", str(runs), "--workers", "0", "--device", "cpu", "--threads", "1", "--log-every", "1",
            *extra]
    return CliRunner().invoke(main, args)


def one_sentence(result, *parts: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for part in parts:
        assert part in result.output, result.output


# --------------------------------------------------------------------------- the spec and the configuration
def test_a_plus_splits_only_where_a_registered_dataset_starts() -> None:
    from data.datasets import split_union

    assert split_union("market1501") == ["market1501"]
    assert split_union(UNION) == [A, B]
    assert split_union("market1501+cuhk01:split=3,seed=1+msmt17") == ["market1501", "cuhk01:split=3,seed=1", "msmt17"]
    pattern = r"folder:pattern=id(?P<pid>\d+)_c(?P<camid>\d+)"
    assert split_union(pattern) == [pattern]  # the regex's + stays in its spec
    assert split_union(f"market1501+{pattern}") == ["market1501", pattern]
    assert split_union([A, f"{B}+market1501"]) == [A, B, "market1501"]


def test_a_union_in_a_configuration_file_and_on_the_command_line(tmp_path: Path) -> None:
    from dsa.config import ConfigError, load_config
    from train.run import RunOptions, resolve

    path = tmp_path / "union.yaml"
    path.write_text(f"_base_: tiny\ndata:\n  dataset: [{A}, {B}]\n  tag: [null, s16]\n")
    cfg = load_config(path)
    assert cfg.data.datasets == (A, B) and cfg.data.estimators == ("synthetic", "synthetic")
    assert cfg.data.tags == (None, "s16") and cfg.data.is_union
    assert cfg.to_dict()["data"] == {"dataset": [A, B], "estimator": "synthetic", "tag": [None, "s16"],
                                     "input": "dsap", "balance": "none", "min_found": 0.5}
    # A+B, --set and a repeated --dataset name the same union; per-dataset values equal to one value are one value
    for aliases, overrides in ((({"dataset": UNION, "tag": "none+s16"}), ()),
                               ({}, (f"data.dataset={UNION}", "data.tag=none+s16", "data.estimator=synthetic+synthetic"))):
        assert resolve(RunOptions("r", config="tiny", aliases=aliases, overrides=overrides)).data == cfg.data
    single = resolve(RunOptions("r", config="tiny", aliases={"dataset": A}))
    assert single.to_dict()["data"] == {"dataset": A, "estimator": "synthetic", "tag": None, "input": "dsap",
                                        "balance": "none", "min_found": 0.5}  # a single dataset's record is what it always was
    with pytest.raises(ConfigError, match=r"data.estimator gives 3 values \(a, b, c\) for the 2 datasets"):
        resolve(RunOptions("r", config="tiny", aliases={"dataset": UNION, "estimator": "a+b+c"}))
    with pytest.raises(ConfigError, match="names synthetic:ids=first more than once"):
        resolve(RunOptions("r", config="tiny", aliases={"dataset": f"{A}+{A}"}))


def test_print_config_shows_the_union_as_a_list() -> None:
    import yaml

    from train.__main__ import main

    out = CliRunner().invoke(main, ["--preset", "tiny", "--dataset", A, "--dataset", B, "--estimator", "synthetic",
                                    "--print-config"])
    assert out.exit_code == 0, out.output
    assert yaml.safe_load(out.output)["data"]["dataset"] == [A, B]


# --------------------------------------------------------------------------- identities, cameras, stores
def test_the_identities_and_cameras_of_two_datasets_never_collide(halves: Path) -> None:
    from data.datasets import build_dataset
    from data.joint import build_train_data
    from dsa.config import get_preset
    from train.run import RunOptions, resolve

    cfg = resolve(RunOptions("r", config="tiny", aliases={"dataset": UNION}))
    batches, union, stores = build_train_data(cfg, halves)
    first, second = (build_dataset(s, halves) for s in (A, B))
    a, b = union.members
    assert (a.pid_offset, b.pid_offset) == (0, first.num_train_pids)
    assert (a.camid_offset, b.camid_offset) == (0, 2) and a.num_cameras == b.num_cameras == 2
    assert union.num_train_pids == first.num_train_pids + second.num_train_pids == 8
    assert len(union.train) == len(first.train) + len(second.train)
    ids = [{it.pid for it, m in zip(union.train, union.member_of) if m == k} for k in (0, 1)]
    cams = [{it.camid for it, m in zip(union.train, union.member_of) if m == k} for k in (0, 1)]
    assert ids[0] == set(range(4)) and ids[1] == set(range(4, 8)) and not ids[0] & ids[1]
    assert cams[0] == {0, 1} and cams[1] == {2, 3}
    # both halves share pids 0..3 and cameras 0..1 on their own: the offsets are what keep them apart
    assert {it.pid for it in first.train} == {it.pid for it in second.train} == set(range(4))
    # every item is read from its own dataset's folder and store, with its offset label
    joint = batches.dataset
    assert [s.store.folder for s in joint.sources] == [s.folder for s in stores] and stores[0].folder != stores[1].folder
    for index in (0, len(first.train)):
        item, own = joint.items[index], union.members[joint.source_of[index]]
        raw = next(it for it in own.dataset.train if it.key == item.key)
        got = joint[index]
        assert got["pid"] == raw.pid + own.pid_offset and got["camid"] == raw.camid + own.camid_offset
        assert item.key in joint.source(index).store and (joint.source(index).root / item.key).is_file()
    # a step's batch mixes the two datasets, and its DSAP images are each item's own store's
    batch = next(iter(batches.epoch(0)))
    assert len({joint.source_of[i] for i in batch["index"].tolist()}) == 2
    for j, i in enumerate(batch["index"].tolist()):
        stored = torch.from_numpy(joint.source(i).store.get(joint.items[i].key))
        assert torch.equal(batch["dsap"][j], stored) or bool(batch["flipped"][j])
    assert get_preset("tiny").recipe.batch_p * get_preset("tiny").recipe.batch_k == batch["pid"].numel()


class Store(dict):
    """A store in memory: key -> DSAP images."""

    def check_covers(self, keys) -> None:
        assert set(keys) <= set(self)

    def get(self, key: str):
        return self[key]


def test_each_item_is_read_from_its_own_store_and_mirrored_by_its_own_estimators_charts(tmp_path: Path) -> None:
    """Two datasets with the same file names, stores by estimators of other chart conventions: an item's
    image and DSAP images come from its own dataset, and a mirrored item's DSAP images are mirrored by its
    own estimator's convention, in the worker as in the training process."""
    import cv2
    import numpy as np
    from torch.utils.data import DataLoader

    from data.datasets import Item
    from data.joint import JointDataset, Source
    from data.sampler import PKSampler, SeededBatches
    from data.transforms import build_train_transform
    from dsa.parts import flip_dsap

    rng = np.random.default_rng(0)
    sources, items, source_of = [], [], []
    for s, convention in enumerate(("synthetic", "densepose")):
        folder = tmp_path / f"set{s}"
        folder.mkdir()
        store = Store()
        for k in range(4):
            cv2.imwrite(str(folder / f"img{k}.png"), np.full((40, 20, 3), 50 * s + 10 * k, np.uint8))
            store[f"img{k}.png"] = rng.integers(0, 256, (24, 3, 8, 8), dtype=np.uint8)
            items.append(Item(f"img{k}.png", 2 * s + k // 2, s))
            source_of.append(s)
        sources.append(Source(folder, store, convention))
    transform = build_train_transform(32, 16, flip_p=0.5, erasing_p=0.0, pad=0)
    seen = set()
    for reader in ("worker", "main"):
        ds = JointDataset(items, None, None, transform, dsap_reader=reader, sources=sources, source_of=source_of)
        for seed in range(6):
            for b in DataLoader(ds, batch_sampler=SeededBatches(PKSampler(ds.pids, 4, 2, seed=seed))):
                b = ds.read_dsap(b)
                for j, (i, f) in enumerate(zip(b["index"].tolist(), b["flipped"].tolist())):
                    source = sources[source_of[i]]
                    stored = source.store[items[i].key]
                    want = flip_dsap(stored, source.flip) if f else stored
                    assert np.array_equal(b["dsap"][j].numpy(), want)
                    assert sorted(set(b["image"][j].flatten().tolist())) == [50 * source_of[i] + 10 * (i % 4)]
                    seen.add((source.flip, f))
    assert seen == {("synthetic", True), ("synthetic", False), ("densepose", True), ("densepose", False)}


def test_balanced_batches_take_an_equal_share_of_each_dataset(halves: Path) -> None:
    from data.joint import build_train_data
    from train.run import RunOptions, resolve

    cfg = resolve(RunOptions("r", config="tiny", aliases={"dataset": UNION}, overrides=("data.balance=datasets",)))
    batches, union, _ = build_train_data(cfg, halves)
    plan = batches.sampler.plan(0)
    assert len(plan)
    for batch in plan:
        members = [union.member_of[i] for i in batch[:, 0].tolist()]
        assert members.count(0) == members.count(1) == cfg.recipe.batch_p // 2


def test_a_missing_store_or_shared_images_are_one_sentence(halves: Path, tmp_path: Path) -> None:
    one_sentence(train(halves, tmp_path, "r", "--tag", "none", "--tag", "nowhere"),
                 f"{B} (dataset 2 of the union {UNION}): no DSAP store at", "synthetic-nowhere")
    one_sentence(train(halves, tmp_path, "r", dataset=f"synthetic+{A}"),
                 f"The datasets synthetic and {A} of the union share", "one person two identities")
    assert not (tmp_path / "r" / "config.json").exists()


# --------------------------------------------------------------------------- training, provenance, resume
@pytest.fixture(scope="module")
def runs(halves: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two steps of a union run (``union``) and of a run on the second half alone (``single``)."""
    folder = tmp_path_factory.mktemp("runs")
    for run, dataset in (("union", UNION), ("single", B)):
        result = train(halves, folder, run, "--max-steps", "2", dataset=dataset)
        assert result.exit_code == 0, result.output
    return folder


def evaluate(*args: str):
    from evaluate.__main__ import cli

    return CliRunner().invoke(cli, list(args))


def test_a_union_run_records_every_dataset_and_store(runs: Path) -> None:
    config = json.loads((runs / "union" / "config.json").read_text())
    assert config["data"]["dataset"] == [A, B] and config["num_classes"] == 8
    records = config["datasets"]
    assert [r["dataset"] for r in records] == [A, B] and [r["pid_offset"] for r in records] == [0, 4]
    assert [r["camid_offset"] for r in records] == [0, 2] and [r["num_train_pids"] for r in records] == [4, 4]
    assert all(len(r["store_sha256"]) == len(r["store_fingerprint"]) == len(r["train_fingerprint"]) == 64
               for r in records)
    assert records[0]["store"] != records[1]["store"] and config["runtime"]["store"] == [r["store"] for r in records]
    assert records[0]["train_fingerprint"] != records[1]["train_fingerprint"]


def test_one_command_evaluates_on_both_sets_into_one_table_that_compare_reads(halves: Path, runs: Path) -> None:
    from data.names import dataset_dirname

    common = ["--runs-dir", str(runs), "--root", str(halves), "--device", "cpu", "--queries", "0"]
    out = evaluate("run", "--run", "union", *common)  # a union run: its datasets by default
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    table = lines[next(i for i, line in enumerate(lines) if "rank1" in line) + 1:]
    assert table[0].startswith(A) and table[1].startswith(B), out.output
    assert table[2].startswith("note: union is a checkpoint of an unfinished run") and len(table) == 3, out.output
    sets = json.loads(next((runs / "union" / "eval").glob("*+*+*/sets.json")).read_text())
    assert sets["datasets"] == [A, B] and [s["dataset"] for s in sets["sets"]] == [A, B]
    for spec, s in zip((A, B), sets["sets"]):  # each set's features in its own folder
        assert Path(s["features_file"]) == runs / "union" / "eval" / dataset_dirname(spec) / "features.h5"
        assert Path(s["features_file"]).is_file() and "cmc" in s
    both = evaluate("run", "--run", "single", "--dataset", UNION, "--json", *common)
    assert both.exit_code == 0 and [m["dataset"] for m in json.loads(both.stdout)] == [A, B], both.output
    # make compare reads the tables: a row per run and set
    cmp = evaluate("compare", "union", "single", "--dataset", UNION, "--runs-dir", str(runs))
    assert cmp.exit_code == 0, cmp.output
    rows = [line.split()[0:3] for line in cmp.output.splitlines()[1:5]]
    assert rows == [["union", "on", A], ["single", "on", A], ["union", "on", B], ["single", "on", B]], cmp.output
    one_sentence(evaluate("compare", "union", "--dataset", f"{B}+{A}", "--runs-dir", str(runs)),
                 "No evaluation of run 'union' on the sets", f"DATASET={B}+{A}")


def test_fused_features_read_the_sets_own_store_and_init_from_a_union_run(halves: Path, runs: Path,
                                                                          tmp_path: Path) -> None:
    fused = evaluate("run", "--run", "union", "--runs-dir", str(runs), "--root", str(halves), "--dataset", B,
                     "--feature-set", "fused", "--device", "cpu", "--queries", "0")
    assert fused.exit_code == 0, fused.output
    # --init from a union run works as from any run
    ft = train(halves, tmp_path, "ft", "--max-steps", "1", "--init", str(runs / "union"), dataset=B)
    assert ft.exit_code == 0, ft.output
    record = json.loads((tmp_path / "ft" / "config.json").read_text())["init_source"]
    assert record["dataset"] == UNION and record["copied"] == ["mf", "dsag"] and record["num_classes"] == 8


def test_resume_of_a_union_run_is_bit_identical(halves: Path, tmp_path: Path) -> None:
    from data.runs import load_checkpoint

    straight = train(halves, tmp_path, "a", "--deterministic")
    assert straight.exit_code == 0, straight.output
    total = load_checkpoint(tmp_path / "a" / "checkpoint.pt").info.step
    half = total // 2 + 1  # mid-epoch
    stopped = train(halves, tmp_path, "b", "--deterministic", "--max-steps", str(half))
    assert stopped.exit_code == 0 and load_checkpoint(tmp_path / "b" / "checkpoint.pt").info.step == half
    torch.manual_seed(1234)  # the resumed process starts from other random states
    resumed = train(halves, tmp_path, "b", "--deterministic")
    assert resumed.exit_code == 0, resumed.output
    a, b = (load_checkpoint(tmp_path / r / "checkpoint.pt") for r in "ab")
    assert a.info.step == b.info.step == total and a.info.complete and b.info.complete
    assert a.model_state.keys() == b.model_state.keys()
    for k in a.model_state:
        assert torch.equal(a.model_state[k], b.model_state[k]), k
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / r / "log.jsonl").read_text().splitlines())
               if "event" not in r] for r in "ab"]
    assert losses[0] == losses[1] and len(losses[0]) == total


def test_resume_with_another_union_or_store_is_refused_naming_it(halves: Path, tmp_path: Path) -> None:
    from precompute.__main__ import cli as precompute

    assert train(halves, tmp_path, "r", "--max-steps", "1").exit_code == 0
    one_sentence(train(halves, tmp_path, "r", "--max-steps", "2", dataset=f"{B}+{A}"),
                 f"data.dataset (saved ['{A}', '{B}'], now ['{B}', '{A}'])")
    one_sentence(train(halves, tmp_path, "r", "--max-steps", "2", dataset=A), "data.dataset (saved")
    # the store of one dataset computed again with other settings: the run names that dataset and its store
    redo = CliRunner().invoke(precompute, ["run", "--dataset", B, "--root", str(halves), "--estimator", "synthetic",
                                           "--tag", "redo"])
    assert redo.exit_code == 0, redo.output
    second = Path(json.loads((tmp_path / "r" / "config.json").read_text())["datasets"][1]["store"])
    backup = second.parent / "synthetic-before"
    second.rename(backup)
    (second.parent / "synthetic-redo").rename(second)
    try:
        again = CliRunner().invoke(precompute, ["run", "--dataset", B, "--root", str(halves), "--estimator",
                                                "synthetic", "--force", "-o", "miss=0.5"])
        assert again.exit_code == 0, again.output
        one_sentence(train(halves, tmp_path, "r", "--max-steps", "2"),
                     f"the dataset '{B}': store_sha256 (saved '")
    finally:
        import shutil

        shutil.rmtree(second)
        backup.rename(second)
    assert train(halves, tmp_path, "r", "--max-steps", "2").exit_code == 0  # the same union and stores resume


def test_runs_of_earlier_versions_resume_without_the_new_records(halves: Path, tmp_path: Path) -> None:
    """config.json of a run started before unions existed has no data.balance and no datasets record."""
    assert train(halves, tmp_path, "r", "--max-steps", "1", dataset=A).exit_code == 0
    path = tmp_path / "r" / "config.json"
    old = json.loads(path.read_text())
    del old["data"]["balance"], old["datasets"]
    path.write_text(json.dumps(old))
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    ckpt["config"] = old
    torch.save(ckpt, tmp_path / "r" / "checkpoint.pt")
    result = train(halves, tmp_path, "r", "--max-steps", "2", dataset=A)
    assert result.exit_code == 0, result.output
