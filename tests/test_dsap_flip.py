"""DSAP images mirrored with their image (dsa.parts.flip_dsap): the flipped DSAP of a synthetic person equals
the DSAP of its mirror image computed from the generator's own ground truth of the mirrored body."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dsa.dsap import warp_dsap
from dsa.parts import CHART_MIRRORS, FLIP_PARTNER, NUM_PARTS, chart_convention, flip_dsap, flip_labels


def test_flip_is_an_involution_that_swaps_partners_in_numpy_and_torch():
    a = np.random.default_rng(0).integers(0, 256, (3, NUM_PARTS, 3, 8, 8), dtype=np.uint8)
    for convention in CHART_MIRRORS:
        b = flip_dsap(a, convention)
        assert b.shape == a.shape and not np.shares_memory(a, b)
        np.testing.assert_array_equal(flip_dsap(b, convention), a)
        np.testing.assert_array_equal(flip_dsap(torch.from_numpy(a), convention).numpy(), b)
        for p in range(1, NUM_PARTS + 1):  # every part lands on its partner, whatever the mirroring
            q = FLIP_PARTNER[p]
            assert sorted(b[:, q - 1].ravel()) == sorted(a[:, p - 1].ravel())
    d = flip_dsap(a, "densepose")
    np.testing.assert_array_equal(d[:, 2], a[:, 3])                    # hands swap, charts kept
    np.testing.assert_array_equal(d[:, 0], a[:, 0, :, :, ::-1])        # torso: v mirrored
    np.testing.assert_array_equal(d[:, 22], a[:, 23, :, ::-1, :])      # head: u mirrored
    s = flip_dsap(a, "synthetic")
    np.testing.assert_array_equal(s[:, 6], a[:, 7, :, :, ::-1])        # limbs: v mirrored
    np.testing.assert_array_equal(s[:, 22], a[:, 23])                  # head: kept
    np.testing.assert_array_equal(flip_dsap(a, "synthetic", kind="csa")[:, 0], a[:, 0, :, :, ::-1])
    assert chart_convention("synthetic") == "synthetic" and chart_convention("pose") == "densepose"
    assert chart_convention("someone-elses") == "densepose"
    with pytest.raises(ValueError, match="unknown chart convention"):
        flip_dsap(a, "smpl")


def _render(yaw: float, mirrored: bool):
    """A synthetic person (no background) and its exact I/U/V, or the same scene seen in a mirror: the
    mirrored body built by the generator from the mirrored skeleton (left and right joints swapped)."""
    from data.synthetic_body import (Raster, _rot_x, _rot_y, body_capsules, make_identity, pose_skeleton, raycast,
                                     texture, transform_capsule)

    ident = make_identity(0, 11)
    joints = pose_skeleton(ident, phase=0.7, stride=0.35)
    H, W, scale, pitch = 128, 64, 64.0, 0.12
    if mirrored:
        m = np.diag([-1.0, 1.0, 1.0])
        swap = {n: n.replace("left", "#").replace("right", "left").replace("#", "right") for n in joints}
        joints = {n: m @ joints[swap[n]] for n in joints}
        yaw = -yaw                                       # M R_y(yaw) = R_y(-yaw) M
    rot = _rot_x(pitch) @ _rot_y(yaw)
    caps = [transform_capsule(c, rot) for c in body_capsules(ident, joints)]
    x0 = -W / (2 * scale)                                # symmetric about x = 0: the mirror flips the columns
    I, U, V, _ = raycast(caps, Raster(H, W, x0=x0, y0=1.85, scale=scale))
    body = I > 0
    image = np.full((H, W, 3), 90, np.uint8)
    image[body] = texture(ident, I[body], U[body], V[body])
    return image, I, U.astype(np.float32), V.astype(np.float32)


@pytest.mark.parametrize("yaw", [0.0, 0.9, np.pi - 0.4])
def test_synthetic_flip_equals_the_dsap_of_the_mirrored_rendering(yaw: float):
    image, I, U, V = _render(yaw, mirrored=False)
    _, Im, Um, Vm = _render(yaw, mirrored=True)
    # the generator's ground truth of the mirrored body is the mirror image's labels, partners swapped
    fl = I[:, ::-1]
    same = Im == flip_labels(fl)
    assert same.mean() > 0.999 and (Im > 0).sum() > 1000
    mirrored_image = np.ascontiguousarray(image[:, ::-1])   # what a mirror shows
    for size in (16, 32):
        want, want_written = warp_dsap(mirrored_image, Im, Um, Vm, size=size)
        got = flip_dsap(warp_dsap(image, I, U, V, size=size)[0], "synthetic")
        cells = want_written[:, None].repeat(3, 1)
        differ = (got != want) & cells
        # tolerance zero: the mirrored body's (u, v) equal the original's bit for bit here, so every cell
        # agrees (a pixel within float rounding of a cell edge could in general land next door)
        assert not differ.any(), (size, differ.any(axis=1).sum(), want_written.sum())
        # the simpler rule (partners swapped, charts not mirrored) is far off: the mirror matters
        plain = warp_dsap(image, I, U, V, size=size)[0][[FLIP_PARTNER[p] - 1 for p in range(1, 25)]]
        assert ((plain != want) & cells).any(axis=1).sum() > 0.2 * want_written.sum()
