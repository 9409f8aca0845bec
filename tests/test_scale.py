"""Search at scale: exact top-k streamed by gallery blocks, gallery features files written by chunks
(resumable, checksummed) and read by blocks, the optional FAISS index, and the module dependencies."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from evaluate.features import EvaluationError, GalleryFile, GalleryWriter, content_digest
from evaluate.metrics import pairwise_distance
from evaluate.search import gallery_features, top_k


def _stable_top(q, g, k, metric, exclude=None):
    dist = pairwise_distance(q, g, metric).numpy()
    if exclude is not None:
        for i, j in enumerate(exclude):
            if j >= 0:
                dist[i, j] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, 1)


def _write(path, feats, keys=None, storage="float32", key="k"):
    keys = keys or [f"g{i}.jpg" for i in range(len(feats))]
    w = GalleryWriter(path, keys, feats.shape[1], resume_key=key, storage=storage)
    for s in range(0, len(feats), 100):
        w.write(s, feats[s : s + 100])
    w.finish()
    w.close()
    return GalleryFile(path)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_top_k_streamed_equals_a_stable_sort_with_ties(tmp_path, metric):
    rng = np.random.default_rng(0)
    g = rng.integers(-2, 3, size=(1500, 6)).astype(np.float32)  # small integers: many exact ties
    g[700:] = g[:800]  # duplicated rows in other blocks
    q = np.concatenate([g[[3, 900]], rng.integers(-2, 3, size=(9, 6)).astype(np.float32)])
    exclude = np.array([3, 900] + [-1] * 9)
    gfile = _write(tmp_path / "g.h5", g)
    for source in (g, gfile):
        for max_memory in (1, None):  # 256-row blocks (the least), or one block
            idx, dist = top_k(q, source, 10, metric, max_memory=max_memory)
            ref_i, ref_d = _stable_top(q, g, 10, metric)
            if metric == "euclidean":  # exact integer products: every path gives the same bits, ties included
                assert np.array_equal(idx, ref_i)
            np.testing.assert_allclose(dist, ref_d, atol=1e-6)
            idx, dist = top_k(q, source, 10, metric, exclude=exclude, max_memory=max_memory)
            assert 3 not in idx[0] and 900 not in idx[1]
            if metric == "euclidean":
                assert np.array_equal(idx, _stable_top(q, g, 10, metric, exclude)[0])
    idx, dist = top_k(q[:1], g[:4], 10, metric, exclude=[3])  # fewer answers than asked: padded
    assert idx.shape == (1, 4) and idx[0, 3] == -1 and np.isinf(dist[0, 3])


def test_gallery_writer_resumes_and_checksums(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(350, 8)).astype(np.float32)
    keys = [f"k{i}" for i in range(350)]
    path = tmp_path / "gallery.h5"
    w = GalleryWriter(path, keys, 8, resume_key="model-a")
    w.write(0, feats[:100])
    w.write(100, feats[100:200])
    w.close()  # interrupted: the partial file stays
    assert not path.exists() and path.with_name("gallery.h5.partial").is_file()
    other = GalleryWriter(path, keys, 8, resume_key="model-b")  # another model: afresh
    assert other.done == 0
    other.close()
    w = GalleryWriter(path, keys, 8, resume_key="model-a")
    assert w.done == 0  # the model-b writer started afresh over the same partial file
    w.write(0, feats[:200])
    w.close()
    w = GalleryWriter(path, keys, 8, resume_key="model-a")
    assert w.done == 200
    with pytest.raises(ValueError, match="in order"):
        w.write(300, feats[300:])
    w.write(200, feats[200:])
    assert w.finish() == path
    g = GalleryFile(path)
    assert len(g) == 350 and g.dim == 8 and g.keys == keys
    assert g.attrs["content_sha256"] == content_digest([(feats, np.full(350, -1), np.full(350, -1), keys)])
    assert np.array_equal(np.concatenate([b for _, b in g.blocks(64)]), feats)
    g.close()
    with h5py.File(path, "r+") as f:  # one flipped value: refused
        f["gallery/features"][5, 3] += 1.0
    with pytest.raises(EvaluationError, match="damaged"):
        GalleryFile(path)
    half = _write(tmp_path / "half.h5", feats, keys, storage="float16")
    blocks = np.concatenate([b for _, b in half.blocks(100)])
    assert blocks.dtype == np.float32 and np.allclose(blocks, feats, atol=1e-2)


class _FakeModel:
    """An Extractor that fails once after ``fail_after`` calls (an interrupted extraction)."""

    feature_set, checkpoint = "mf", "ckpt"

    def __init__(self, fail_after=None):
        self.calls, self.fail_after, self.seen = 0, fail_after, []

    def extract(self, images, *, root=None, batch_size=64, flip=False, progress=False):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        self.seen += list(images)
        return np.array([[len(n), sum(map(ord, n)) % 7, 1.0] for n in images], np.float32)


def test_extraction_by_chunks_resumes_after_an_interruption(tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    names = [f"{i:03d}.jpg" for i in range(23)]
    for n in names:
        (folder / n).write_bytes(b"x")
    cache = tmp_path / "cache"
    broken = _FakeModel(fail_after=3)  # the probe call, then two chunks of 5
    with pytest.raises(KeyboardInterrupt):
        gallery_features(broken, folder, names, checkpoint_sha256="s", cache_dir=cache, chunk=5, progress=False)
    model = _FakeModel()
    feats, cached = gallery_features(model, folder, names, checkpoint_sha256="s", cache_dir=cache, chunk=5,
                                     progress=False)
    assert not cached and model.seen == names[:1] + names[10:]  # the probe, then where it stopped
    again, cached = gallery_features(_FakeModel(), folder, names, checkpoint_sha256="s", cache_dir=cache,
                                     chunk=5, progress=False)
    assert cached and np.array_equal(np.concatenate([b for _, b in again.blocks()]),
                                     _FakeModel().extract(names))


def test_index_flat_is_exact_and_ivf_recall_is_measurable():
    pytest.importorskip("faiss")
    from evaluate.index import GalleryIndex

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(50, 32))
    g = (centres[rng.integers(0, 50, 3000)] + 0.3 * rng.normal(size=(3000, 32))).astype(np.float32)
    q = (centres[rng.integers(0, 50, 40)] + 0.3 * rng.normal(size=(40, 32))).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        exact_i, exact_d = top_k(q, g, 10, metric)
        flat = GalleryIndex.build(g, "flat", metric, rows=700)
        idx, dist = flat.search(q, 10)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact_i)]) >= 0.99
        np.testing.assert_allclose(dist, exact_d, atol=1e-4)
        ivf = GalleryIndex.build(g, "ivf", metric, nlist=20, nprobe=20, rows=700)  # every cell: only 8-bit loss
        idx, _ = ivf.search(q, 10)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact_i)]) >= 0.9


def test_missing_faiss_is_one_sentence_with_the_install_command(monkeypatch):
    from evaluate.index import require_faiss

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(EvaluationError, match=r"install it with `pip install faiss-cpu`"):
        require_faiss()


def test_search_does_not_import_the_api():
    """No import circle: evaluate.search takes any Extractor and never imports evaluate.api."""
    code = "import sys, evaluate.search; assert 'evaluate.api' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
