"""The DSAP warp (dsa.dsap): hand-computed cases, the three implementations agree, CSA, helpers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dsa.dsap import (
    coverage, crop_csa, dsap_not_found, image_mean, merge_groups,
    normalise_dsap, warp_dsap, warp_dsap_torch,
)
from dsa.parts import NUM_GROUPS, NUM_PARTS, PART_TO_GROUP
from dsa.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.oracles import warp_dsap_reference


def _random_case(rng: np.random.Generator, h: int, w: int, body: float = 0.6):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = rng.integers(1, NUM_PARTS + 1, (h, w)).astype(np.uint8)
    labels[rng.random((h, w)) > body] = 0
    # coordinates outside [0, 1] and exact edges exercise clamping and u = 1
    u = rng.uniform(-0.2, 1.2, (h, w)).astype(np.float32)
    v = rng.uniform(-0.2, 1.2, (h, w)).astype(np.float32)
    u[rng.random((h, w)) < 0.05] = 1.0
    v[rng.random((h, w)) < 0.05] = 0.0
    return image, labels, u, v


def _torch_warp(image, labels, u, v, size=32):
    dsap, written = warp_dsap_torch(
        torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(),
        torch.from_numpy(labels)[None], torch.from_numpy(u)[None], torch.from_numpy(v)[None], size=size)
    return dsap[0].numpy(), written[0].numpy()


def test_hand_computed_2x2():
    # four pixels, S = 4: pixel (0,0) part 2 at (u,v) = (0.0, 0.5) → row 0, col 2;
    # pixel (0,1) part 2 at (0.1, 0.6) → row 0, col 2 too (duplicate: averaged);
    # pixel (1,0) part 24 at (1.0, 1.0) → row 3, col 3 (u = 1 maps to S−1);
    # pixel (1,1) background: writes nothing but counts in the mean.
    image = np.array([[[10, 20, 30], [11, 21, 40]],
                      [[200, 100, 0], [255, 255, 255]]], dtype=np.uint8)
    labels = np.array([[2, 2], [24, 0]], dtype=np.uint8)
    u = np.array([[0.0, 0.1], [1.0, 0.5]], dtype=np.float32)
    v = np.array([[0.5, 0.6], [1.0, 0.5]], dtype=np.float32)
    dsap, written = warp_dsap(image, labels, u, v, size=4)

    assert dsap.shape == (24, 3, 4, 4) and dsap.dtype == np.uint8
    assert written.shape == (24, 4, 4) and written.dtype == bool
    # mean of the four pixels, rounded half up: R (10+11+200+255)/4 = 119, G 396/4 = 99, B 325/4 = 81.25
    mean = np.array([119, 99, 81], dtype=np.uint8)
    expected_written = np.zeros((24, 4, 4), dtype=bool)
    expected_written[1, 0, 2] = True
    expected_written[23, 3, 3] = True
    np.testing.assert_array_equal(written, expected_written)
    # the duplicate cell: (10+11+1)//2 = 11 (10.5 rounds up), (20+21+1)//2 = 21, (30+40+1)//2 = 35
    np.testing.assert_array_equal(dsap[1, :, 0, 2], [11, 21, 35])
    np.testing.assert_array_equal(dsap[23, :, 3, 3], [200, 100, 0])
    # every other cell keeps the mean
    filled = dsap.transpose(0, 2, 3, 1)[~expected_written]
    np.testing.assert_array_equal(filled, np.broadcast_to(mean, filled.shape))


def test_mean_rounds_half_up():
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    image[0, 0] = (1, 2, 3)
    image[0, 1] = (2, 2, 4)  # means 1.5 → 2, 2 → 2, 3.5 → 4
    np.testing.assert_array_equal(image_mean(image), [2, 2, 4])
    dsap, written = dsap_not_found(image, size=8)
    assert not written.any()
    assert (dsap[:, 0] == 2).all() and (dsap[:, 1] == 2).all() and (dsap[:, 2] == 4).all()


def test_duplicates_average_with_integer_rounding():
    # three pixels in one cell: 0 + 1 + 1 = 2 → (2 + 1) // 3 = 1 ; 255·2 + 254 = 764 → (764 + 1)//3 = 255
    image = np.array([[[0, 255, 7], [1, 255, 8], [1, 254, 8]]], dtype=np.uint8)
    labels = np.full((1, 3), 5, dtype=np.uint8)
    u = np.full((1, 3), 0.5, dtype=np.float32)
    v = np.array([[0.50, 0.51, 0.52]], dtype=np.float32)
    for warp in (warp_dsap, warp_dsap_reference, _torch_warp):
        dsap, written = warp(image, labels, u, v, size=4)
        assert written.sum() == 1 and written[4, 2, 2]
        np.testing.assert_array_equal(dsap[4, :, 2, 2], [1, 255, 8])  # (23 + 1) // 3 = 8


@pytest.mark.parametrize("u_value,row", [(-0.5, 0), (0.0, 0), (0.49, 15), (0.999, 31), (1.0, 31), (3.0, 31)])
def test_clamping_and_u_equal_one(u_value, row):
    image = np.full((1, 1, 3), 99, dtype=np.uint8)
    labels = np.array([[7]], dtype=np.uint8)
    u = np.array([[u_value]], dtype=np.float32)
    v = np.array([[-1.0]], dtype=np.float32)  # clamped to column 0
    for warp in (warp_dsap, warp_dsap_reference, _torch_warp):
        _, written = warp(image, labels, u, v)
        assert np.argwhere(written).tolist() == [[6, row, 0]]


def test_background_and_nan_write_nothing():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    u = rng.random((8, 6), dtype=np.float32)
    v = rng.random((8, 6), dtype=np.float32)
    labels = np.zeros((8, 6), dtype=np.uint8)
    dsap, written = warp_dsap(image, labels, u, v)
    assert not written.any()
    np.testing.assert_array_equal(dsap, dsap_not_found(image)[0])
    labels[:] = 3
    u[:] = np.nan
    for warp in (warp_dsap, warp_dsap_reference, _torch_warp):
        assert not warp(image, labels, u, v)[1].any()


@pytest.mark.parametrize("h,w,size", [(1, 1, 32), (4, 4, 4), (17, 9, 32), (64, 32, 16), (40, 30, 7)])
def test_numpy_equals_reference_and_torch(h, w, size):
    rng = np.random.default_rng(h * 1000 + w)
    image, labels, u, v = _random_case(rng, h, w)
    dsap, written = warp_dsap(image, labels, u, v, size=size)
    ref_dsap, ref_written = warp_dsap_reference(image, labels, u, v, size=size)
    t_dsap, t_written = _torch_warp(image, labels, u, v, size=size)
    np.testing.assert_array_equal(dsap, ref_dsap)
    np.testing.assert_array_equal(written, ref_written)
    np.testing.assert_array_equal(dsap, t_dsap)
    np.testing.assert_array_equal(written, t_written)


def test_float64_maps_and_strided_image():
    # coordinates are cast to float32 on every path; a non-contiguous image view gives the same result
    rng = np.random.default_rng(11)
    image, labels, u, v = _random_case(rng, 30, 20)
    big = np.zeros((30, 40, 3), dtype=np.uint8)
    big[:, ::2] = image
    view = big[:, ::2]
    a = warp_dsap(image, labels, u.astype(np.float64), v.astype(np.float64))
    b = warp_dsap(view, labels, u, v)
    c = warp_dsap_reference(image, labels, u.astype(np.float64), v.astype(np.float64))
    for x, y in ((a, b), (a, c)):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])


def test_torch_batch_equals_per_image():
    rng = np.random.default_rng(7)
    cases = [_random_case(rng, 48, 24, body=f) for f in (0.0, 0.3, 0.9)]
    images = torch.from_numpy(np.stack([c[0] for c in cases])).permute(0, 3, 1, 2).contiguous()
    labels, u, v = (torch.from_numpy(np.stack([c[k] for c in cases])) for k in (1, 2, 3))
    dsap, written = warp_dsap_torch(images, labels, u, v)
    assert dsap.shape == (3, 24, 3, 32, 32) and dsap.dtype == torch.uint8 and written.dtype == torch.bool
    for b, case in enumerate(cases):
        ref_dsap, ref_written = warp_dsap(*case)
        np.testing.assert_array_equal(dsap[b].numpy(), ref_dsap)
        np.testing.assert_array_equal(written[b].numpy(), ref_written)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_torch_cuda_equals_numpy():
    rng = np.random.default_rng(3)
    cases = [_random_case(rng, 256, 128) for _ in range(4)]
    images = torch.from_numpy(np.stack([c[0] for c in cases])).permute(0, 3, 1, 2).contiguous().cuda()
    labels, u, v = (torch.from_numpy(np.stack([c[k] for c in cases])).cuda() for k in (1, 2, 3))
    dsap, written = warp_dsap_torch(images, labels, u, v)
    for b, case in enumerate(cases):
        ref_dsap, ref_written = warp_dsap(*case)
        np.testing.assert_array_equal(dsap[b].cpu().numpy(), ref_dsap)
        np.testing.assert_array_equal(written[b].cpu().numpy(), ref_written)


def test_bad_inputs_raise():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    maps = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="match the image size"):
        warp_dsap(image, np.zeros((3, 4), np.uint8), maps, maps)
    with pytest.raises(ValueError, match="uint8"):
        warp_dsap(image.astype(np.float32), maps.astype(np.uint8), maps, maps)


def test_crop_csa():
    image = np.zeros((20, 10, 3), dtype=np.uint8)
    image[2:6, 1:5] = (255, 0, 0)  # part 1's box is exactly this red block
    labels = np.zeros((20, 10), dtype=np.uint8)
    labels[2:6, 1:5] = 1
    labels[10, 3] = 9  # a one-pixel part
    dsap, written = crop_csa(image, labels, size=8)
    assert dsap.shape == (24, 3, 8, 8) and written.shape == (24, 8, 8)
    assert written[0].all() and written[8].all()
    assert written.sum() == 2 * 64
    np.testing.assert_array_equal(dsap[0].transpose(1, 2, 0).reshape(-1, 3),
                                  np.tile([255, 0, 0], (64, 1)))
    mean = image_mean(image)
    assert (dsap[1].transpose(1, 2, 0) == mean).all()  # absent part: mean-filled


def test_normalise_dsap_not_in_place():
    dsap = torch.full((2, 24, 3, 4, 4), 255, dtype=torch.uint8)
    before = dsap.clone()
    out = normalise_dsap(dsap)
    assert out.dtype == torch.float32 and out.shape == dsap.shape
    assert torch.equal(dsap, before)
    for ch in range(3):
        expected = (1.0 - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch]
        assert torch.allclose(out[:, :, ch], torch.tensor(expected))


def test_coverage_and_merge_groups():
    written = np.zeros((24, 4, 4), dtype=bool)
    written[0, :2] = True  # half of part 1
    written[23, 0, 0] = True
    cov = coverage(written)
    assert cov.shape == (24,) and cov.dtype == np.float32
    assert cov[0] == 0.5 and cov[23] == 1 / 16 and cov[1:23].sum() == 0
    assert coverage(np.stack([written, written])).shape == (2, 24)

    dsap = np.full((24, 3, 4, 4), 50, dtype=np.uint8)
    dsap[0, :, 0, 0] = 100  # torso back
    dsap[1, :, 0, 0] = 201  # torso front: same group, overlapping cell → (100 + 201 + 1) // 2 = 151
    written = np.zeros((24, 4, 4), dtype=bool)
    written[0, 0, 0] = written[1, 0, 0] = True
    dsap[1, :, 1, 1] = 10
    written[1, 1, 1] = True
    merged, union = merge_groups(dsap, written)
    assert merged.shape == (NUM_GROUPS, 3, 4, 4) and union.shape == (NUM_GROUPS, 4, 4)
    torso = int(PART_TO_GROUP[0])
    assert (merged[torso, :, 0, 0] == 151).all() and (merged[torso, :, 1, 1] == 10).all()
    assert union[torso].sum() == 2 and union.sum() == 2
    assert (merged[torso, :, 2, 2] == 50).all()
