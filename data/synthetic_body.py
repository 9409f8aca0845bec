"""The synthetic pedestrian: identities, their chart-space textures, a posed body and its ray caster.

The body is 16 capsules (torso, head, upper/lower arms and legs, hands, feet), each split into the
DensePose surface patches of :mod:`dsa.parts` (limbs and torso: front/back halves, head: right/left
halves, hands and feet: one patch each). Every patch has a (u, v) chart: ``u`` runs along the capsule's
axis (0 at the proximal joint, 1 at the distal end; for the torso 0 at the neck, for the head 0 at the
crown), ``v`` runs around it (front/back halves: 0..1 across the half; head: 0 at the face centre, 1 at
the back; hands/feet: the whole way round). So in a DSAP image (rows = U) every part stands upright.

Rendering is orthographic ray casting against the capsules (analytic, vectorised in NumPy): each pixel
gets the nearest hit's part I and chart (u, v). The colour of a body pixel is :func:`texture` at
(I, u, v) quantised to the 1/255 grid that the legacy IUV PNG stores, so the written ground truth samples
the texture exactly.

Coordinates: metres, y up, the camera looks along −z (the viewer is at +z). In the body frame the person
faces +z and their right-hand side is −x, so yaw 0 is a frontal view.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

#: Names of the keypoints (joint centres; "head" is the centre of the head, "neck" the base of the neck).
#: Left/right are the person's own, as in COCO and DensePose: in a frontal view "right_*" is on the
#: image's left.
KEYPOINT_NAMES: tuple[str, ...] = (
    "head", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
)

_SLEEVES = ("none", "short", "long")
_SHIRT_PATTERNS = ("solid", "solid", "hstripes", "vstripes", "checks", "twotone")
_FRONT_PRINTS = ("none", "disc", "bar", "zip")
_BACK_KINDS = ("none", "backpack", "stripes", "panel")


def quantise(x: np.ndarray) -> np.ndarray:
    """Chart coordinates snapped to the 1/255 grid of the IUV PNG (float64, clipped to [0, 1])."""
    return np.rint(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) * 255.0) / 255.0


def hsv_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """HSV in [0, 1] → RGB 0..255 integers."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _cloth_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A clothing colour: a third neutrals (black..white), the rest saturated or muted hues."""
    if rng.random() < 0.3:
        return hsv_rgb(0.0, 0.0, float(rng.uniform(0.08, 0.95)))
    return hsv_rgb(float(rng.random()), float(rng.uniform(0.3, 0.95)), float(rng.uniform(0.25, 0.95)))


@dataclass(frozen=True)
class Identity:
    """One person: body shape and clothing, all in chart space. Built by :func:`make_identity`."""

    pid: int
    height: float          # metres
    girth: float           # width multiplier of torso and limbs
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_back: float       # how far down the back of the head the hair reaches (u)
    hat: tuple[int, int, int] | None
    shirt: tuple[int, int, int]
    shirt2: tuple[int, int, int]
    shirt_pattern: str
    stripe_period: float
    sleeves: str
    front_print: str
    print_colour: tuple[int, int, int]
    back_kind: str
    back_colour: tuple[int, int, int]
    trousers: tuple[int, int, int]
    shorts: bool
    shoes: tuple[int, int, int]
    belt: tuple[int, int, int] | None


def make_identity(seed: int, pid: int) -> Identity:
    """The identity ``pid`` of the dataset with ``seed`` (deterministic; independent of other pids)."""
    rng = np.random.default_rng([seed, 1, pid])
    skin = hsv_rgb(float(rng.uniform(0.03, 0.09)), float(rng.uniform(0.25, 0.6)), float(rng.uniform(0.35, 0.95)))
    hair = hsv_rgb(float(rng.uniform(0.02, 0.12)), float(rng.uniform(0.1, 0.8)), float(rng.uniform(0.05, 0.6)))
    shirt = _cloth_colour(rng)
    shirt2 = _cloth_colour(rng)
    front = str(rng.choice(_FRONT_PRINTS))
    back = str(rng.choice(_BACK_KINDS))
    return Identity(
        pid=pid,
        height=float(rng.uniform(1.55, 1.92)),
        girth=float(rng.uniform(0.85, 1.2)),
        skin=skin,
        hair=hair,
        hair_back=float(rng.uniform(0.55, 1.0)),
        hat=_cloth_colour(rng) if rng.random() < 0.12 else None,
        shirt=shirt,
        shirt2=shirt2,
        shirt_pattern=str(rng.choice(_SHIRT_PATTERNS)),
        stripe_period=float(rng.uniform(0.08, 0.2)),
        sleeves=str(rng.choice(_SLEEVES, p=[0.15, 0.45, 0.4])),
        front_print=front,
        print_colour=_cloth_colour(rng),
        back_kind=back,
        back_colour=_cloth_colour(rng),
        trousers=_cloth_colour(rng),
        shorts=bool(rng.random() < 0.25),
        shoes=hsv_rgb(0.0, 0.0, float(rng.uniform(0.05, 0.9))) if rng.random() < 0.7 else _cloth_colour(rng),
        belt=hsv_rgb(0.05, 0.5, float(rng.uniform(0.1, 0.4))) if rng.random() < 0.4 else None,
    )


def _shirt(ident: Identity, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shirt colour at chart coordinates (torso and sleeves share the pattern)."""
    c1, c2 = np.asarray(ident.shirt, np.uint8), np.asarray(ident.shirt2, np.uint8)
    p, period = ident.shirt_pattern, ident.stripe_period
    if p == "hstripes":
        alt = np.floor(u / period).astype(np.int64) % 2 == 1
    elif p == "vstripes":
        alt = np.floor(v / (period * 1.5)).astype(np.int64) % 2 == 1
    elif p == "checks":
        alt = (np.floor(u / period) + np.floor(v / period)).astype(np.int64) % 2 == 1
    elif p == "twotone":  # a yoke: shoulders and the top of the sleeves
        alt = u < 0.38
    else:
        alt = np.zeros(u.shape, bool)
    return np.where(alt[:, None], c2, c1)


def texture(ident: Identity, I: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB uint8 [N, 3] of identity ``ident`` at parts ``I`` (1..24) and chart coordinates (u, v).

    (u, v) are first quantised to the 1/255 grid (:func:`quantise`), so the texture is a function of
    exactly what a legacy IUV PNG stores. Background (I = 0) is black.
    """
    I = np.asarray(I).reshape(-1).astype(np.int64)
    u = quantise(np.asarray(u).reshape(-1))
    v = quantise(np.asarray(v).reshape(-1))
    out = np.zeros((I.size, 3), np.uint8)
    skin = np.asarray(ident.skin, np.uint8)

    def put(mask: np.ndarray, colour) -> None:
        out[mask] = colour if np.ndim(colour) == 1 or isinstance(colour, tuple) else colour[mask]

    shirt = _shirt(ident, u, v)
    # torso (1 back, 2 front; u = 0 at the neck): neckline in front, shirt, trousers below the waist
    torso = (I == 1) | (I == 2)
    front, back = I == 2, I == 1
    put(torso, shirt)
    waist = 0.8
    put(torso & (u > waist), ident.trousers)
    if ident.belt is not None:
        put(torso & (u > waist) & (u <= waist + 0.035), ident.belt)
    put(front & (u < 0.1) & (np.abs(v - 0.5) < 0.16), skin)
    if ident.front_print == "disc":
        put(front & (((u - 0.38) / 0.13) ** 2 + ((v - 0.5) / 0.16) ** 2 < 1.0), ident.print_colour)
    elif ident.front_print == "bar":
        put(front & (np.abs(u - 0.4) < 0.07) & (np.abs(v - 0.5) < 0.3), ident.print_colour)
    elif ident.front_print == "zip":
        put(front & (u >= 0.1) & (u <= waist) & (np.abs(v - 0.5) < 0.035), ident.print_colour)
    if ident.back_kind == "backpack":
        put(back & (u > 0.14) & (u < 0.67) & (np.abs(v - 0.5) < 0.3), ident.back_colour)
        put(front & (u < 0.45) & (np.abs(np.abs(v - 0.5) - 0.28) < 0.05), ident.back_colour)  # straps
    elif ident.back_kind == "stripes":
        put(back & (u > 0.15) & (u < 0.65) & (np.floor(u / 0.08).astype(np.int64) % 2 == 0), ident.back_colour)
    elif ident.back_kind == "panel":
        put(back & (np.abs(u - 0.4) < 0.16) & (np.abs(v - 0.5) < 0.22), ident.back_colour)
    # arms: upper 15..18, lower 19..22; hands 3, 4 are skin
    upper_arm = (I >= 15) & (I <= 18)
    lower_arm = (I >= 19) & (I <= 22)
    put(upper_arm | lower_arm | (I == 3) | (I == 4), skin)
    sleeve_upper = {"none": 0.12, "short": 0.55, "long": 1.01}[ident.sleeves]
    put(upper_arm & (u < sleeve_upper), shirt)
    if ident.sleeves == "long":
        put(lower_arm & (u < 0.82), shirt)
    # legs: upper 7..10, lower 11..14, feet 5, 6
    upper_leg = (I >= 7) & (I <= 10)
    lower_leg = (I >= 11) & (I <= 14)
    put(upper_leg, ident.trousers)
    put(lower_leg, skin if ident.shorts else ident.trousers)
    if ident.shorts:
        put(upper_leg & (u > 0.7), skin)
    feet = (I == 5) | (I == 6)
    put(feet, ident.shoes)
    put(feet & (np.abs(v - 0.5) < 0.12), np.asarray(ident.shoes, np.uint8) // 2)  # sole
    # head 23, 24: u from crown to chin, v from face centre (0) to back (1)
    head = (I == 23) | (I == 24)
    put(head, skin)
    put(head & ((u < 0.3) | ((v > 0.55) & (u < ident.hair_back))), ident.hair)
    put(head & (np.abs(u - 0.5) < 0.035) & (np.abs(v - 0.16) < 0.05), np.asarray(ident.skin, np.uint8) // 3)
    if ident.hat is not None:
        put(head & (u < 0.26), ident.hat)
    return out


# --------------------------------------------------------------------------- the posed body


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _swing(length: float, angle: float, side: float = 0.0) -> np.ndarray:
    """A limb vector of ``length`` hanging down, swung forward (+z) by ``angle``, sideways by ``side``."""
    return length * np.array([side, -np.cos(angle), np.sin(angle)])


def pose_skeleton(ident: Identity, phase: float, stride: float) -> dict[str, np.ndarray]:
    """Joint positions (body frame, metres) of ``ident`` at walking ``phase`` (radians) with ``stride``
    (hip swing amplitude, radians; 0 = standing). Keys: :data:`KEYPOINT_NAMES` plus helper points."""
    k = ident.height / 1.75
    g = ident.girth
    j: dict[str, np.ndarray] = {}
    j["pelvis"] = np.array([0.0, 0.95 * k, 0.0])
    j["neck"] = np.array([0.0, 1.47 * k, 0.0])
    j["head"] = np.array([0.0, 1.6 * k + 0.02, 0.01])
    for side, sx, ph in (("right", -1.0, phase), ("left", 1.0, phase + np.pi)):
        hip = np.array([sx * 0.095 * g, 0.93 * k, 0.0])
        thigh = stride * np.sin(ph)
        knee_flex = 0.08 + 1.3 * stride * max(0.0, np.cos(ph)) ** 2
        j[f"{side}_hip"] = hip
        j[f"{side}_knee"] = hip + _swing(0.44 * k, thigh)
        j[f"{side}_ankle"] = j[f"{side}_knee"] + _swing(0.42 * k, thigh - knee_flex)
        foot_pitch = 0.5 * (thigh - knee_flex)
        j[f"{side}_heel"] = j[f"{side}_ankle"] + np.array([0.0, -0.035 * k, -0.04 * k])
        j[f"{side}_toe"] = j[f"{side}_heel"] + 0.17 * k * np.array([0.0, np.sin(foot_pitch) * 0.5, 1.0])
        shoulder = np.array([sx * 0.21 * g, 1.42 * k, 0.0])
        arm = -0.9 * stride * np.sin(ph)
        elbow_flex = 0.15 + 0.6 * stride * max(0.0, np.sin(ph + np.pi))
        j[f"{side}_shoulder"] = shoulder
        j[f"{side}_elbow"] = shoulder + _swing(0.29 * k, arm, sx * 0.14)
        j[f"{side}_wrist"] = j[f"{side}_elbow"] + _swing(0.26 * k, arm + elbow_flex, sx * 0.05)
        j[f"{side}_hand"] = j[f"{side}_wrist"] + _swing(0.07 * k, arm + elbow_flex, sx * 0.04)
    return j


@dataclass
class Capsule:
    """A capsule from ``a`` to ``b`` with an elliptic cross-section (semi-axes ``rx`` along ``e1``,
    ``rz`` along ``e2``) and end caps of length ``rc``. ``kind`` says how it splits into DensePose parts:
    ``"fb"`` front/back halves (``parts`` = (front, back)), ``"lr"`` right/left halves
    (``parts`` = (right, left); ``e1`` points to the person's right), ``"full"`` one part."""

    a: np.ndarray
    b: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    rx: float
    rz: float
    rc: float
    kind: str
    parts: tuple[int, ...]


def _capsule(a, b, ref, rx, rz, rc, kind, parts) -> Capsule:
    w = b - a
    w = w / np.linalg.norm(w)
    e2 = ref - np.dot(ref, w) * w
    e2 = e2 / np.linalg.norm(e2)
    e1 = np.cross(w, e2)
    return Capsule(a, b, e1, e2, rx, rz, rc, kind, parts)


def body_capsules(ident: Identity, joints: dict[str, np.ndarray]) -> list[Capsule]:
    """The 16 capsules of the posed body (body frame), with their DensePose part ids."""
    k, g = ident.height / 1.75, ident.girth
    fwd, up = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
    j = joints
    caps = [
        # torso: axis from the neck down to the pelvis, so u = 0 at the neck (upright DSAP images)
        _capsule(j["neck"] - [0, 0.05 * k, 0], j["pelvis"] + [0, 0.02 * k, 0], fwd,
                 0.19 * g, 0.12 * g, 0.1 * k, "fb", (2, 1)),
        # head: axis from crown to chin, so u = 0 at the crown; e1 = person's right (−x)
        _capsule(j["head"] + [0, 0.02 * k, 0], j["head"] - [0, 0.02 * k, 0], fwd,
                 0.08 * k, 0.095 * k, 0.1 * k, "lr", (23, 24)),
    ]
    for side, hand, foot, ul, ll, ua, la in (
        ("right", 3, 6, (9, 7), (13, 11), (18, 16), (22, 20)),
        ("left", 4, 5, (10, 8), (14, 12), (17, 15), (21, 19)),
    ):
        caps += [
            _capsule(j[f"{side}_hip"], j[f"{side}_knee"], fwd, 0.088 * g, 0.09 * g, 0.07 * g, "fb", ul),
            _capsule(j[f"{side}_knee"], j[f"{side}_ankle"], fwd, 0.064 * g, 0.068 * g, 0.055 * g, "fb", ll),
            _capsule(j[f"{side}_heel"], j[f"{side}_toe"], up, 0.045 * k, 0.04 * k, 0.035 * k, "full", (foot,)),
            _capsule(j[f"{side}_shoulder"], j[f"{side}_elbow"], fwd, 0.058 * g, 0.058 * g, 0.05 * g, "fb", ua),
            _capsule(j[f"{side}_elbow"], j[f"{side}_wrist"], fwd, 0.046 * g, 0.046 * g, 0.04 * g, "fb", la),
            _capsule(j[f"{side}_wrist"], j[f"{side}_hand"], fwd, 0.035 * k, 0.025 * k, 0.03 * k, "full", (hand,)),
        ]
    return caps


def transform_capsule(c: Capsule, rot: np.ndarray, shift: np.ndarray | None = None) -> Capsule:
    """The capsule rotated by ``rot`` (3×3) and then shifted."""
    t = np.zeros(3) if shift is None else shift
    return Capsule(rot @ c.a + t, rot @ c.b + t, rot @ c.e1, rot @ c.e2, c.rx, c.rz, c.rc, c.kind, c.parts)


@dataclass
class Raster:
    """Orthographic pixel grid: pixel (row i, column j) centre is at x = x0 + (j + 0.5)/scale,
    y = y0 − (i + 0.5)/scale (camera space, metres)."""

    height: int
    width: int
    x0: float
    y0: float
    scale: float  # pixels per metre

    def project(self, p: np.ndarray) -> np.ndarray:
        """Camera-space points [..., 3] → pixel coordinates (x, y), pixel centres at integers."""
        return np.stack([(p[..., 0] - self.x0) * self.scale - 0.5, (self.y0 - p[..., 1]) * self.scale - 0.5], -1)


def raycast(capsules: list[Capsule], raster: Raster) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest capsule hit per pixel: ``(I uint8, U float64, V float64, normal float64 [H, W, 3])``.

    Camera-space capsules, rays along −z. Only the pixels in each capsule's projected bounding box are
    tested; ties keep the earlier capsule (deterministic).
    """
    H, W = raster.height, raster.width
    depth = np.full((H, W), np.inf)
    I = np.zeros((H, W), np.uint8)
    U = np.zeros((H, W))
    V = np.zeros((H, W))
    N = np.zeros((H, W, 3))
    for c in capsules:
        axis = c.b - c.a
        length = float(np.linalg.norm(axis))
        w = axis / length
        r = max(c.rx, c.rz, c.rc)
        (xa, ya), (xb, yb) = raster.project(np.stack([c.a, c.b]))
        rp = r * raster.scale + 1
        j0, j1 = max(int(np.floor(min(xa, xb) - rp)), 0), min(int(np.ceil(max(xa, xb) + rp)) + 1, W)
        i0, i1 = max(int(np.floor(min(ya, yb) - rp)), 0), min(int(np.ceil(max(ya, yb) + rp)) + 1, H)
        if j0 >= j1 or i0 >= i1:
            continue
        jj, ii = np.meshgrid(np.arange(j0, j1), np.arange(i0, i1))
        rel_x = raster.x0 + (jj + 0.5) / raster.scale - c.a[0]
        rel_y = raster.y0 - (ii + 0.5) / raster.scale - c.a[1]
        rel_z = 10.0 - c.a[2]  # ray origin at z = 10, direction (0, 0, -1)
        # canonical frame: unit-radius capsule along +y from 0 to h
        ox = (rel_x * c.e1[0] + rel_y * c.e1[1] + rel_z * c.e1[2]) / c.rx
        oy = (rel_x * w[0] + rel_y * w[1] + rel_z * w[2]) / c.rc
        oz = (rel_x * c.e2[0] + rel_y * c.e2[1] + rel_z * c.e2[2]) / c.rz
        dx, dy, dz = -c.e1[2] / c.rx, -w[2] / c.rc, -c.e2[2] / c.rz
        h = length / c.rc
        t = np.full(ox.shape, np.inf)
        a_cyl = dx * dx + dz * dz
        if a_cyl > 1e-12:
            b_cyl = ox * dx + oz * dz
            disc = b_cyl * b_cyl - a_cyl * (ox * ox + oz * oz - 1.0)
            tc = (-b_cyl - np.sqrt(np.maximum(disc, 0.0))) / a_cyl
            yc = oy + tc * dy
            t = np.where((disc >= 0) & (yc >= 0) & (yc <= h), tc, t)
        a_sph = dx * dx + dy * dy + dz * dz
        for cy in (0.0, h):
            oyc = oy - cy
            b_s = ox * dx + oyc * dy + oz * dz
            disc = b_s * b_s - a_sph * (ox * ox + oyc * oyc + oz * oz - 1.0)
            ts = (-b_s - np.sqrt(np.maximum(disc, 0.0))) / a_sph
            t = np.where((disc >= 0) & (ts < t), ts, t)
        sub = depth[i0:i1, j0:j1]
        hit = t < sub
        if not hit.any():
            continue
        t = t[hit]
        qx, qy, qz = ox[hit] + t * dx, oy[hit] + t * dy, oz[hit] + t * dz
        u = np.clip((qy + 1.0) / (h + 2.0), 0.0, 1.0)
        theta = np.arctan2(qx, qz)  # 0 = facing e2 (front), +pi/2 = e1 side
        if c.kind == "fb":
            is_front = np.abs(theta) <= np.pi / 2
            tb = np.where(theta > 0, theta - np.pi, theta + np.pi)
            v = np.where(is_front, theta, tb) / np.pi + 0.5
            part = np.where(is_front, c.parts[0], c.parts[1])
        elif c.kind == "lr":
            v = np.abs(theta) / np.pi
            part = np.where(qx >= 0, c.parts[0], c.parts[1])
        else:
            v = (theta + np.pi) / (2 * np.pi)
            part = np.full(t.shape, c.parts[0])
        ncy = qy - np.clip(qy, 0.0, h)
        n = (np.outer(qx / c.rx, c.e1) + np.outer(ncy / c.rc, w) + np.outer(qz / c.rz, c.e2))
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        sub[hit] = t
        I[i0:i1, j0:j1][hit] = part
        U[i0:i1, j0:j1][hit] = u
        V[i0:i1, j0:j1][hit] = np.clip(v, 0.0, 1.0)
        N[i0:i1, j0:j1][hit] = n
    return I, U, V, N


def posed_body(ident: Identity, phase: float, stride: float, yaw: float, pitch: float
               ) -> tuple[list[Capsule], np.ndarray]:
    """Camera-space capsules and keypoints [K, 3] of ``ident`` walking at ``phase`` with ``stride``,
    turned by ``yaw`` (0 = facing the camera, pi = back view) and seen from ``pitch`` above."""
    joints = pose_skeleton(ident, phase, stride)
    rot = _rot_x(pitch) @ _rot_y(yaw)
    caps = [transform_capsule(c, rot) for c in body_capsules(ident, joints)]
    kps = np.stack([rot @ joints[n] for n in KEYPOINT_NAMES])
    return caps, kps
