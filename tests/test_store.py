"""DSAP store: shard writing, manifest, lookups by key, errors a user can act on, fork safety."""
from __future__ import annotations

import json
import multiprocessing as mp
import os

import h5py
import numpy as np
import pytest

from data.store import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    DSAPStore,
    StoreError,
    StoreSettings,
    StoreWriter,
    fingerprint,
    read_shard_header,
    store_dir,
)

S = 16
SETTINGS = StoreSettings("fake", {"noise": 0.0}, size=S, kind="dsap")


def fake_rows(keys, seed=0):
    rng = np.random.default_rng(seed)
    n = len(keys)
    dsap = rng.integers(0, 256, size=(n, 24, 3, S, S), dtype=np.uint8)
    written = rng.random((n, 24, S, S)) < 0.3
    found = np.arange(n) % 3 != 0
    return dsap, written, found


def make_store(folder, keys, shard_size=4, compression=None):
    writer = StoreWriter(folder, SETTINGS, compression=compression)
    arrays = fake_rows(keys)
    n_shards = 0
    for i, start in enumerate(range(0, len(keys), shard_size)):
        sl = slice(start, start + shard_size)
        fails = [{"key": keys[start], "reason": "file is empty (0 bytes)"}] if i == 0 else []
        writer.write_shard(i, keys[sl], arrays[0][sl], arrays[1][sl], arrays[2][sl], fails)
        n_shards += 1
    writer.write_manifest("toy", keys, n_shards)
    return arrays


KEYS = [f"bounding_box_train/{i:04d}_c1s1_000001_00.jpg" for i in range(10)]


def test_store_dir_layout(tmp_path):
    assert store_dir(tmp_path, "market1501", "iuv") == tmp_path / "dsap" / "market1501" / "iuv"
    assert store_dir(tmp_path, "market1501", "iuv", tag="v2") == tmp_path / "dsap" / "market1501" / "iuv-v2"


@pytest.mark.parametrize("compression", [None, "lz4", "lzf", "gzip"])
def test_roundtrip_by_key(tmp_path, compression):
    dsap, written, found = make_store(tmp_path, KEYS, compression=compression)
    store = DSAPStore(tmp_path)
    assert len(store) == 10 and store.keys == sorted(KEYS)
    assert store.size == S and store.kind == "dsap" and store.settings == {"noise": 0.0}
    for i in [7, 0, 9, 3]:  # random order, across shards
        k = KEYS[i]
        assert k in store
        np.testing.assert_array_equal(store.get(k), dsap[i])
        np.testing.assert_array_equal(store.get_written(k), written[i])
        assert store.found(k) == bool(found[i])
    assert "nope.jpg" not in store
    with pytest.raises(KeyError):
        store.get("nope.jpg")
    np.testing.assert_allclose(store.table("coverage"), written.reshape(10, 24, -1).mean(-1), rtol=1e-6)
    assert store.table("found").tolist() == found.tolist()


def test_lz4_without_hdf5plugin_is_a_sentence(tmp_path):
    """An LZ4 store read (or written) where hdf5plugin is missing: a StoreError naming the package."""
    import subprocess
    import sys
    from pathlib import Path as P

    make_store(tmp_path, KEYS, compression="lz4")
    with h5py.File(tmp_path / "shard-00000.h5") as f:
        plist = f["dsap"].id.get_create_plist()
        assert plist.get_filter(0)[0] == 32004  # the registered LZ4 filter id
    code = (
        "import sys; sys.modules['hdf5plugin'] = None\n"
        "from data.store import DSAPStore, StoreError, StoreWriter, StoreSettings\n"
        "s = DSAPStore(sys.argv[1])\n"
        "for call in (lambda: s.get(s.keys[0]), lambda: StoreWriter(sys.argv[1] + '/w', StoreSettings('x', {}, 8, 'dsap'), 'lz4')):\n"
        "    try:\n        call(); print('no error')\n"
        "    except StoreError as e:\n        print('StoreError:', e)\n")
    root = P(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    assert all(line.startswith("StoreError:") and "hdf5plugin" in line for line in lines), lines


def test_default_compression_is_lz4(tmp_path):
    from data.store import DEFAULT_COMPRESSION
    from precompute.runner import PrecomputeConfig

    assert DEFAULT_COMPRESSION == "lz4"
    assert PrecomputeConfig.__dataclass_fields__["compression"].default == "lz4"


def test_manifest_contents(tmp_path):
    _, _, found = make_store(tmp_path, KEYS)
    m = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert m["format_version"] == FORMAT_VERSION and m["dataset"] == "toy" and m["estimator"] == "fake"
    assert m["num_images"] == 10 and m["num_found"] == int(found.sum())
    assert [s["name"] for s in m["shards"]] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert [s["num_images"] for s in m["shards"]] == [4, 4, 2]
    assert m["fingerprint"] == fingerprint(reversed(KEYS))
    assert m["failures"] == [{"key": KEYS[0], "reason": "file is empty (0 bytes)"}]
    with h5py.File(tmp_path / "shard-00001.h5") as f:
        assert f["dsap"].chunks == (1, 24, 3, S, S)
        assert f["written"].shape == (4, 24, S, S // 8) and f["written"].dtype == np.uint8
        assert f.attrs["kind"] == "dsap" and json.loads(f.attrs["settings"]) == {"noise": 0.0}


def test_missing_or_incomplete_store_says_run_precompute(tmp_path):
    with pytest.raises(StoreError, match="no DSAP store.*make precompute"):
        DSAPStore(tmp_path / "absent")
    writer = StoreWriter(tmp_path, SETTINGS)
    writer.write_shard(0, KEYS[:2], *fake_rows(KEYS[:2]))
    with pytest.raises(StoreError, match="incomplete.*finish"):
        DSAPStore(tmp_path)


def test_format_version_mismatch(tmp_path):
    make_store(tmp_path, KEYS)
    m = json.loads((tmp_path / MANIFEST_NAME).read_text())
    m["format_version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(StoreError, match="format version 99"):
        DSAPStore(tmp_path)


def test_check_covers_counts_and_examples(tmp_path):
    make_store(tmp_path, KEYS)
    store = DSAPStore(tmp_path)
    store.check_covers(KEYS[:5])
    extra = [f"query/{i:04d}_c2s1_000001_00.jpg" for i in range(7)]
    with pytest.raises(StoreError) as e:
        store.check_covers(KEYS + extra)
    msg = str(e.value)
    assert "7 of 17 images missing" in msg and extra[0] in msg and "make precompute" in msg


def test_tmp_files_are_invisible_and_replaced(tmp_path):
    make_store(tmp_path, KEYS)
    # a half-written shard of a killed writer: garbage under the temporary name
    (tmp_path / f"shard-00001.h5.tmp-{os.getpid() + 1}").write_bytes(b"\x89HDF half written")
    (tmp_path / "shard-00007.h5.tmp-1").write_bytes(b"")
    store = DSAPStore(tmp_path)
    assert len(store) == 10 and store.verify() == []
    StoreWriter(tmp_path, SETTINGS).write_shard(1, KEYS[4:8], *fake_rows(KEYS[4:8], seed=1))
    assert not list(tmp_path.glob("shard-00001.h5.tmp-*"))  # the owner cleans its stale temporary files


def test_verify_detects_changed_shard(tmp_path):
    make_store(tmp_path, KEYS)
    assert DSAPStore(tmp_path).verify() == []
    StoreWriter(tmp_path, SETTINGS).write_shard(2, KEYS[8:], *fake_rows(KEYS[8:], seed=5))
    problems = DSAPStore(tmp_path).verify()
    assert len(problems) == 1 and "shard-00002.h5" in problems[0] and "checksum" in problems[0]


def test_verify_shows_progress(tmp_path, capsys):
    make_store(tmp_path, KEYS)
    assert DSAPStore(tmp_path).verify(progress=True) == []
    err = capsys.readouterr().err
    assert "verify:" in err and f"/{len(KEYS)} " in err
    assert DSAPStore(tmp_path).verify(progress=False) == [] and capsys.readouterr().err == ""


def test_shard_header(tmp_path):
    make_store(tmp_path, KEYS)
    h = read_shard_header(tmp_path / "shard-00002.h5")
    assert h["keys"] == KEYS[8:] and h["size"] == S and SETTINGS.differences(h) == []
    assert StoreSettings("fake", {"noise": 0.1}, size=S).differences(h) == ["settings"]


def test_settings_differences_are_named_in_words():
    stored = {"estimator": "fake", "settings": {"noise": 0.1, "weights_sha256": "a" * 64, "path": "/x/y"},
              "size": S, "kind": "dsap"}
    now = StoreSettings("fake", {"noise": 0.2, "weights_sha256": "b" * 64, "threads": 1}, size=S)
    text = now.explain(stored, most=4)
    assert text.startswith("settings.noise is 0.1 in the store and 0.2 now; settings.path is '/x/y' in the store "
                           "and not recorded now; settings.threads is not recorded in the store and 1 now; "
                           "settings.weights_sha256 is aaaaaaaaaaaa... in the store and bbbbbbbbbbbb... now")
    assert now.unrecorded(stored) == ["settings.threads"]
    assert now.explain(stored, most=1) == "settings.noise is 0.1 in the store and 0.2 now; 3 more"
    nested = StoreSettings("fake", {"software": {"torch": "2.14"}}, size=S)
    assert nested.explain({**stored, "settings": {}}) == ("settings.software.torch is not recorded in the store "
                                                          "and '2.14' now")
    assert nested.explain({**stored, "settings": {"software": {"torch": "2.13"}}}) == (
        "settings.software.torch is '2.13' in the store and '2.14' now")
    assert SETTINGS.explain({**SETTINGS.as_dict(), "size": 8}) == f"size is 8 in the store and {S} now"
    assert SETTINGS.explain(SETTINGS.as_dict()) == ""


def test_provenance_per_shard_and_grouped_in_the_manifest(tmp_path):
    writer = StoreWriter(tmp_path, SETTINGS)
    arrays = fake_rows(KEYS)
    for i, (start, who) in enumerate([(0, {"threads": 2}), (4, {"threads": 1}), (8, {"threads": 2})]):
        sl = slice(start, start + 4)
        writer.write_shard(i, KEYS[sl], arrays[0][sl], arrays[1][sl], arrays[2][sl], provenance=who)
    writer.write_manifest("toy", KEYS, 3)
    assert read_shard_header(tmp_path / "shard-00001.h5")["provenance"] == {"threads": 1}
    assert DSAPStore(tmp_path).provenance == [{"shards": ["shard-00000.h5", "shard-00002.h5"], "threads": 2},
                                              {"shards": ["shard-00001.h5"], "threads": 1}]
    old = tmp_path / "old"
    make_store(old, KEYS)  # shards without a record (older versions) read, with an empty record
    assert read_shard_header(old / "shard-00000.h5")["provenance"] is None
    assert DSAPStore(old).provenance == [{"shards": ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]}]


def test_writer_rejects_wrong_shapes(tmp_path):
    dsap, written, found = fake_rows(KEYS[:2])
    with pytest.raises(ValueError, match="dsap must be"):
        StoreWriter(tmp_path, SETTINGS).write_shard(0, KEYS[:3], dsap, written, found)


def _child_read(store, key, q):
    q.put(store.get(key).sum(dtype=np.int64).item())


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_reopens_after_fork(tmp_path):
    dsap, _, _ = make_store(tmp_path, KEYS)
    store = DSAPStore(tmp_path)
    store.get(KEYS[5])  # the parent opens its handles before forking
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(store, KEYS[6], q))
    p.start()
    got = q.get(timeout=20)
    p.join(timeout=20)
    assert p.exitcode == 0 and got == int(dsap[6].sum(dtype=np.int64))
    np.testing.assert_array_equal(store.get(KEYS[1]), dsap[1])  # the parent's handles still work


def test_pickles_without_handles(tmp_path):
    import pickle

    dsap, _, _ = make_store(tmp_path, KEYS)
    store = DSAPStore(tmp_path)
    store.get(KEYS[0])
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.get(KEYS[2]), dsap[2])
