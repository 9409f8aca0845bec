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
