"""The 24 DensePose surface parts and the two-level merge (docs/DESIGN.md §3).

This module is the single table that everything else reads: the DSAG-Stream's
merging, the ``inspect`` montages, flip handling and the estimators' labels.

Part indices follow DensePose: 0 is background, 1..24 are body parts.  Arrays
indexed by part use ``part - 1`` (0-based, length 24).
"""
from __future__ import annotations

import numpy as np

NUM_PARTS = 24

#: DensePose part names, index = part id (0 = background).
PART_NAMES: tuple[str, ...] = (
    "background",
    "torso back",
    "torso front",
    "right hand",
    "left hand",
    "left foot",
    "right foot",
    "upper leg right back",
    "upper leg left back",
    "upper leg right front",
    "upper leg left front",
    "lower leg right back",
    "lower leg left back",
    "lower leg right front",
    "lower leg left front",
    "upper arm left back",
    "upper arm right back",
    "upper arm left front",
    "upper arm right front",
    "lower arm left back",
    "lower arm right back",
    "lower arm left front",
    "lower arm right front",
    "head right",
    "head left",
)

#: Horizontal-flip partner of each part id (0 and the torso map to themselves).
FLIP_PARTNER: tuple[int, ...] = (
    0, 1, 2, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13,
    16, 15, 18, 17, 20, 19, 22, 21, 24, 23,
)

#: Level 1 (24 -> 13): left/right partners summed.  Each entry lists part ids.
LEVEL1_GROUPS: tuple[tuple[int, ...], ...] = (
    (1,), (2,), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14),
    (15, 16), (17, 18), (19, 20), (21, 22), (23, 24),
)
LEVEL1_NAMES: tuple[str, ...] = (
    "torso back", "torso front", "hands", "feet",
    "upper legs back", "upper legs front", "lower legs back", "lower legs front",
    "upper arms back", "upper arms front", "lower arms back", "lower arms front", "head",
)

#: Level 2 (13 -> 8): front/back faces summed.  Each entry lists level-1 indices (0-based).
LEVEL2_GROUPS: tuple[tuple[int, ...], ...] = (
    (0, 1),    # torso
    (2,),      # hands
    (3,),      # feet
    (4, 5),    # upper legs
    (6, 7),    # lower legs
    (8, 9),    # upper arms
    (10, 11),  # lower arms
    (12,),     # head
)
GROUP_NAMES: tuple[str, ...] = (
    "torso", "hands", "feet", "upper legs", "lower legs", "upper arms", "lower arms", "head",
)
NUM_LEVEL1 = len(LEVEL1_GROUPS)
NUM_GROUPS = len(LEVEL2_GROUPS)


def _index_of(groups: tuple[tuple[int, ...], ...], n: int, offset: int) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        for m in members:
            out[m - offset] = g
    assert (out >= 0).all(), "every member must belong to one group"
    return out


#: For part index p (0-based, 0..23): its level-1 group (0..12).
PART_TO_LEVEL1: np.ndarray = _index_of(LEVEL1_GROUPS, NUM_PARTS, offset=1)
#: For level-1 group j (0..12): its level-2 group (0..7).
LEVEL1_TO_GROUP: np.ndarray = _index_of(LEVEL2_GROUPS, NUM_LEVEL1, offset=0)
#: For part index p (0-based, 0..23): its final merged group (0..7).
PART_TO_GROUP: np.ndarray = LEVEL1_TO_GROUP[PART_TO_LEVEL1]


def merge_matrix(level: int) -> np.ndarray:
    """0/1 matrix M with ``merged = M @ branches`` (level 1: 13×24, level 2: 8×13)."""
    if level == 1:
        src, n_out, n_in = PART_TO_LEVEL1, NUM_LEVEL1, NUM_PARTS
    elif level == 2:
        src, n_out, n_in = LEVEL1_TO_GROUP, NUM_GROUPS, NUM_LEVEL1
    else:
        raise ValueError(f"merge level must be 1 or 2, not {level}")
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[src, np.arange(n_in)] = 1.0
    return m


def flip_labels(labels: np.ndarray) -> np.ndarray:
    """Map a part-label map (0..24) to the labels of its horizontal mirror image.

    Only the labels change; flipping the pixels themselves is the caller's job.
    """
    lut = np.asarray(FLIP_PARTNER, dtype=labels.dtype)
    return lut[labels]


#: RGB colour of each part label 0..24 (0 = background, black): matplotlib's ``tab20`` then the first four
#: of ``Set1``, so that neighbouring parts differ.  Every picture of the project (inspect montages, the
#: synthetic preview) draws a part in this colour.
PART_COLOURS: np.ndarray = np.array(
    [(0, 0, 0),
     (31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44), (152, 223, 138),
     (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213), (140, 86, 75), (196, 156, 148),
     (227, 119, 194), (247, 182, 210), (127, 127, 127), (199, 199, 199), (188, 189, 34), (219, 219, 141),
     (23, 190, 207), (158, 218, 229), (228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163)],
    dtype=np.uint8)


def part_colours() -> np.ndarray:
    """uint8 [25, 3]: the RGB colour of each part label (a copy of :data:`PART_COLOURS`)."""
    return PART_COLOURS.copy()


# --------------------------------------------------------------------------------------------------------
# horizontal flips of DSAP images

#: How a horizontal flip of the image acts on each part's chart, per chart convention.  Every part becomes
#: its :data:`FLIP_PARTNER`; the parts listed under ``"u"`` have u mirrored (u → 1 − u: the DSAP image's
#: rows reversed), those under ``"v"`` have v mirrored (v → 1 − v: its columns reversed).
#:
#: - ``synthetic``: the synthetic generator's charts (``data.synthetic_body``): v runs around each capsule,
#:   so a mirror reverses it on every face-split limb, the torso, the hands and the feet; the head's v is
#:   the angle from the face, which a mirror keeps.  Exact (a test renders the mirrored body).
#: - ``densepose``: DensePose's chart orientation as the ``pose`` estimator reproduces it (a table read off
#:   real DensePose output, ``precompute.estimators.pose_geometry``): a limb and its partner are laid out
#:   as mirror images, so a limb keeps (u, v); the torso's v runs towards the person's right and is
#:   mirrored; the head's u runs around it and is mirrored.  Exact for ``pose`` (a test mirrors its
#:   landmarks); for real DensePose output an approximation: DensePose's exact map is a per-part lookup
#:   table (``UV_symmetry_transforms.mat``), not redistributed here.
CHART_MIRRORS: dict[str, dict[str, tuple[int, ...]]] = {
    "synthetic": {"u": (), "v": tuple(range(1, 23))},
    "densepose": {"u": (23, 24), "v": (1, 2)},
}
#: The chart convention of each estimator's output (others: ``densepose``).
ESTIMATOR_CHARTS: dict[str, str] = {"synthetic": "synthetic", "pose": "densepose", "densepose": "densepose",
                                    "iuv": "densepose"}


def chart_convention(estimator: str | None) -> str:
    """The chart convention (a key of :data:`CHART_MIRRORS`) of an estimator's output."""
    return ESTIMATOR_CHARTS.get(str(estimator), "densepose")


def flip_dsap(dsap, convention: str = "densepose", kind: str = "dsap"):
    """The DSAP images [..., 24, C, S, S] (NumPy or torch) of the horizontally mirrored crop: part i's image
    goes to its partner, mirrored as :data:`CHART_MIRRORS` says.  ``kind="csa"`` (coarse part crops, plain
    image crops) mirrors every crop's columns.  Returns a new array; the input is left as it is."""
    if kind == "csa":
        rule = {"u": (), "v": tuple(range(1, NUM_PARTS + 1))}
    else:
        try:
            rule = CHART_MIRRORS[convention]
        except KeyError:
            raise ValueError(f"unknown chart convention {convention!r}; known: {', '.join(CHART_MIRRORS)}") from None
    src = [FLIP_PARTNER[p] - 1 for p in range(1, NUM_PARTS + 1)]   # out[i] = mirrored dsap[partner(i)]
    out = dsap[..., src, :, :, :]
    for axis, parts in (("u", rule["u"]), ("v", rule["v"])):
        if not parts:
            continue
        idx = [FLIP_PARTNER[p] - 1 for p in parts]   # destination of each listed (source) part
        dim = -2 if axis == "u" else -1
        sel = out[..., idx, :, :, :]
        out[..., idx, :, :, :] = np.flip(sel, axis=dim) if isinstance(sel, np.ndarray) else sel.flip(dim)
    return out
