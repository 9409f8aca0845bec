"""Training augmentation (image only) and the joint image + DSAP dataset."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.joint import JointDataset
from data.transforms import MEAN_RGB_UINT8, build_test_transform, build_train_transform

MEAN = torch.tensor(MEAN_RGB_UINT8, dtype=torch.uint8).view(3, 1, 1)


def erased_fraction(t: torch.Tensor) -> float:
    """Fraction of pixels painted with the erasing/padding colour."""
    return (t == MEAN).all(0).float().mean().item()


def test_train_transform_shape_dtype_and_seeded_determinism() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 40, 3), dtype=np.uint8)
    tf = build_train_transform(64, 32)
    torch.manual_seed(1)
    a, fa = tf(image)
    torch.manual_seed(1)
    b, fb = tf(image)
    assert a.shape == (3, 64, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b) and fa == fb


def test_train_transform_draws_as_torchvisions_compose() -> None:
    """The flip is torchvision's draw in torchvision's order: a seed gives the image v2.Compose gives."""
    from torchvision.transforms import v2

    from data.transforms import MEAN_RGB_UINT8, to_tensor

    image = np.random.default_rng(5).integers(0, 256, (90, 40, 3), dtype=np.uint8)
    compose = v2.Compose([v2.Lambda(to_tensor), v2.Resize((64, 32), antialias=True),
                          v2.Pad(10, fill=MEAN_RGB_UINT8), v2.RandomCrop((64, 32)), v2.RandomHorizontalFlip(0.5),
                          v2.RandomErasing(p=0.5, value=list(MEAN_RGB_UINT8))])
    tf = build_train_transform(64, 32)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        want = compose(image)
        torch.manual_seed(seed)
        got, flipped = tf(image)
        assert torch.equal(got, want), seed
        seen.add(flipped)
    assert seen == {True, False}


def test_no_augmentation_equals_plain_resize() -> None:
    image = np.random.default_rng(1).integers(0, 256, (90, 40, 3), dtype=np.uint8)
    plain, flipped = build_train_transform(64, 32, pad=0, flip_p=0.0, erasing_p=0.0)(image)
    assert torch.equal(plain, build_test_transform(64, 32)(image)) and not flipped


def test_flip_and_erasing_switches() -> None:
    image = np.zeros((64, 32, 3), np.uint8)
    image[:, :16] = 255  # left half white
    flipped, was = build_train_transform(64, 32, pad=0, flip_p=1.0, erasing_p=0.0)(image)
    assert flipped[:, :, 16:].min() == 255 and flipped[:, :, :16].max() == 0 and was
    torch.manual_seed(0)
    always = [erased_fraction(build_train_transform(64, 32, pad=0, flip_p=0.0, erasing_p=1.0)(image)[0])
              for _ in range(5)]
    never = [erased_fraction(build_train_transform(64, 32, pad=0, flip_p=0.0, erasing_p=0.0)(image)[0])
             for _ in range(5)]
    assert min(always) > 0.01 and max(never) == 0.0


def test_padding_crop_shifts_the_image() -> None:
    image = np.random.default_rng(2).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    tf = build_train_transform(64, 32, pad=10, flip_p=0.0, erasing_p=0.0)
    base = torch.from_numpy(image.transpose(2, 0, 1).copy())
    torch.manual_seed(3)
    outs = [tf(image)[0] for _ in range(8)]
    assert any(not torch.equal(o, base) for o in outs)  # crops move around inside the padded image


@dataclass(frozen=True)
class Item:
    key: str
    pid: int
    camid: int


class DictStore:
    """A minimal store: DSAP images by key, coverage check like DSAPStore."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.reads: list[str] = []

    def check_covers(self, keys: list[str]) -> None:
        from data.store import StoreError

        missing = [k for k in keys if k not in self.arrays]
        if missing:
            raise StoreError(f"{len(missing)} of {len(keys)} images missing (e.g. {missing[0]})")

    def get(self, key: str) -> np.ndarray:
        self.reads.append(key)
        return self.arrays[key]


@pytest.fixture()
def images(tmp_path: Path) -> list[Item]:
    items = []
    for i in range(4):
        name = f"img{i}.png"
        cv2.imwrite(str(tmp_path / name), np.full((40, 20, 3), 60 * i, np.uint8))
        items.append(Item(name, pid=i // 2, camid=i % 2))
    return items


def test_joint_dataset_joins_by_key_not_order(tmp_path: Path, images: list[Item]) -> None:
    arrays = {it.key: np.full((24, 3, 8, 8), k, np.uint8) for k, it in enumerate(images)}
    store = DictStore(dict(reversed(list(arrays.items()))))  # store order differs from item order
    ds = JointDataset(images, tmp_path, store, build_test_transform(32, 16))
    assert len(ds) == 4 and ds.pids == [0, 0, 1, 1]
    for k in range(4):
        item = ds[k]
        image, dsap, pid, camid = item["image"], item["dsap"], item["pid"], item["camid"]
        assert item["index"] == k
        assert image.shape == (3, 32, 16) and image.dtype == torch.uint8
        assert int(image[0, 0, 0]) == 60 * k
        assert dsap.shape == (24, 3, 8, 8) and int(dsap.flatten()[0]) == k
        assert (pid, camid) == (images[k].pid, images[k].camid)


def test_joint_dataset_missing_key_fails_at_construction(tmp_path: Path, images: list[Item]) -> None:
    from data.store import StoreError

    store = DictStore({it.key: np.zeros((24, 3, 8, 8), np.uint8) for it in images[:3]})
    with pytest.raises(StoreError, match="1 of 4"):
        JointDataset(images, tmp_path, store, build_test_transform(32, 16))


def test_joint_dataset_without_dsap_never_reads_the_store(tmp_path: Path, images: list[Item]) -> None:
    store = DictStore({})
    ds = JointDataset(images, tmp_path, store, build_test_transform(32, 16), use_dsap=False)
    dsap = ds[0]["dsap"]
    assert dsap.numel() == 0 and store.reads == [] and not ds.needs_dsap_read()


def test_seeded_items_reproduce_and_leave_global_rng_alone(tmp_path: Path, images: list[Item]) -> None:
    arrays = {it.key: np.zeros((24, 3, 8, 8), np.uint8) for it in images}
    ds = JointDataset(images, tmp_path, DictStore(arrays), build_train_transform(32, 16, erasing_p=1.0))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = [ds[(1, 1234)]["image"] for _ in range(3)]
    assert all(torch.equal(a[0], x) for x in a)
    assert torch.equal(torch.get_rng_state(), before)
    assert any(not torch.equal(ds[(1, s)]["image"], a[0]) for s in range(5))


def test_joint_dataset_with_real_store_holds_no_open_handle(tmp_path: Path, images: list[Item]) -> None:
    from data.store import DSAPStore, StoreSettings, StoreWriter

    keys = [it.key for it in images]
    dsap = np.random.default_rng(0).integers(0, 256, (4, 24, 3, 8, 8), dtype=np.uint8)
    writer = StoreWriter(tmp_path / "store", StoreSettings("test", {}, size=8))
    writer.write_shard(0, keys[::-1], dsap[::-1], np.zeros((4, 24, 8, 8), bool), np.ones(4, bool))
    writer.write_manifest("test", keys, 1)
    store = DSAPStore(tmp_path / "store")
    ds = JointDataset(images, tmp_path, store, build_test_transform(32, 16))
    assert store._files == {}  # nothing open before DataLoader workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    got = torch.cat([b["dsap"] for b in loader])
    assert torch.equal(got, torch.from_numpy(dsap))


def test_dsap_read_by_the_consumer_equals_the_workers(tmp_path: Path, images: list[Item]) -> None:
    """dsap_reader="main" (training's path): workers load the images, read_dsap reads the batch; same batches."""
    from torch.utils.data import DataLoader

    store = DictStore({it.key: np.full((24, 3, 8, 8), i, np.uint8) for i, it in enumerate(images)})
    batches = {}
    for reader in ("worker", "main"):
        ds = JointDataset(images, tmp_path, store, build_test_transform(32, 16), dsap_reader=reader)
        loader = DataLoader(ds, batch_size=3, sampler=[3, 0, 2, 1], num_workers=1)
        batches[reader] = [ds.read_dsap(b) for b in loader]
    for a, b in zip(batches["worker"], batches["main"]):
        assert b["dsap"].dtype == torch.uint8 and b["dsap"].shape == a["dsap"].shape
        assert set(a) == set(b) == {"image", "dsap", "pid", "camid", "index", "flipped"}
        for key in a:
            assert torch.equal(a[key], b[key])
    assert batches["main"][0]["dsap"][:, 0, 0, 0, 0].tolist() == [3, 0, 2]
    with pytest.raises(ValueError, match="dsap_reader"):
        JointDataset(images, tmp_path, store, build_test_transform(32, 16), dsap_reader="gpu")


def test_a_mirrored_image_gets_mirrored_dsap_images_in_both_readers(tmp_path: Path, images: list[Item]) -> None:
    """dsap_flip: the DSAP images of an image the augmentation mirrored are mirrored with it (partners swapped,
    charts mirrored), whether the worker or the training process reads them; the others are as stored."""
    from torch.utils.data import DataLoader

    from data.sampler import PKSampler, SeededBatches
    from dsa.parts import flip_dsap

    rng = np.random.default_rng(4)
    arrays = {it.key: rng.integers(0, 256, (24, 3, 8, 8), dtype=np.uint8) for it in images}
    store = DictStore(arrays)
    batches = {}
    for reader in ("worker", "main"):
        ds = JointDataset(images, tmp_path, store, build_train_transform(32, 16, flip_p=0.5), dsap_reader=reader,
                          dsap_flip="densepose")
        batches[reader] = []
        for seed in range(6):
            loader = DataLoader(ds, batch_sampler=SeededBatches(PKSampler(ds.pids, 2, 2, seed=seed)), num_workers=0)
            batches[reader] += [ds.read_dsap(b) for b in loader]
    flips = []
    for a, b in zip(batches["worker"], batches["main"]):
        assert torch.equal(a["dsap"], b["dsap"]) and torch.equal(a["flipped"], b["flipped"])
        for j, (i, f) in enumerate(zip(a["index"].tolist(), a["flipped"].tolist())):
            stored = arrays[images[i].key]
            want = flip_dsap(stored, "densepose") if f else stored
            assert np.array_equal(a["dsap"][j].numpy(), want)
            flips.append(f)
    assert True in flips and False in flips
