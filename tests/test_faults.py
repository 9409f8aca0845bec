"""Fault injection (issue 10): the store and the runs under real faults.

Each numbered case of the issue, and each traceback it lists, is a test here: a full disk (an ENOSPC
injected through the writers; a real tmpfs in the ``slow`` test, where root can mount one), bit flips
and deleted shards, images changed in place, names and option paths that would climb out of their
folder, an unfinished run's evaluation and a damaged features file, a parent killed while its workers
start, two programs on one store or run, SIGTERM and a killed DataLoader worker, symlink loops,
non-UTF-8 names, empty and refused checkpoints, bad manifests, bad labels in a features file, torn
and duplicate log lines, NaN checkpoints, huge images and images precompute could not read.
The kill tests (SIGKILL then rerun / resume, bit-identical) stay in test_precompute and test_train.
"""
from __future__ import annotations

import builtins
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import test_precompute as tp
import test_train as tt
from test_train import synth_root  # noqa: F401 - the fixture
from data.io import DiskFullError, ImageReadError, LockError, read_image
from data.runs import RunError, RunFolder, dataset_dirname, load_checkpoint
from data.store import MANIFEST_NAME, DSAPStore, StoreError, open_store, store_dir
from evaluate.features import EvaluationError, load_features, save_features
from precompute.runner import _Job, _worker_main
from train.trainer import TrainingError

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
class _FullFile:
    """A file whose writes fail with ENOSPC once ``budget`` bytes are written (a disk filling up)."""

    def __init__(self, fh, budget: int) -> None:
        self._fh, self._budget = fh, budget

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= n
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def disk_full(monkeypatch, module, budget: int = 100) -> None:
    """Make ``open(..., 'w…')`` in ``module`` return files that run out of space after ``budget`` bytes."""
    real = builtins.open

    def fake_open(path, mode="r", *args, **kw):
        fh = real(path, mode, *args, **kw)
        return _FullFile(fh, budget) if any(c in mode for c in "wa") else fh

    monkeypatch.setattr(module, "open", fake_open, raising=False)


def precompute(root: Path, data: Path, **kw) -> dict:
    return tp.run(root, data, **kw)


def store_folder(root: Path) -> Path:
    return store_dir(root, "toy", "fake")


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    tp.make_images(d)
    return d


# --------------------------------------------------------------------------- 1. disk full
def test_disk_full_during_precompute_is_a_sentence_and_never_a_shard(tmp_path, data, monkeypatch):
    import data.store as store_module

    clean = tmp_path / "clean"
    precompute(clean, data)
    disk_full(monkeypatch, store_module, budget=1000)  # a shard is several kB: it cannot be written
    with pytest.raises(DiskFullError, match=r"no space left on device; free some space"):
        precompute(tmp_path / "full", data)
    folder = store_folder(tmp_path / "full")
    assert not list(folder.glob("shard-*.h5")) and not list(folder.glob("*.tmp-*"))
    assert not (folder / MANIFEST_NAME).exists()
    monkeypatch.undo()  # space again: the rerun completes and equals an uninterrupted store
    assert precompute(tmp_path / "full", data)["complete"]
    tp.assert_same_store(store_folder(clean), folder)
    assert DSAPStore(folder).verify(progress=False) == []


def test_disk_full_in_train_and_evaluate_is_a_sentence(tmp_path, monkeypatch):
    import data.io as io_module
    import data.runs as runs_module

    run = RunFolder(tmp_path / "run")
    tt_config = {"preset": "tiny", "variant": "dsa", "num_classes": 2, "model": {}}
    disk_full(monkeypatch, runs_module, budget=10)
    with pytest.raises(DiskFullError, match="cannot write .*checkpoint.pt: no space left on device"):
        run.write_checkpoint(config=tt_config, model_state={"w": torch.zeros(100)}, training={}, epoch=0, step=1,
                             complete=False)
    assert not run.checkpoint_path.exists() and not list(run.path.glob(".checkpoint.pt.tmp-*"))
    with pytest.raises(DiskFullError, match="log.jsonl: no space left"):
        run.append_log({"step": 1, "loss": 1.0})
    import test_evaluate as te

    disk_full(monkeypatch, io_module, budget=10)
    with pytest.raises(DiskFullError, match="features.h5: no space left"):
        save_features(tmp_path / "features.h5", te._features())


TMPFS_DRIVER = """
import sys
from functools import partial
from pathlib import Path
sys.path.insert(0, {here!r})
import test_precompute as tp
from data.console import Command
import click

@click.command(cls=Command)
@click.argument("root")
@click.argument("data")
def main(root, data):
    tp.run(Path(root), Path(data), shard_size=3, compression=None)

main()
"""


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(where)], check=True)
    return ok


@pytest.mark.slow
def test_disk_full_on_a_real_tmpfs(tmp_path, data):
    mnt = tmp_path / "tmpfs"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (not root?): the ENOSPC injection tests cover the writer")
    script = tmp_path / "driver.py"
    script.write_text(TMPFS_DRIVER.format(here=str(Path(__file__).parent)))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(mnt)], check=True)
    try:
        r = subprocess.run([sys.executable, str(script), str(mnt / "root"), str(data)], capture_output=True,
                           text=True, env=env, timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1].startswith("error: cannot write") and "no space left" in r.stderr
        assert "Traceback" not in r.stderr and "__dealloc__" not in r.stderr
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        r = subprocess.run([sys.executable, str(script), str(mnt / "root"), str(data)], capture_output=True,
                           text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        clean = tmp_path / "clean"
        precompute(clean, data, shard_size=3, compression=None)
        tp.assert_same_store(store_folder(clean), store_folder(mnt / "root"))
        assert DSAPStore(store_folder(mnt / "root")).verify(progress=False) == []
    finally:
        subprocess.run(["umount", str(mnt)])


# --------------------------------------------------------------------------- 2. bit flips, missing shards
def flip_byte(path: Path, offset: int | None = None) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2 if offset is None else offset)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))


def test_a_flipped_bit_is_refused_by_readers_and_repaired_by_a_plain_rerun(tmp_path, data):
    precompute(tmp_path / "clean", data)
    precompute(tmp_path, data)
    folder = store_folder(tmp_path)
    flip_byte(folder / "shard-00001.h5")
    with pytest.raises(StoreError, match=r"shard-00001.h5 is damaged .*rerun `make precompute`"):
        open_store(tmp_path, "toy", "fake", size=tp.S)
    summary = precompute(tmp_path, data)  # no --force
    assert not summary["up_to_date"] and summary["computed_images"] == 5 and summary["complete"]
    tp.assert_same_store(store_folder(tmp_path / "clean"), folder)
    open_store(tmp_path, "toy", "fake", size=tp.S).check_checksums()


def test_a_flip_after_opening_is_seen_by_the_next_process(tmp_path, data):
    precompute(tmp_path, data)
    store = open_store(tmp_path, "toy", "fake", size=tp.S)
    key = store.keys[0]
    store.get(key)
    flip_byte(store.folder / "shard-00000.h5")
    import pickle

    worker_copy = pickle.loads(pickle.dumps(store))  # what a DataLoader worker gets
    with pytest.raises(StoreError, match="damaged"):
        worker_copy.get(key)


@pytest.mark.parametrize("damage", ["delete", "rename", "truncate"])
def test_missing_or_truncated_shards_are_recomputed_without_force(tmp_path, data, damage):
    precompute(tmp_path, data)
    shard = store_folder(tmp_path) / "shard-00002.h5"
    if damage == "delete":
        shard.unlink()
    elif damage == "rename":
        shard.rename(shard.with_name("old-shard.h5"))
    else:
        shard.write_bytes(shard.read_bytes()[:100])
    summary = precompute(tmp_path, data)
    assert summary["computed_images"] == 5 and summary["complete"]
    assert DSAPStore(store_folder(tmp_path)).verify(progress=False) == []


# --------------------------------------------------------------------------- 3. images changed in place
def test_images_changed_in_place_are_recomputed_and_refused_by_training_until_then(tmp_path, data):
    precompute(tmp_path, data)
    before = tp.store_arrays(store_folder(tmp_path))
    key = sorted(before)[7]
    img = read_image(data / key)
    import cv2

    st = (data / key).stat()
    cv2.imwrite(str(data / key), cv2.flip(img, 1)[..., ::-1])  # same name, new content
    os.utime(data / key, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    store = DSAPStore(store_folder(tmp_path))
    assert store.stale_keys(data, store.keys) == [key]
    from data.joint import check_store_fits

    class Train:
        root, train = data, [tp.FakeItem(k) for k in store.keys]

    with pytest.raises(StoreError, match=rf"1 training image\(s\) changed since .*{key}.*make precompute"):
        check_store_fits(store, Train)
    summary = precompute(tmp_path, data)  # not "nothing to do": one shard (5 images) is recomputed
    assert not summary["up_to_date"] and summary["computed_images"] == 5
    after = tp.store_arrays(store_folder(tmp_path))
    assert not np.array_equal(after[key][0], before[key][0])
    assert DSAPStore(store_folder(tmp_path)).stale_keys(data, after) == []
    assert precompute(tmp_path, data)["up_to_date"]


def test_a_changed_iuv_side_file_makes_its_image_stale(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a_IUV.png").write_bytes(b"y")
    from data.store import source_signature

    before = source_signature(tmp_path, "a.jpg")
    (tmp_path / "a_IUV.png").write_bytes(b"yy")
    assert source_signature(tmp_path, "a.jpg") != before


# --------------------------------------------------------------------------- 4. names, tags and option paths
@pytest.mark.parametrize("tag", ["../../x", "/../../x", "/abs", "a/b", "..", ".hidden"])
def test_store_tags_are_names(tmp_path, tag):
    with pytest.raises(RunError, match="store tag .* is not a plain name"):
        store_dir(tmp_path, "synthetic", "synthetic", tag)


def test_dataset_specs_with_path_options_never_become_paths(tmp_path):
    name = dataset_dirname("folder:gallery_dir=gallery/../../..")
    assert "/" not in name and name.startswith("folder+")
    assert store_dir(tmp_path, "folder:gallery_dir=gallery/../../..", "synthetic").parent.parent == tmp_path / "dsap"
    assert RunFolder(tmp_path / "r").eval_dir("folder:gallery_dir=../x").parent == tmp_path / "r" / "eval"
    assert dataset_dirname("market1501") == "market1501"


@pytest.mark.parametrize("option", ["gallery_dir=gallery/../../..", "train_dir=/etc", "query_dir=.."])
def test_folder_dataset_option_paths_stay_inside_the_root(tmp_path, make_images, option):
    from data.datasets import build_dataset
    from data.datasets.base import DatasetError

    for d in ("train", "query", "gallery"):
        make_images(tmp_path / "ds" / d, ["0001_c1_a.jpg", "0002_c2_b.jpg"])
    with pytest.raises(DatasetError, match="points outside the dataset folder"):
        build_dataset(f"folder:{option}", tmp_path / "ds")


@pytest.mark.parametrize("run, tag", [("../../x", None), ("/abs", None), ("ok", "/../../x"), ("ok", "../y")])
def test_train_cli_refuses_paths_as_names(tmp_path, run, tag):
    from click.testing import CliRunner

    from train.__main__ import main

    args = ["--dataset", "synthetic", "--root", str(tmp_path), "--run", run, "--runs-dir", str(tmp_path / "runs")]
    r = CliRunner().invoke(main, args + (["--tag", tag] if tag else []))
    assert r.exit_code == 2 and r.output.startswith("error: ") and "is not a plain name" in r.output, r.output
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


# --------------------------------------------------------------------------- 5. unfinished runs, features files
def test_evaluating_an_unfinished_run_says_so(tmp_path, market_tree):
    from click.testing import CliRunner

    from conftest import write_tiny_run
    from evaluate.__main__ import cli

    write_tiny_run(tmp_path / "runs" / "r", complete=False, step=3)
    r = CliRunner().invoke(cli, ["run", "--run", "r", "--runs-dir", str(tmp_path / "runs"), "--dataset",
                                 "market1501", "--root", str(market_tree.parent), "--queries", "1"])
    assert r.exit_code == 0, r.output
    assert "note: r is a checkpoint of an unfinished run (step 3)" in r.output
    m = json.loads((tmp_path / "runs" / "r" / "eval" / "market1501" / "metrics.json").read_text())
    assert m["complete"] is False and m["step"] == 3
    assert load_features(tmp_path / "runs" / "r" / "eval" / "market1501" / "features.h5").attrs["complete"] == 0


def test_a_flipped_bit_in_a_features_file_is_refused(tmp_path):
    import test_evaluate as te

    path = tmp_path / "f.h5"
    save_features(path, te._features())
    load_features(path)
    with h5py.File(path, "r+") as f:  # one feature value changes: the HDF5 file itself stays valid
        x = f["gallery/features"][()]
        x[1, 2] = np.nextafter(x[1, 2], np.float32(np.inf))
        f["gallery/features"][...] = x
    with pytest.raises(EvaluationError, match="is damaged .*checksum"):
        load_features(path)


@pytest.mark.parametrize("pids", [np.array([2**63 + 5, 1, 2], np.uint64), np.array([b"a", b"b", b"c"])])
def test_bad_pids_in_a_features_file_are_a_sentence(tmp_path, pids):
    import test_evaluate as te

    path = tmp_path / "f.h5"
    save_features(path, te._features())
    with h5py.File(path, "r+") as f:
        del f["query/pids"]
        f["query"].create_dataset("pids", data=pids)
    with pytest.raises(EvaluationError, match="query/pids of type"):
        load_features(path)


# --------------------------------------------------------------------------- 6. workers of a dead parent
def test_a_worker_whose_parent_died_during_its_start_up_does_nothing(tmp_path, data):
    from data.store import StoreSettings

    job = _Job(folder=str(tmp_path / "store"), dataset_root=str(data), factory=tp.fake_factory, batch_size=None,
               settings=StoreSettings("fake", {}, tp.S), compression=None,
               shards=[(0, [tp.FakeDataset(data).all_items()[0].key])], parent=os.getpid() + 10**6)

    class Q:
        items: list = []

        def put(self, item):
            self.items.append(item)

    with pytest.raises(SystemExit):
        _worker_main(job, Q())
    assert Q.items == [] and not (tmp_path / "store").exists()


# --------------------------------------------------------------------------- 7. locks
HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from data.io import hold_lock
hold_lock(sys.argv[1], "x")
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture()
def holder(tmp_path):
    procs = []

    def hold(lock: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT)), str(lock)], stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_precompute_on_one_store_says_who_holds_it(tmp_path, data, holder):
    folder = store_folder(tmp_path)
    folder.mkdir(parents=True)
    p = holder(folder / ".lock")
    with pytest.raises(LockError, match=rf"the DSAP store .* is in use by pid {p.pid} on .*; wait for it"):
        precompute(tmp_path, data)
    assert not list(folder.glob("shard-*"))
    p.kill()
    p.wait()
    assert precompute(tmp_path, data)["complete"]  # a killed holder leaves no stale lock


def test_a_second_training_of_one_run_says_who_holds_it(tmp_path, holder):
    from click.testing import CliRunner

    from train.__main__ import main

    (tmp_path / "runs" / "r").mkdir(parents=True)
    p = holder(tmp_path / "runs" / "r" / ".lock")
    args = ["--dataset", "market1501", "--root", str(tmp_path), "--run", "r", "--runs-dir", str(tmp_path / "runs"),
            "--variant", "baseline", "--device", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and f"is in use by pid {p.pid}" in r.output, r.output


# --------------------------------------------------------------------------- 8. SIGTERM, killed workers
def test_sigterm_exits_non_zero_and_says_it_can_be_resumed(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import train.__main__ as train_main

    def stopped(opts):
        return {"stopped_by": "signal", "signal": int(signal.SIGTERM), "step": 4}

    monkeypatch.setattr(train_main, "train_run", stopped)
    r = CliRunner().invoke(train_main.main, ["--dataset", "x", "--run", "r"])
    assert r.exit_code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM: checkpoint saved at step 4" in r.output and "rerun the same command" in r.output


def test_sigterm_through_the_trainer_gives_a_signal_summary(tmp_path):
    items, store = tt.make_data(tmp_path / "data")
    trainer = tt.make_trainer(tmp_path / "run", (items, store), loss=tt.Loss(signal_at=2))
    summary = trainer.fit()
    assert summary["stopped_by"] == "signal" and summary["signal"] == signal.SIGTERM


class _Killer(torch.utils.data.Dataset):
    """A dataset whose DataLoader worker dies (SIGKILL, as the out-of-memory killer does) on first use."""

    def __init__(self, inner) -> None:
        self.inner, self.parent = inner, os.getpid()

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        if os.getpid() != self.parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner[index]

    def read_dsap(self, batch, pin_memory=False):
        return self.inner.read_dsap(batch, pin_memory)


def test_a_killed_dataloader_worker_is_a_sentence(tmp_path):
    items, store = tt.make_data(tmp_path / "data")
    trainer = tt.make_trainer(tmp_path / "run", (items, store), workers=1)
    trainer.data.dataset = _Killer(trainer.data.dataset)
    with pytest.raises(TrainingError, match=r"^DataLoader worker \(pid.*killed.*rerun the same command to resume"):
        trainer.fit()


# --------------------------------------------------------------------------- tracebacks that became sentences
def test_a_symlink_loop_is_an_unreadable_image_in_every_stage(tmp_path, market_tree):
    from data.datasets import build_dataset

    loop = market_tree / "bounding_box_train" / "0005_c3s1_000099_00.jpg"
    loop.symlink_to(loop.name)
    ds = build_dataset("market1501", market_tree.parent)
    assert loop.name in {Path(it.key).name for it in ds.train}  # listed, so every stage names it
    with pytest.raises(ImageReadError, match="symbolic link that loops"):
        read_image(loop)


def test_precompute_records_a_loop_and_training_refuses_it_up_front(tmp_path, data):
    (data / "query" / "0999_c1s1_p.jpg").symlink_to("0999_c1s1_p.jpg")
    summary = precompute(tmp_path, data)
    assert any("loops" in f["reason"] and f["kind"] == "unreadable" for f in summary["failures"])
    store = DSAPStore(store_folder(tmp_path))
    from data.joint import check_store_fits

    class Train:
        root, train = data, [tp.FakeItem(k) for k in store.keys]

    with pytest.raises(StoreError, match=r"1 training image\(s\) could not be read .*0999_c1s1_p.jpg .*loops"):
        check_store_fits(store, Train)


def test_a_non_utf8_file_name_is_a_sentence(tmp_path, market_tree):
    from data.datasets import build_dataset
    from data.datasets.base import DatasetError

    src = market_tree / "query" / "0007_c1s1_000010_00.jpg"
    os.link(os.fsencode(src), os.fsencode(market_tree / "query") + b"/0009_c1s1_00\xff\xfe_00.jpg")
    with pytest.raises(DatasetError, match=r"1 query file name\(s\) .* are not valid UTF-8 .*rename them"):
        build_dataset("market1501", market_tree.parent)


def test_empty_and_refused_checkpoints_are_one_sentence(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(RunError, match="is empty"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    torch.save({"model": {}, "evil": Path("x")}, tmp_path / "checkpoint.pt")  # a pickled class: refused
    with pytest.raises(RunError) as e:
        load_checkpoint(tmp_path / "checkpoint.pt")
    text = str(e.value)
    assert text.startswith("refused to load") and "\n" not in text and "weights_only=False" not in text


@pytest.mark.parametrize("manifest", ["[1, 2]", '{"format_version": 1}', '{"format_version": 1, "shards": {}}',
                                      '{"format_version": 1, "shards": [{"name": "../x.h5"}]}'])
def test_bad_manifests_are_sentences_and_precompute_rebuilds_them(tmp_path, data, manifest):
    precompute(tmp_path, data)
    folder = store_folder(tmp_path)
    (folder / MANIFEST_NAME).write_text(manifest)
    with pytest.raises(StoreError, match="is not a manifest of this program"):
        DSAPStore(folder)
    summary = precompute(tmp_path, data)  # rebuilt from the intact shards: nothing recomputed
    assert summary["complete"] and summary["computed_images"] == 0
    assert DSAPStore(folder).verify(progress=False) == []


def test_torn_and_duplicate_log_lines(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.append_log({"step": 1, "loss": 2.0})
    with open(run.log_path, "ab") as f:
        f.write(b'{"step": 2, "lo\xe2\x80')  # a kill in the middle of a write, mid-character
    assert [r["step"] for r in run.read_log()] == [1]
    run.append_log({"step": 2, "loss": 1.5})  # the torn line is ended, not extended
    assert [r["step"] for r in run.read_log()] == [1, 2]
    run.trim_log(1)
    assert [r["step"] for r in run.read_log()] == [1] and b"\xe2" not in run.log_path.read_bytes()
    run.trim_log(0)  # a run started again from scratch keeps no records of its killed first start
    assert run.read_log() == []


def test_a_fresh_start_after_a_kill_before_the_first_checkpoint_logs_each_step_once(tmp_path, synth_root):
    run = RunFolder(tmp_path / "r")
    run.append_log({"step": 1, "epoch": 0, "loss": 9.0})  # left by a start killed before its first checkpoint
    assert not run.checkpoint_path.exists()
    result = tt.cli(synth_root, tmp_path, "--max-steps", "1", "--log-every", "1")
    assert result.exit_code == 0, result.output
    steps = [r["step"] for r in run.read_log() if "event" not in r]
    assert steps == [1] and run.read_log()[0]["loss"] != 9.0


def test_a_checkpoint_with_nan_weights_is_never_the_last_good_one(tmp_path):
    items, store = tt.make_data(tmp_path / "data")
    first = tt.make_trainer(tmp_path / "run", (items, store), max_steps=1)
    first.fit()
    ckpt = RunFolder(tmp_path / "run").read_checkpoint()
    name = next(k for k, v in ckpt.model_state.items() if v.is_floating_point())
    ckpt.model_state[name].fill_(float("nan"))
    again = tt.make_trainer(tmp_path / "run", (items, store), max_steps=2)
    with pytest.raises(TrainingError, match=r"holds NaN or infinite weights .*cannot be resumed") as e:
        again.resume(ckpt)
    assert "last good" not in str(e.value)
    fresh = tt.make_trainer(tmp_path / "fresh", (items, store), loss=tt.Loss(nan_at=1))
    with pytest.raises(TrainingError, match="no checkpoint was written") as e:
        fresh.fit()
    assert "last good" not in str(e.value)


# --------------------------------------------------------------------------- memory
def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    from conftest import write_tiny_image

    path = write_tiny_image(tmp_path / "big.png", size=(300, 200))
    assert read_image(path).shape == (300, 200, 3)
    monkeypatch.setenv("DSA_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(ImageReadError, match=r"is 200x300 pixels, above the limit of 50000 pixels"):
        read_image(path)


def test_a_20000_by_20000_png_is_refused_from_its_header(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    # a PNG header claiming 20000x20000 RGB (Pillow alone would refuse it as a "decompression bomb",
    # which must not hide its size from the limit here)
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    with pytest.raises(ImageReadError, match=r"is 20000x20000 pixels, above the limit of 40000000 pixels"):
        read_image(path)


def test_training_refuses_images_precompute_could_not_read_up_front(tmp_path, data):
    bad = sorted(data.rglob("*.jpg"))[4]
    bad.write_bytes(b"")
    precompute(tmp_path, data)
    store = DSAPStore(store_folder(tmp_path))
    from data.joint import check_store_fits

    class Train:
        root, train = data, [tp.FakeItem(k) for k in store.keys]

    with pytest.raises(StoreError, match=r"1 training image\(s\) could not be read .*file is empty"):
        check_store_fits(store, Train)


def test_a_full_disk_in_any_writer_is_a_sentence_at_the_command_line():
    import click
    from click.testing import CliRunner

    from data.console import CONTEXT, Command

    @click.command(cls=Command, context_settings=CONTEXT)
    def plot():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "cmc.png")  # e.g. matplotlib's savefig

    r = CliRunner().invoke(plot, [])
    assert r.exit_code == 2 and r.output.startswith("error: cannot write cmc.png: no space left on device")


# =========================================================================== the second battery
# The cheap cases of tests/battery/fault_cases.py (docs/robustness.md): every bad value a sentence before
# any work, folder scans that see loops, unreadable folders and dangling links, "up to date" decided by the
# checks training makes, an estimator that finds nobody stopped, outputs that never land in the wrong place.
from click.testing import CliRunner  # noqa: E402

from data.scan import ScanError, link_reason, list_files  # noqa: E402
from dsa.config import ConfigError, resolve_config  # noqa: E402
from dsa.env import EnvError, check_environment  # noqa: E402


# --------------------------------------------------------------------------- values of --set, options, environment
@pytest.mark.parametrize("pair, says", [
    ("recipe.lr_peak=nan", "not a finite number"), ("recipe.lr_decay_step=0", "≥ 1"),
    ("recipe.optimizer=foo", "choose one of: adam"), ("recipe.label_smoothing=5", "< 1"),
    ("recipe.random_erasing=2", "≤ 1"), ("recipe.flip=2", "≤ 1"), ("recipe.pad=-5", "≥ 0"),
    ("recipe.weight_decay=-1", "≥ 0"), ("model.height=0", "≥ 16"), ("model.base_width=0", "≥ 1"),
    ("model.last_stride=0", "choose one of: 1, 2"), ("model.classifier_dim=0", "≥ 1"), ("recipe.epochs=0", "≥ 1"),
    ("recipe.epochs=-2", "≥ 1"), ("recipe.warmup_epochs=-1", "≥ 0"), ("recipe.margin=-1", "≥ 0"),
    ("seed=-1", "≥ 0 and ≤ 4294967295"), ("seed=99999999999999999999999", "seed=99999999999999999999999 is out"),
    ("data.min_found=1.5", "≤ 1"), ("pretrained=", "use none, imagenet or the path"),
    ("data.estimator=../x", "is not a plain name"), ("data.tag=/../../x", "is not a plain name"),
    ("data.dataset=../x:a=b", "does not start with a plain name"), ("data.tag=x:../../y", "is not a plain name"),
    ("data.estimator=a:b", "is not a plain name"),
])
def test_every_set_value_out_of_range_is_one_sentence_naming_it(pair, says):
    with pytest.raises(ConfigError) as e:
        resolve_config("tiny", [pair])
    text = str(e.value)
    assert pair.partition("=")[0] in text and says in text and "\n" not in text, text


@pytest.mark.parametrize("var, value", [("DSA_THREADS", "abc"), ("DSA_THREADS", "-2"), ("DSA_THREADS", "1.5"),
                                        ("DSA_MAX_IMAGE_PIXELS", "abc"), ("DSA_MAX_IMAGE_PIXELS", "0"),
                                        ("DSA_PLUGINS", "not a module"), ("DSA_PLUGINS", "a:b")])
def test_environment_variables_are_checked_before_any_work(monkeypatch, tmp_path, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(EnvError, match=rf"the environment variable {var}='{value}' is not allowed: it must be"):
        check_environment()
    from data.cli import cli

    r = CliRunner().invoke(cli, ["stats", "--dataset", "synthetic", "--root", str(tmp_path)])
    assert r.exit_code == 2 and r.output.startswith(f"error: the environment variable {var}="), r.output


def test_environment_variables_and_config_fields_share_one_validation_layer():
    """The environment's declarations are dsa.params limits, checked by the code that checks --set."""
    from dsa import params
    from dsa.env import ENV_VARS, env_value

    assert ENV_VARS["DSA_THREADS"].meta == params.limits(ge=0) and issubclass(EnvError, ConfigError)
    assert env_value("DSA_THREADS", {"DSA_THREADS": " 3 "}) == 3
    assert env_value("DSA_PLUGINS", {"DSA_PLUGINS": "a.b, c"}) == ["a.b", "c"]
    assert env_value("DSA_THREADS", {"DSA_THREADS": ""}) is None


def test_a_plugin_that_fails_while_imported_is_one_sentence(monkeypatch, tmp_path):
    import dsa.registry as registry

    (tmp_path / "brokenplugin.py").write_text("this is not python\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DSA_PLUGINS", "brokenplugin")
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    with pytest.raises(registry.RegistryError, match=r"'brokenplugin' .* failed while it was imported \(NameError: "
                                                     r"name 'this' is not defined, at .*brokenplugin.py line 1\)"):
        registry.load_plugins()


@pytest.mark.parametrize("command, args, says", [
    ("precompute", ["run", "--dataset", "x", "--estimator", "synthetic", "--size", "4096"], "4096 is not in the range"),
    ("precompute", ["run", "--dataset", "x", "--estimator", "synthetic", "--size", "12"], "12 is not a multiple of 8"),
    ("precompute", ["run", "--dataset", "x", "--estimator", "synthetic", "--batch-size", "0"], "'--batch-size'"),
    ("precompute", ["run", "--dataset", "x", "--estimator", "synthetic", "--min-found", "2"], "'--min-found'"),
    ("precompute", ["inspect", "--dataset", "x", "--estimator", "synthetic", "--montage-random", "-2"], "-2 is not"),
    ("evaluate", ["export", "--run", "r", "--opset", "5"], "5 is not in the range 7<=x<=20"),
    ("data", ["synth", "--height", "100000"], "100000 is not in the range 32<=x<=1024"),
    ("data", ["synth", "--workers", "-1"], "'--workers'"),
    ("data", ["stats", "--dataset", "synthetic", "--workers", "-1"], "'--workers'"),
])
def test_every_option_declares_its_range(command, args, says):
    import importlib

    module = importlib.import_module({"precompute": "precompute.__main__", "evaluate": "evaluate.__main__",
                                      "data": "data.cli"}[command])
    r = CliRunner().invoke(module.cli, args)
    assert r.exit_code == 2 and "Error: Invalid value for" in r.output and says in r.output, r.output


# --------------------------------------------------------------------------- folder scans
def _market_split(folder: Path, make_images, n: int = 3) -> None:
    make_images(folder, [f"{i + 1:04d}_c{i % 2 + 1}s1_{i:06d}_00.jpg" for i in range(n)])


def test_a_directory_loop_is_a_sentence_in_every_layout(tmp_path, make_images):
    from data.datasets import build_dataset
    from evaluate.search import list_images

    names = tmp_path / "names"
    for d in ("train", "query", "gallery"):
        _market_split(names / d, make_images)
    (names / "train" / "loopdir").symlink_to(".")  # would list every image again and again
    with pytest.raises(ScanError, match=r"loopdir leads back into .*train through a symbolic link \(a loop"):
        build_dataset("folder", names)
    ids = tmp_path / "ids"
    for d in ("train", "query", "gallery"):
        make_images(ids / d / "0001", ["0001_c1_a.jpg", "0001_c2_b.jpg"])
    (ids / "train" / "0002").symlink_to(".")
    with pytest.raises(ScanError, match="a loop"):
        build_dataset("folder", ids)
    with pytest.raises(ScanError, match="a loop"):
        list_images(names / "train")
    (ids / "train" / "0002").unlink()
    (ids / "train" / "0003").symlink_to("0001")  # the same folder twice: its images twice
    with pytest.raises(ScanError, match=r"0001 is reached a second time as .*0003 .*remove the link .*0003"):
        build_dataset("folder", ids)


def test_an_unreadable_folder_is_a_sentence_not_missing_identities(tmp_path, make_images, monkeypatch):
    import data.scan as scan
    from data.datasets import build_dataset

    for d in ("train", "query", "gallery"):
        make_images(tmp_path / d / "0001", ["0001_c1_a.jpg", "0001_c2_b.jpg"])
        make_images(tmp_path / d / "0002", ["0002_c1_a.jpg", "0002_c2_b.jpg"])
    hidden = tmp_path / "train" / "0002"
    real = os.scandir

    def scandir(path="."):  # root reads every folder: the permission error is made here
        if Path(path) == hidden:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(scan.os, "scandir", scandir)
    with pytest.raises(ScanError, match=r"cannot read the folder .*train/0002 \(Permission denied\): its images would "
                                        r"be left out"):
        build_dataset("folder", tmp_path)


def test_a_dangling_link_is_listed_and_named_as_unreadable_in_every_layout(tmp_path, market_tree, make_images):
    from data.cli import find_unreadable_images
    from data.datasets import build_dataset
    from evaluate.search import list_images

    link = market_tree / "bounding_box_train" / "0005_c3s1_000098_00.jpg"
    link.symlink_to("no-such-file.jpg")
    ds = build_dataset("market1501", market_tree.parent)
    assert link.name in {Path(it.key).name for it in ds.train}  # listed, never dropped without a word
    checked, bad = find_unreadable_images(ds, workers=1)
    assert [(Path(k).name, r) for k, r in bad] == [(link.name, "is a symbolic link to no-such-file.jpg, which does "
                                                                 "not exist")]
    assert link_reason(link) == "is a symbolic link to no-such-file.jpg, which does not exist"
    assert link in list_files(market_tree / "bounding_box_train", (".jpg",), recursive=False)
    from evaluate.features import EvaluationError as SearchError

    with pytest.raises(SearchError, match=r"1 image\(s\) in the gallery folder .* cannot be read: "
                                          r"0005_c3s1_000098_00.jpg is a symbolic link to no-such-file.jpg"):
        list_images(market_tree / "bounding_box_train")


def test_a_non_utf8_name_in_a_search_gallery_is_a_sentence(tmp_path, make_images):
    from evaluate.search import list_images

    make_images(tmp_path / "g", ["a.jpg"])
    os.link(os.fsencode(tmp_path / "g" / "a.jpg"), os.fsencode(tmp_path / "g") + b"/b\xff\xfe.jpg")
    with pytest.raises(EvaluationError, match=r"1 file name\(s\) in the gallery folder .* are not valid UTF-8"):
        list_images(tmp_path / "g")


# --------------------------------------------------------------------------- "up to date" as training sees it
def _rewrite_sidecar(shard: Path) -> None:
    import hashlib

    shard.with_suffix(".sha256").write_text(hashlib.sha256(shard.read_bytes()).hexdigest() + "\n")


@pytest.mark.parametrize("damage", ["shard damaged, .sha256 rewritten", "manifest checksum edited",
                                    "shard dropped from the manifest"])
def test_precompute_is_up_to_date_only_when_training_would_read_the_store(tmp_path, data, damage):
    precompute(tmp_path / "clean", data)
    precompute(tmp_path, data)
    folder = store_folder(tmp_path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    if damage.startswith("shard damaged"):
        flip_byte(folder / "shard-00001.h5")
        _rewrite_sidecar(folder / "shard-00001.h5")
    elif damage.startswith("manifest checksum"):
        manifest["shards"][0]["sha256"] = "0" * 64
    else:
        manifest["shards"].pop()
    if not damage.startswith("shard damaged"):
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    summary = precompute(tmp_path, data)
    assert not summary["up_to_date"] and summary["complete"]
    store = open_store(tmp_path, "toy", "fake", size=tp.S)  # what training opens, and checks as it does
    store.check_fresh(data, store.keys)
    tp.assert_same_store(store_folder(tmp_path / "clean"), folder)
    assert precompute(tmp_path, data)["up_to_date"]


def test_a_completed_rerun_leaves_no_temporary_files_of_dead_writers(tmp_path, data):
    precompute(tmp_path, data)
    folder = store_folder(tmp_path)
    left = [folder / ".shard-00000.sha256.tmp-999999-deadbeef", folder / "shard-00001.h5.tmp-999998"]
    for p in left:
        p.write_text("x")
    flip_byte(folder / "shard-00000.h5")  # something to recompute: the run completes the store again
    assert precompute(tmp_path, data)["complete"]
    assert not any(p.exists() for p in left)


def test_verify_keeps_a_decompressor_line_inside_its_problem(capfd):
    from data.io import library_output

    with library_output() as said:
        os.write(1, b"decompressed size not the same: 1, != 2\n")
        os.write(2, b"and a second line\n")
    out, err = capfd.readouterr()
    assert said == ["decompressed size not the same: 1, != 2", "and a second line"] and out == err == ""


# --------------------------------------------------------------------------- an estimator that finds nobody
class _Nobody(tp.FakeEstimator):
    def estimate(self, images, paths, keys):
        return [None] * len(images)


def _nobody(dataset_root: Path) -> _Nobody:
    return _Nobody()


def test_an_estimator_that_finds_nobody_stops_with_the_likely_cause(tmp_path, data, monkeypatch):
    from functools import partial

    import precompute.runner as runner

    def run(**kw):
        return runner.run_precompute(tp.config(tmp_path, **kw), dataset=tp.FakeDataset(data), estimator_factory=_nobody)

    with pytest.raises(runner.NothingFound, match=r"found a person in only 0 of 23 images of the store .*below the "
                                                  r"50% required by --min-found.*most likely the wrong estimator"):
        run()
    assert (store_folder(tmp_path) / MANIFEST_NAME).is_file()  # the store is kept
    with pytest.raises(runner.NothingFound):  # and "up to date" is answered the same way
        run()
    assert run(min_found=0)["up_to_date"]
    store = DSAPStore(store_folder(tmp_path))
    from data.joint import check_store_fits

    class Train:
        root, train = data, [tp.FakeItem(k) for k in store.keys]

    with pytest.raises(StoreError, match=r"below the 50% required by data.min_found.*--set data.min_found=0"):
        check_store_fits(store, Train, min_found=0.5)
    check_store_fits(store, Train, min_found=0)
    monkeypatch.setattr(runner, "EARLY_IMAGES", 5)  # a long run stops after a few shards without anybody
    with pytest.raises(runner.NothingFound, match=r"computed so far .*the run stops here"):
        runner.run_precompute(tp.config(tmp_path / "early", shard_size=5), dataset=tp.FakeDataset(data),
                              estimator_factory=partial(_nobody))
    assert len(list(store_folder(tmp_path / "early").glob("shard-*.h5"))) == 1


def test_an_estimator_failing_alike_in_every_identity_folder_is_systemic(tmp_path):
    from precompute.runner import failure_reason

    def reason(key: str) -> str:  # the synthetic estimator on a crop without the generator's IUV file
        side = (tmp_path / key).with_name(Path(key).stem + "_IUV.png")
        return failure_reason(ImageReadError(side, "file does not exist"), key, tmp_path / key)

    a, b = reason("train/0001/0001_c1s1_000001_00.jpg"), reason("train/0002/0002_c2s1_000002_00.jpg")
    assert a == b == "ImageReadError: cannot read image <folder>/<image>_IUV.png: file does not exist"


def test_a_killed_precompute_worker_is_a_sentence():
    from precompute.runner import _death_sentence

    class Proc:
        pid, exitcode = 1234, -signal.SIGKILL

    assert _death_sentence(Proc).startswith("a precompute worker (pid 1234) was killed by SIGKILL without finishing")


def test_a_synth_worker_whose_parent_died_stops():
    from data.synthetic import _pool_worker

    with pytest.raises(SystemExit):
        _pool_worker(os.getpid() + 10**6)


# --------------------------------------------------------------------------- runs, outputs, evaluations
def test_a_folder_where_a_run_file_goes_is_a_sentence(tmp_path):
    from data.io import OutputPathError, atomic_write_text
    from data.runs import resolve_checkpoint

    run = RunFolder(tmp_path / "r")
    run.checkpoint_path.mkdir(parents=True)
    with pytest.raises(RunError, match=r"checkpoint.pt is not a file \(a folder\?\)"):
        run.read_checkpoint()
    with pytest.raises(RunError, match="is not a file"):
        resolve_checkpoint(run.path)
    (tmp_path / "out.onnx").mkdir()
    with pytest.raises(OutputPathError, match="a folder of that name is in the way"):
        atomic_write_text(tmp_path / "out.onnx", "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="a file stands where the folder"):
        atomic_write_text(tmp_path / "file" / "out.json", "x")
    with pytest.raises(OutputPathError, match="a file stands where the folder .*file"):
        RunFolder(tmp_path / "file").lock()  # a run name that is a file in the runs folder


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    from train.__main__ import main

    r = CliRunner().invoke(main, ["--dataset", "synthetic", "--root", str(tmp_path / "nothing"), "--run", "r",
                                  "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--preset", "tiny"])
    assert r.exit_code == 2 and "No synthetic dataset" in r.output, r.output
    assert not (tmp_path / "runs" / "r").exists()
    (tmp_path / "runs" / "old").mkdir(parents=True)  # an earlier failed start left its lock behind
    (tmp_path / "runs" / "old" / ".lock").write_text("pid 1")
    (tmp_path / "runs" / "kept").mkdir()  # a run folder with something in it is never removed
    (tmp_path / "runs" / "kept" / "notes.txt").write_text("mine")
    for run in ("old", "kept"):
        r = CliRunner().invoke(main, ["--dataset", "synthetic", "--root", str(tmp_path / "nothing"), "--run", run,
                                      "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--preset", "tiny"])
        assert r.exit_code == 2, r.output
    assert not (tmp_path / "runs" / "old").exists()
    assert (tmp_path / "runs" / "kept" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("text, says", [('{"rank1": 0.5, "mAP"', "Cannot read the metrics file"),
                                        ('{"rank1": "high", "mAP": 0.5}', "its rank1 is 'high', not a number"),
                                        ("[1, 2]", "it holds a JSON list, not an object")])
def test_compare_refuses_metrics_that_are_not_metrics(tmp_path, text, says):
    from evaluate.report import compare_runs

    d = RunFolder(tmp_path / "a").eval_dir("toy")
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(text)
    with pytest.raises(EvaluationError, match=says):
        compare_runs([str(tmp_path / "a")], "toy", runs_dir=tmp_path)


def test_compare_says_which_evaluation_it_reads_and_refuses_a_setting_that_is_a_path(tmp_path):
    from evaluate.report import compare_runs

    m = {"rank1": 0.5, "rank5": 0.6, "rank10": 0.7, "mAP": 0.4, "mINP": 0.1, "cmc": [0.5] * 20, "feature_set": "mf"}
    for setting in ("", "mf-rerank"):
        d = RunFolder(tmp_path / "a").eval_dir("toy") / setting
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps(m))
    table, _ = compare_runs([str(tmp_path / "a")], "toy", runs_dir=tmp_path)
    assert f"read {tmp_path / 'a' / 'eval' / 'toy' / 'metrics.json'} (default settings; also evaluated with: " \
           f"--setting mf-rerank)" in table
    table, _ = compare_runs([str(tmp_path / "a")], "toy", runs_dir=tmp_path, setting="mf-rerank")
    assert "(mf-rerank; also evaluated with: the defaults (no --setting))" in table
    with pytest.raises(RunError, match="evaluation setting '../../x' is not a plain name"):
        compare_runs([str(tmp_path / "a")], "toy", runs_dir=tmp_path, setting="../../x")


def test_nan_weights_are_refused_by_evaluate_export_and_search_alike(tmp_path):
    from conftest import write_tiny_run
    from evaluate.features import build_model

    path = write_tiny_run(tmp_path / "r")
    ckpt = load_checkpoint(path)
    next(t for t in ckpt.model_state.values() if t.is_floating_point()).fill_(float("nan"))
    with pytest.raises(EvaluationError, match=r"holds NaN or infinite weights \(1 tensors"):
        build_model(ckpt, "mf")


def test_export_notes_an_unfinished_run_and_states_the_resize(tmp_path):
    pytest.importorskip("onnx")
    from conftest import write_tiny_run
    from evaluate.__main__ import cli

    write_tiny_run(tmp_path / "r", complete=False, step=3)
    r = CliRunner().invoke(cli, ["export", "--run", str(tmp_path / "r"), "--no-check"])
    assert r.exit_code == 0 and "note: " in r.output and "unfinished run (step 3)" in r.output, r.output
    spec = json.loads((tmp_path / "r" / "model-mf.json").read_text())
    assert spec["input"]["resize"]["antialias"] is True and "BILINEAR" in spec["input"]["preprocess"]
    assert spec["complete"] is False


def test_the_export_resize_is_pil_bilinear(tmp_path):
    from PIL import Image

    from data.transforms import build_test_transform

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)
    for h, w in ((64, 32), (256, 128)):
        ours = build_test_transform(h, w)(image).numpy().transpose(1, 2, 0)
        assert np.array_equal(ours, np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR)))


def test_a_features_file_without_its_checksum_is_refused(tmp_path):
    import test_evaluate as te

    path = tmp_path / "f.h5"
    save_features(path, te._features())
    with h5py.File(path, "r+") as f:
        del f.attrs["content_sha256"]
    with pytest.raises(EvaluationError, match=r"has no checksum \(content_sha256\)"):
        load_features(path)


def test_a_changed_faiss_index_is_rebuilt_not_used(tmp_path):
    faiss = pytest.importorskip("faiss")
    from evaluate.index import GalleryIndex

    g = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    idx = GalleryIndex.build(g, "flat", "cosine")
    idx.save(tmp_path / "g.faiss")
    assert GalleryIndex.intact(tmp_path / "g.faiss")
    other = faiss.IndexFlatIP(8)
    other.add(g[::-1].copy())
    faiss.write_index(other, str(tmp_path / "g.faiss"))
    assert not GalleryIndex.intact(tmp_path / "g.faiss")


def test_an_image_whose_size_its_header_does_not_give_is_not_decoded(tmp_path):
    import cv2

    ok, buf = cv2.imencode(".hdr", np.full((40, 30, 3), 0.5, np.float32))  # Radiance HDR: OpenCV reads it, Pillow not
    path = tmp_path / "0001_c1s1_000001_00.jpg"
    path.write_bytes(buf.tobytes())
    with pytest.raises(ImageReadError, match="size in pixels cannot be read from its header before decoding"):
        read_image(path)


def test_mediapipe_gets_the_protobuf_method_it_calls():
    message_factory = pytest.importorskip("google.protobuf.message_factory")
    from precompute.estimators.pose import _protobuf_compat

    _protobuf_compat()
    assert hasattr(message_factory.MessageFactory, "GetPrototype")


def test_derived_output_names_are_names():
    from data.names import check_name, derived_name

    for text in ("my crops", "..", "", "a/b", ".hidden", "x" * 300):
        name = derived_name(text)
        assert check_name(name) == name and "/" not in name and name not in (".", "..")
    assert derived_name("gallery") == "gallery"
