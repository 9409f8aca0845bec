"""Derive DensePose-style (I, U, V) maps from 33 pose landmarks and a person mask (pure NumPy).

This is the geometry behind the ``pose`` estimator: it **approximates DensePose**, it does not
reproduce it.  The body is modelled as capsules (torso, upper/lower arms and legs, hands, feet,
head) spanned between MediaPipe Pose landmarks; every mask pixel goes to the nearest capsule
(distance to the axis minus the capsule's radius), which gives the body part.  Then:

- **left/right** comes from the landmarks' own sides (MediaPipe labels the person's anatomical
  left/right, as DensePose does);
- **front/back** faces come from the facing direction: the sign of the cross product of the
  left→right shoulder/hip vector with the torso's up vector, falling back on the nose's depth
  against the shoulders' when the person is seen side-on.  Legs show their front faces when the
  person faces the camera; DensePose labels the arms the other way round (a person facing the
  camera shows mostly "upper/lower arm back" with a strip of "front" on the outer side), and this
  module follows DensePose there;
- **u** runs along the segment and **v** across it, each flipped per part so that the charts
  run the way DensePose's do on real DensePose output (the orientation table ``_CHART`` below
  was read off the DensePose demo image: torso u from shoulders to hips and v towards the
  person's right, head v from chin to crown and u around the head).

Landmark coordinates are in crop pixels: ``landmarks[k] = (x, y, z, visibility)`` with MediaPipe's
33-landmark order; ``z`` is MediaPipe's relative depth (smaller = nearer the camera).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dsa.iuv import IUV

#: MediaPipe Pose landmark order (33 landmarks).
LANDMARK_NAMES: tuple[str, ...] = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_pinky", "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
NUM_LANDMARKS = len(LANDMARK_NAMES)
_L = {name: i for i, name in enumerate(LANDMARK_NAMES)}

#: Index of each landmark's left/right partner (a mirror image swaps them).
LANDMARK_FLIP: np.ndarray = np.array(
    [_L[n.replace("left", "#").replace("right", "left").replace("#", "right")] for n in LANDMARK_NAMES]
)

_FACE = [_L[n] for n in LANDMARK_NAMES[:11]]


@dataclass(frozen=True)
class GeometrySettings:
    """Tunable constants of the derivation (lengths in units of the torso length)."""

    min_visibility: float = 0.5   # a limb segment is used when both its landmarks are this visible
    max_distance: float = 0.35    # mask pixels farther than this from every capsule are background
    arm_front_strip: float = 0.35  # facing the camera: outer fraction of an arm labelled "front"
    side_view: float = 0.25       # |normalised shoulder/torso cross product| below this = side-on

    def to_dict(self) -> dict:
        return asdict(self)


# Segment table: name, proximal landmark(s), distal landmark(s), side, radius (torso lengths).
# A landmark entry is a tuple of indices whose mean is the point.
_Seg = tuple[str, tuple[int, ...], tuple[int, ...], str, float]
_LIMBS: tuple[_Seg, ...] = tuple(
    seg
    for side in ("right", "left")
    for seg in (
        (f"upper_arm_{side}", (_L[f"{side}_shoulder"],), (_L[f"{side}_elbow"],), side, 0.13),
        (f"lower_arm_{side}", (_L[f"{side}_elbow"],), (_L[f"{side}_wrist"],), side, 0.10),
        (f"hand_{side}", (_L[f"{side}_wrist"],), (_L[f"{side}_index"], _L[f"{side}_pinky"]), side, 0.08),
        (f"upper_leg_{side}", (_L[f"{side}_hip"],), (_L[f"{side}_knee"],), side, 0.17),
        (f"lower_leg_{side}", (_L[f"{side}_knee"],), (_L[f"{side}_ankle"],), side, 0.12),
        (f"foot_{side}", (_L[f"{side}_ankle"],), (_L[f"{side}_foot_index"],), side, 0.07),
    )
)

# DensePose part ids per segment kind and side: (front face, back face) for faced parts, a single
# id for hands and feet.  From dsa.parts.PART_NAMES.
_PART_IDS: dict[str, dict[str, tuple[int, int] | int]] = {
    "right": {"upper_arm": (18, 16), "lower_arm": (22, 20), "hand": 3,
              "upper_leg": (9, 7), "lower_leg": (13, 11), "foot": 6},
    "left": {"upper_arm": (17, 15), "lower_arm": (21, 19), "hand": 4,
             "upper_leg": (10, 8), "lower_leg": (14, 12), "foot": 5},
}

# Chart orientation per part id: (u runs proximal→distal?, v increases laterally?).  For the torso
# "laterally" means towards the person's right.  Read off real DensePose output (module docstring).
_CHART: dict[int, tuple[bool, bool]] = {
    1: (True, True), 2: (True, True),
    3: (True, True), 4: (True, True), 5: (True, True), 6: (True, True),
    7: (True, True), 8: (True, True), 9: (False, False), 10: (False, False),
    11: (False, True), 12: (False, True), 13: (True, True), 14: (True, True),
    15: (True, True), 16: (True, True), 17: (True, True), 18: (True, True),
    19: (False, False), 20: (False, False), 21: (True, False), 22: (True, False),
}

HEAD_RIGHT, HEAD_LEFT, TORSO_BACK, TORSO_FRONT = 23, 24, 1, 2


def _unit(v: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-6 else fallback


def mirror_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally mirrored crop (x → width − 1 − x, left/right swapped),
    i.e. what a pose model reports on the mirror image."""
    out = np.asarray(landmarks, dtype=np.float64)[LANDMARK_FLIP].copy()
    out[:, 0] = (width - 1) - out[:, 0]
    return out


def facing_front(landmarks: np.ndarray, settings: GeometrySettings = GeometrySettings()) -> bool:
    """True when the person faces the camera.

    Facing the camera, the person's left shoulder/hip is on the image's right: the left→right
    vector crossed with the torso's up vector is negative in image coordinates (y down).  Side-on
    (small normalised cross product) the nose's depth decides: nearer than the shoulders = front.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    across = (lm[_L["left_shoulder"], :2] - lm[_L["right_shoulder"], :2]) + (
        lm[_L["left_hip"], :2] - lm[_L["right_hip"], :2])
    up = (lm[[_L["left_shoulder"], _L["right_shoulder"]], :2].mean(0)
          - lm[[_L["left_hip"], _L["right_hip"]], :2].mean(0))
    cross = across[0] * up[1] - across[1] * up[0]
    norm = float(np.linalg.norm(across) * np.linalg.norm(up))
    if norm > 1e-9 and abs(cross) / norm >= settings.side_view:
        return bool(cross < 0)
    nose_z = lm[_L["nose"], 2]
    shoulder_z = lm[[_L["left_shoulder"], _L["right_shoulder"]], 2].mean()
    return bool(nose_z < shoulder_z)


def _segment_coords(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For points p [N, 2] and segment a→b: (distance to the segment, t along it clamped to [0, 1],
    signed perpendicular offset along the segment's left normal)."""
    d = b - a
    length2 = float(d @ d)
    if length2 < 1e-9:
        rel = p - a
        return np.hypot(rel[:, 0], rel[:, 1]), np.zeros(len(p)), np.zeros(len(p))
    rel = p - a
    t = np.clip(rel @ d / length2, 0.0, 1.0)
    closest = a + t[:, None] * d
    dist = np.hypot(*(p - closest).T)
    normal = np.array([-d[1], d[0]]) / np.sqrt(length2)
    return dist, t, rel @ normal


def iuv_from_landmarks(landmarks: np.ndarray, mask: np.ndarray,
                       settings: GeometrySettings = GeometrySettings()) -> IUV | None:
    """(I, U, V) maps of the mask's size from 33 landmarks (crop pixels) and a boolean person mask.

    Returns None when the mask is empty or the torso landmarks are degenerate (no person).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (NUM_LANDMARKS, 4):
        raise ValueError(f"landmarks must be {NUM_LANDMARKS}×4 (x, y, z, visibility), got {lm.shape}")
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    xy, vis = lm[:, :2], lm[:, 3]

    sh_mid = xy[[_L["left_shoulder"], _L["right_shoulder"]]].mean(0)
    hip_mid = xy[[_L["left_hip"], _L["right_hip"]]].mean(0)
    torso_len = float(np.linalg.norm(sh_mid - hip_mid))
    if torso_len < 2.0:
        return None
    up = (sh_mid - hip_mid) / torso_len
    right_dir = _unit((xy[_L["right_shoulder"]] - xy[_L["left_shoulder"]])
                      + (xy[_L["right_hip"]] - xy[_L["left_hip"]]), np.array([-up[1], up[0]]))
    front = facing_front(lm, settings)

    # Candidate capsules: name, side, end points, radius.
    names: list[str] = []
    sides: list[str] = []
    ends: list[tuple[np.ndarray, np.ndarray]] = []
    radii: list[float] = []
    half_width = 0.5 * max(np.linalg.norm(xy[_L["left_shoulder"]] - xy[_L["right_shoulder"]]),
                           np.linalg.norm(xy[_L["left_hip"]] - xy[_L["right_hip"]]))
    names.append("torso"), sides.append(""), ends.append((sh_mid, hip_mid))
    radii.append(max(half_width, 0.25 * torso_len))

    face = [i for i in _FACE if vis[i] >= settings.min_visibility] or _FACE
    head_c = xy[face].mean(0)
    ear_gap = float(np.linalg.norm(xy[_L["left_ear"]] - xy[_L["right_ear"]]))
    head_r = max(0.6 * ear_gap, 0.28 * torso_len)
    head_up = _unit(head_c - sh_mid, up)
    chin, crown = head_c - 0.9 * head_r * head_up, head_c + 0.9 * head_r * head_up
    names.append("head"), sides.append(""), ends.append((head_c - 0.3 * head_r * head_up,
                                                          head_c + 0.3 * head_r * head_up))
    radii.append(0.75 * head_r)

    for name, prox, dist_, side, radius in _LIMBS:
        if min(vis[list(prox + dist_)]) < settings.min_visibility:
            continue
        names.append(name), sides.append(side)
        ends.append((xy[list(prox)].mean(0), xy[list(dist_)].mean(0)))
        radii.append(radius * torso_len)

    n_seg = len(names)
    dist = np.empty((n_seg, len(pts)))
    along = np.empty((n_seg, len(pts)))
    perp = np.empty((n_seg, len(pts)))
    for k, (a, b) in enumerate(ends):
        dist[k], along[k], perp[k] = _segment_coords(pts, a, b)
        dist[k] -= radii[k]
    best = np.argmin(dist, axis=0)
    keep = dist[best, np.arange(len(pts))] <= settings.max_distance * torso_len

    I = np.zeros((h, w), np.uint8)
    U = np.zeros((h, w), np.float32)
    V = np.zeros((h, w), np.float32)
    for k, name in enumerate(names):
        sel = keep & (best == k)
        if not sel.any():
            continue
        py, px = ys[sel], xs[sel]
        a, b = ends[k]
        if name == "head":
            labels, u, v = _head_chart(pts[sel], head_c, head_up, right_dir, chin, crown, front)
        else:
            t, s = along[k, sel], perp[k, sel]
            # orient the across offset towards the person's right, normalise to [0, 1]
            d = b - a
            normal = np.array([-d[1], d[0]])
            if normal @ right_dir < 0:
                s = -s
            half = max(float(np.percentile(np.abs(s), 95)), 1.0)
            s_right = np.clip(0.5 + 0.5 * s / half, 0.0, 1.0)   # 0 = person's left edge
            labels = _labels_for(name, sides[k], front, s_right, settings.arm_front_strip)
            u, v = _orient(labels, t, s_right, sides[k])
        I[py, px], U[py, px], V[py, px] = labels, u, v
    if not (I > 0).any():
        return None
    return IUV(I=I, U=U, V=V)


def _labels_for(name: str, side: str, front: bool, s_right: np.ndarray, strip: float) -> np.ndarray:
    """Part ids for the pixels of one segment (arrays because arms split into two faces)."""
    if name == "torso":
        return np.full(len(s_right), TORSO_FRONT if front else TORSO_BACK, np.uint8)
    kind = name.rsplit("_", 1)[0]
    ids = _PART_IDS[side][kind]
    if isinstance(ids, int):
        return np.full(len(s_right), ids, np.uint8)
    front_id, back_id = ids
    if kind in ("upper_arm", "lower_arm"):
        # DensePose: an arm seen from the front shows mostly its "back" chart, a strip of
        # "front" on the outer side; seen from behind, the "front" chart.
        if not front:
            return np.full(len(s_right), front_id, np.uint8)
        lateral = s_right if side == "right" else 1.0 - s_right
        outer = lateral >= 1.0 - strip
        return np.where(outer, front_id, back_id).astype(np.uint8)
    return np.full(len(s_right), front_id if front else back_id, np.uint8)


def _orient(labels: np.ndarray, t: np.ndarray, s_right: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply the per-part chart orientation table to (t along, s towards the person's right)."""
    lateral = s_right if side in ("right", "") else 1.0 - s_right
    u = np.empty(len(t))
    v = np.empty(len(t))
    for part in np.unique(labels):
        sel = labels == part
        forward, outward = _CHART[int(part)]
        u[sel] = t[sel] if forward else 1.0 - t[sel]
        v[sel] = lateral[sel] if outward else 1.0 - lateral[sel]
    return u.astype(np.float32), v.astype(np.float32)


def _head_chart(p: np.ndarray, centre: np.ndarray, up: np.ndarray, right_dir: np.ndarray,
                chin: np.ndarray, crown: np.ndarray, front: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head labels (right/left half) and charts: v from chin (0) to crown (1); u around the head
    (DensePose: right half 0 at the back → 1 at the face, left half 0 at the face → 1 at the back)."""
    axis = crown - chin
    v = np.clip((p - chin) @ axis / float(axis @ axis), 0.0, 1.0)
    side_axis = np.array([-up[1], up[0]])
    if side_axis @ right_dir < 0:
        side_axis = -side_axis
    offset = (p - centre) @ side_axis
    half = max(float(np.percentile(np.abs(offset), 95)), 1.0)
    a = np.clip(offset / half, -1.0, 1.0)               # +1 = person's right edge
    labels = np.where(a >= 0, HEAD_RIGHT, HEAD_LEFT).astype(np.uint8)
    angle = np.arcsin(np.abs(a)) / np.pi               # 0 at the visible centre → 0.5 at the ear
    if front:   # the face is visible: right half 1 → 0.5, left half 0 → 0.5
        u = np.where(labels == HEAD_RIGHT, 1.0 - angle, angle)
    else:       # the back of the head: right half 0 → 0.5, left half 1 → 0.5
        u = np.where(labels == HEAD_RIGHT, angle, 1.0 - angle)
    return labels, u.astype(np.float32), v.astype(np.float32)
