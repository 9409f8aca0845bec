"""The pose estimator: landmark→parts geometry (no MediaPipe needed) and the estimator wrapper."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dsa.iuv import IUV
from dsa.parts import FLIP_PARTNER, flip_labels
from precompute.estimators.base import EstimatorError, build_estimator
from precompute.estimators.pose import PoseEstimator, landmarks_to_crop, prepare_canvas
from precompute.estimators.pose_geometry import (
    LANDMARK_FLIP, NUM_LANDMARKS, GeometrySettings, facing_front, iuv_from_landmarks, mirror_landmarks,
)

H, W = 160, 80
LEFT_ARM = {15, 17, 19, 21, 4}
RIGHT_ARM = {16, 18, 20, 22, 3}
LEFT_LEG = {8, 10, 12, 14, 5}
RIGHT_LEG = {7, 9, 11, 13, 6}

# A standing person facing the camera: the person's left is on the image's right.
_FRONT = {
    "nose": (40, 22), "left_eye_inner": (42, 19), "left_eye": (43, 19), "left_eye_outer": (44, 19),
    "right_eye_inner": (38, 19), "right_eye": (37, 19), "right_eye_outer": (36, 19),
    "left_ear": (47, 21), "right_ear": (33, 21), "mouth_left": (42, 26), "mouth_right": (38, 26),
    "left_shoulder": (52, 38), "right_shoulder": (28, 38), "left_elbow": (58, 60), "right_elbow": (22, 60),
    "left_wrist": (61, 80), "right_wrist": (19, 80), "left_pinky": (62, 87), "right_pinky": (18, 87),
    "left_index": (61, 88), "right_index": (19, 88), "left_thumb": (59, 86), "right_thumb": (21, 86),
    "left_hip": (48, 82), "right_hip": (32, 82), "left_knee": (50, 112), "right_knee": (30, 112),
    "left_ankle": (51, 142), "right_ankle": (29, 142), "left_heel": (51, 146), "right_heel": (29, 146),
    "left_foot_index": (53, 151), "right_foot_index": (27, 151),
}


def _landmarks(points: dict[str, tuple[float, float]], z_nose: float = -0.3) -> np.ndarray:
    from precompute.estimators.pose_geometry import LANDMARK_NAMES
    lm = np.zeros((NUM_LANDMARKS, 4))
    for i, name in enumerate(LANDMARK_NAMES):
        lm[i, :2] = points[name]
        lm[i, 3] = 0.99
    lm[0, 2] = z_nose
    return lm


def _capsule_mask(lm: np.ndarray) -> np.ndarray:
    """A person mask made of thick capsules along the skeleton (what a segmenter would give)."""
    yy, xx = np.mgrid[:H, :W].astype(float)
    mask = np.zeros((H, W), bool)
    bones = [(11, 12, 6), (11, 23, 9), (12, 24, 9), (23, 24, 9), (11, 13, 4), (13, 15, 3), (12, 14, 4),
             (14, 16, 3), (15, 19, 3), (16, 20, 3), (23, 25, 6), (25, 27, 4), (24, 26, 6), (26, 28, 4),
             (27, 31, 3), (28, 32, 3)]
    sh = lm[[11, 12], :2].mean(0)
    hip = lm[[23, 24], :2].mean(0)
    for t in np.linspace(0, 1, 9):     # fill the torso
        p = sh + t * (hip - sh)
        mask |= (np.abs(xx - p[0]) < 11) & (np.abs(yy - p[1]) < 4)
    for a, b, r in bones:
        pa, pb = lm[a, :2], lm[b, :2]
        d = pb - pa
        t = np.clip(((xx - pa[0]) * d[0] + (yy - pa[1]) * d[1]) / (d @ d), 0, 1)
        mask |= np.hypot(xx - pa[0] - t * d[0], yy - pa[1] - t * d[1]) <= r
    head = lm[:11, :2].mean(0)
    mask |= np.hypot(xx - head[0], yy - head[1]) <= 10
    return mask


@pytest.fixture
def front():
    lm = _landmarks(_FRONT)
    return lm, _capsule_mask(lm)


def test_front_person_labels_and_ranges(front):
    lm, mask = front
    iuv = iuv_from_landmarks(lm, mask)
    assert isinstance(iuv, IUV) and iuv.shape == (H, W)
    assert iuv.I.max() <= 24 and ((iuv.I > 0) <= mask).all()
    assert (iuv.I > 0).sum() > 0.95 * mask.sum()
    assert 0.0 <= iuv.U.min() and iuv.U.max() <= 1.0 and 0.0 <= iuv.V.min() and iuv.V.max() <= 1.0
    assert iuv.I[60, 40] == 2                                   # torso front
    assert set(np.unique(iuv.I[:25])) - {0} <= {23, 24}         # the head region is head
    present = set(np.unique(iuv.I)) - {0}
    assert {2, 3, 4, 5, 6, 9, 10, 13, 14, 23, 24} <= present    # legs show their front faces
    assert present & {15, 19} and present & {16, 20}            # arms: DensePose's "back" charts
    assert 1 not in present and not present & {7, 8, 11, 12}


def test_left_right_follow_the_landmarks(front):
    lm, mask = front
    iuv = iuv_from_landmarks(lm, mask)
    xs = np.nonzero(iuv.I)[1]
    col = lambda parts: np.nonzero(np.isin(iuv.I, list(parts)))[1].mean()
    # facing the camera, the left shoulder landmark is on the image's right
    assert lm[11, 0] > lm[12, 0]
    assert col(LEFT_ARM) > xs.mean() > col(RIGHT_ARM)
    assert col(LEFT_LEG) > col(RIGHT_LEG)
    assert col({24}) > col({23})                     # head left half on the left landmarks' side


def test_mirrored_input_gives_flip_partner_labels(front):
    lm, mask = front
    iuv = iuv_from_landmarks(lm, mask)
    mirrored = iuv_from_landmarks(mirror_landmarks(lm, W), mask[:, ::-1])
    expected = flip_labels(iuv.I[:, ::-1])
    assert (mirrored.I == expected).mean() > 0.99
    same = mirrored.I == expected
    head = same & np.isin(mirrored.I, [23, 24])
    body = same & (mirrored.I > 0) & ~head
    u0 = iuv.U[:, ::-1]
    assert np.abs(mirrored.U[body] - u0[body]).mean() < 0.02          # u runs along the limb
    assert np.abs(mirrored.U[head] - (1.0 - u0[head])).mean() < 0.02  # head u runs around it
    # mirroring twice is the identity on landmarks
    np.testing.assert_allclose(mirror_landmarks(mirror_landmarks(lm, W), W), lm)
    assert all(FLIP_PARTNER[p] != p for p in (3, 4, 23, 24))
    assert (LANDMARK_FLIP[LANDMARK_FLIP] == np.arange(NUM_LANDMARKS)).all()


def test_back_view_uses_back_faces(front):
    lm, _ = front
    # seen from behind: same silhouette, but the person's left is now on the image's left
    back = lm.copy()
    back[:, 0] = (W - 1) - lm[:, 0]
    back[0, 2] = 0.3
    mask = _capsule_mask(back)
    assert facing_front(lm) and not facing_front(back)
    iuv = iuv_from_landmarks(back, mask)
    present = set(np.unique(iuv.I)) - {0}
    assert 1 in present and 2 not in present
    assert {7, 8, 11, 12} <= present and not present & {9, 10, 13, 14}
    col = lambda parts: np.nonzero(np.isin(iuv.I, list(parts)))[1].mean()
    assert col(LEFT_ARM) < col(RIGHT_ARM)


def test_charts_run_along_and_across(front):
    lm, mask = front
    iuv = iuv_from_landmarks(lm, mask)
    torso = iuv.I == 2
    ys, xs = np.nonzero(torso)
    # DensePose torso: u from the shoulders down to the hips, v towards the person's right
    assert np.corrcoef(ys, iuv.U[torso])[0, 1] > 0.9
    assert np.corrcoef(xs, iuv.V[torso])[0, 1] < -0.9
    shin = iuv.I == 14                                # lower leg left front: u knee → ankle
    assert np.corrcoef(np.nonzero(shin)[0], iuv.U[shin])[0, 1] > 0.9
    head = np.isin(iuv.I, [23, 24])                   # head v: chin 0 → crown 1
    assert np.corrcoef(np.nonzero(head)[0], iuv.V[head])[0, 1] < -0.8


def test_side_view_falls_back_on_nose_depth(front):
    lm, _ = front
    side = lm.copy()
    side[[11, 12, 23, 24], 0] = 40.0                  # shoulders and hips stacked: side-on
    side[0, 2] = -0.5
    assert facing_front(side)
    side[0, 2] = 0.5
    assert not facing_front(side)


def test_not_found_cases(front):
    lm, mask = front
    assert iuv_from_landmarks(lm, np.zeros_like(mask)) is None
    degenerate = lm.copy()
    degenerate[:, :2] = 40.0
    assert iuv_from_landmarks(degenerate, mask) is None
    with pytest.raises(ValueError):
        iuv_from_landmarks(lm[:17], mask)


def test_far_mask_pixels_and_invisible_limbs(front):
    lm, mask = front
    noisy = mask.copy()
    noisy[:8, 72:] = True                             # a blob far from the body
    iuv = iuv_from_landmarks(lm, noisy)
    assert (iuv.I[:8, 72:] == 0).all()
    hidden = lm.copy()
    hidden[[13, 15, 17, 19, 21], 3] = 0.1             # left elbow, wrist, hand not visible
    iuv = iuv_from_landmarks(hidden, mask, GeometrySettings(min_visibility=0.5))
    assert not set(np.unique(iuv.I)) & {17, 19, 21, 4}


# ----------------------------------------------------------------------------- the estimator wrapper

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None


class _FakePose:
    """Stands in for MediaPipe: reports the given crop landmarks and mask on the padded canvas."""

    def __init__(self, lm, mask, est):
        self.lm, self.mask, self.est = lm, mask, est
        self.canvas_shapes = []

    def process(self, canvas):
        self.canvas_shapes.append(canvas.shape)
        if self.lm is None:
            return SimpleNamespace(pose_landmarks=None, segmentation_mask=None)
        side = canvas.shape[0]
        _, (sx, sy), (ox, oy) = prepare_canvas(np.zeros((H, W, 3), np.uint8), self.est.input_height, self.est.pad)
        points = [SimpleNamespace(x=(x * sx + ox) / side, y=(y * sy + oy) / side, z=z * sx / side, visibility=v)
                  for x, y, z, v in self.lm]
        soft = np.zeros(canvas.shape[:2], np.float32)
        big = cv2.resize(self.mask.astype(np.float32), (round(W * sx), round(H * sy)), interpolation=cv2.INTER_LINEAR)
        soft[oy:oy + big.shape[0], ox:ox + big.shape[1]] = big
        return SimpleNamespace(pose_landmarks=SimpleNamespace(landmark=points), segmentation_mask=soft)


def _fake_estimator(monkeypatch, lm, mask, **options):
    monkeypatch.setattr(PoseEstimator, "_check_mediapipe", lambda self: None)
    est = PoseEstimator("/nonexistent", **options)
    fake = _FakePose(lm, mask, est)
    monkeypatch.setattr(est, "_pose", lambda: fake)
    return est, fake


def test_canvas_resizes_pads_and_maps_back():
    image = np.zeros((128, 64, 3), np.uint8)
    canvas, (sx, sy), (ox, oy) = prepare_canvas(image, 320, 0.25)
    assert canvas.shape == (400, 400, 3) and sy == 2.5 and sx == 2.5
    assert (canvas[oy:oy + 320, ox:ox + 160] == 0).all() and canvas[0, 0, 0] == 114
    crop_pts = np.array([[10.0, 20.0, 0.1, 0.9], [63.0, 127.0, -0.2, 0.5]])
    norm = crop_pts.copy()
    norm[:, 0] = (crop_pts[:, 0] * sx + ox) / 400
    norm[:, 1] = (crop_pts[:, 1] * sy + oy) / 400
    norm[:, 2] = crop_pts[:, 2] * sx / 400
    np.testing.assert_allclose(landmarks_to_crop(norm, 400, (sx, sy), (ox, oy)), crop_pts, atol=1e-9)


def test_estimator_maps_model_output_back_to_the_crop(monkeypatch, front):
    lm, mask = front
    est, fake = _fake_estimator(monkeypatch, lm, mask)
    image = np.zeros((H, W, 3), np.uint8)
    (iuv,) = est.estimate([image], ["/x/a.jpg"], ["a.jpg"])
    assert fake.canvas_shapes == [(400, 400, 3)]          # upscaled to 320 rows, padded square
    direct = iuv_from_landmarks(lm, mask)
    assert iuv.shape == (H, W)
    assert (iuv.I == direct.I).mean() > 0.98
    assert est.settings()["input_height"] == 320 and est.settings()["approximates"] == "densepose"


def test_estimator_not_found(monkeypatch, front):
    lm, mask = front
    est, _ = _fake_estimator(monkeypatch, None, mask)
    assert est.estimate([np.zeros((H, W, 3), np.uint8)], ["p"], ["k"]) == [None]
    tiny = np.zeros_like(mask)
    tiny[60:62, 40:42] = True
    est, _ = _fake_estimator(monkeypatch, lm, tiny)
    assert est.estimate([np.zeros((H, W, 3), np.uint8)], ["p"], ["k"]) == [None]


def test_bad_options_are_one_sentence(monkeypatch):
    monkeypatch.setattr(PoseEstimator, "_check_mediapipe", lambda self: None)
    with pytest.raises(EstimatorError, match="mask_threshold"):
        build_estimator("pose", "/tmp", mask_threshold=2)
    with pytest.raises(EstimatorError, match="model_complexity"):
        build_estimator("pose", "/tmp", model_complexity=5)


@pytest.mark.skipif(HAS_MEDIAPIPE, reason="MediaPipe is installed")
def test_missing_mediapipe_says_how_to_install():
    with pytest.raises(EstimatorError, match="make install-pose"):
        build_estimator("pose", "/tmp")


DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "densepose-demo"


@pytest.mark.skipif(not HAS_MEDIAPIPE or not DEMO.is_dir(), reason="needs MediaPipe and shared/data")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # MediaPipe's protobuf use
def test_real_person_with_mediapipe():
    image = cv2.imread(str(DEMO / "demo_im.jpg"))[:, :, ::-1]
    inds = cv2.imread(str(DEMO / "demo_im_INDS.png"), cv2.IMREAD_UNCHANGED)
    ys, xs = np.nonzero(inds == 19)                       # the man walking towards the camera
    crop = np.ascontiguousarray(image[ys.min() - 10:ys.max() + 10, xs.min() - 10:xs.max() + 10])
    est = build_estimator("pose", str(DEMO))
    (iuv,) = est.estimate([crop], ["demo_im.jpg"], ["demo_im.jpg"])
    assert iuv is not None and iuv.shape == crop.shape[:2]
    present = set(np.unique(iuv.I))
    assert 2 in present and 1 not in present and {23, 24} <= present
    col = lambda parts: np.nonzero(np.isin(iuv.I, list(parts)))[1].mean()
    assert col(LEFT_ARM) > col(RIGHT_ARM)
    (none,) = est.estimate([np.full((128, 64, 3), 114, np.uint8)], ["blank"], ["blank"])
    assert none is None


def test_flipped_dsap_equals_the_dsap_of_the_mirrored_crop(front):
    """dsa.parts.flip_dsap with the `densepose` chart convention (the pose estimator's): the DSAP images of
    the mirrored crop, estimated on the mirrored crop, agree with the flipped DSAP images of the crop in at
    least 95% of the written cells (the estimator's geometry is not exactly mirror-symmetric: percentiles,
    rounding); swapping the parts without mirroring the charts agrees in far fewer."""
    from dsa.dsap import warp_dsap
    from dsa.parts import flip_dsap

    lm, mask = front
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    a = iuv_from_landmarks(lm, mask)
    b = iuv_from_landmarks(mirror_landmarks(lm, W), np.ascontiguousarray(mask[:, ::-1]))
    for size in (16, 32):
        want, written = warp_dsap(np.ascontiguousarray(image[:, ::-1]), b.I, b.U, b.V, size=size)
        mine = warp_dsap(image, a.I, a.U, a.V, size=size)[0]
        differ = lambda d: ((d != want).any(axis=1) & written).sum() / written.sum()  # noqa: E731
        assert differ(flip_dsap(mine, "densepose")) <= 0.05
        assert differ(mine[[FLIP_PARTNER[p] - 1 for p in range(1, 25)]]) >= 0.15
