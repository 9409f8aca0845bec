"""data.io: image reading with reasons, IUV PNG round trip, atomic writes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.io import (
    ImageReadError,
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    encode_image,
    read_image,
    read_iuv_png,
    write_iuv_png,
)
from dsa.iuv import IUV


def test_read_image_returns_rgb_uint8(tmp_path: Path) -> None:
    bgr = np.zeros((6, 5, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV order
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    img = read_image(tmp_path / "a.png")
    assert img.dtype == np.uint8 and img.shape == (6, 5, 3)
    assert (img[..., 2] == 200).all() and (img[..., 0] == 0).all()  # blue is the last RGB channel


def test_read_image_grey_becomes_three_channels(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 3), 77, np.uint8))
    img = read_image(tmp_path / "g.png")
    assert img.shape == (4, 3, 3) and (img == 77).all()


def test_encode_image_round_trip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (7, 4, 3), dtype=np.uint8)
    (tmp_path / "x.png").write_bytes(encode_image(rgb))
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), rgb)


@pytest.mark.parametrize(
    "content, reason",
    [(None, "does not exist"), (b"", "empty (0 bytes)"), (b"this is not an image" * 10, "not a decodable image")],
)
def test_read_image_errors_say_why(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert reason in err.value.reason
    assert err.value.path == str(path) and str(path) in str(err.value)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_read_image_truncated(tmp_path: Path, ext: str) -> None:
    img = np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    data = buf.tobytes()
    (tmp_path / f"t{ext}").write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(ImageReadError, match="not a decodable image"):
        read_image(tmp_path / f"t{ext}")


def test_read_image_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_iuv_png_round_trip_and_channel_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    i = rng.integers(0, 25, (10, 6)).astype(np.uint8)
    u = (rng.integers(0, 256, (10, 6)) / 255).astype(np.float32)
    v = (rng.integers(0, 256, (10, 6)) / 255).astype(np.float32)
    u[i == 0] = 0
    v[i == 0] = 0
    path = tmp_path / "sub" / "x_IUV.png"
    write_iuv_png(path, IUV(i, u, v))
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(bgr[..., 0], i)  # legacy order: B = I
    np.testing.assert_array_equal(bgr[..., 1], np.rint(u * 255).astype(np.uint8))  # G = U
    back = read_iuv_png(path)
    np.testing.assert_array_equal(back.I, i)
    np.testing.assert_allclose(back.U, u, atol=1e-6)
    np.testing.assert_allclose(back.V, v, atol=1e-6)
    assert [p.name for p in path.parent.iterdir()] == ["x_IUV.png"]  # no temporary left behind


def test_read_iuv_png_rejects_bad_labels(tmp_path: Path) -> None:
    bgr = np.zeros((3, 3, 3), np.uint8)
    bgr[0, 0, 0] = 30  # part 30 does not exist
    cv2.imwrite(str(tmp_path / "bad_IUV.png"), bgr)
    with pytest.raises(ImageReadError, match="part labels"):
        read_iuv_png(tmp_path / "bad_IUV.png")


def test_atomic_writes(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.json"
    atomic_write_json(target, {"x": [1, 2], "é": 1})
    assert json.loads(target.read_text(encoding="utf-8")) == {"x": [1, 2], "é": 1}
    atomic_write_text(target, "replaced")
    assert target.read_text() == "replaced"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(target.parent) == ["b.json"]
    assert target.stat().st_mode & 0o044  # not the 0600 of a mkstemp file (umask permitting)


def test_atomic_output_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half-written")
            assert not target.read_bytes() == b"half-written"
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
