"""The embedded synthetic re-ID dataset: pedestrians with exact ground-truth dense semantics.

``generate(out_dir, ...)`` writes a Market-1501 layout (``bounding_box_train/``, ``bounding_box_test/``,
``query/``) of ``{pid:04d}_c{cam}s1_{index:06d}_00.jpg`` crops, each with its legacy DensePose
``<stem>_IUV.png`` beside it, plus ``synthetic.json`` (settings and counts), ``keypoints.json``
(projected joints per image) and ``preview.png``. Everything is a pure function of the settings and
the seed: the same seed gives byte-identical files, whatever the number of worker processes.

The body model and texture live in :mod:`data.synthetic_body`. This module adds what misaligns re-ID:
cameras (cluttered background, colour cast, light direction, elevation, walking directions), views
(yaw, walking phase, detector crop jitter and truncation, occluders, blur, noise) and the writer.
The ground truth is exact: for every body pixel, ``texture(identity, I, U, V)`` equals
:attr:`Rendering.clean_rgb` (the colour before lighting, background, blur and noise).
"""
from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
from tqdm import tqdm

from dsa.errors import UserError
from dsa.iuv import IUV, encode_iuv_png
from dsa.parts import NUM_PARTS, part_colours

from .console import Command, IntRange, root_option
from .io import atomic_write_json, process_alive
from .synthetic_body import (KEYPOINT_NAMES, Identity, Raster, hsv_rgb as _hsv, make_identity, posed_body, quantise,
                             raycast, texture)

__all__ = [
    "KEYPOINT_NAMES", "Identity", "make_identity", "texture", "quantise",
    "Camera", "make_camera", "View", "sample_view", "Rendering", "render",
    "SyntheticError", "generate", "write_preview", "synth_command", "GENERATOR_VERSION",
]

log = logging.getLogger(__name__)

#: Bumped whenever the generator's output changes, so a stale dataset is not silently reused.
GENERATOR_VERSION = 3
SPLIT_DIRS = ("bounding_box_train", "bounding_box_test", "query")


class SyntheticError(UserError):
    """A problem the user can fix (bad option, a dataset in the way); the message is one sentence."""


# --------------------------------------------------------------------------- cameras and views


@dataclass(frozen=True)
class Camera:
    """One camera of the synthetic network (index 0-based; file names use index + 1)."""

    index: int
    gain: tuple[float, float, float]   # per-channel colour cast
    offset: float                      # brightness offset (grey levels)
    light: tuple[float, float, float]  # light direction (camera space, towards the light)
    pitch: float                       # elevation of the camera (radians, looking down)
    heading: float                     # main walking direction seen by this camera (yaw, radians)
    seed: int
    bg_hw: tuple[int, int]             # background canvas size


def make_camera(seed: int, index: int, height: int = 128, width: int = 64) -> Camera:
    """Camera ``index`` of the dataset with ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, 2, index])
    light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(0.3, 1.0), rng.uniform(0.5, 1.0)])
    light /= np.linalg.norm(light)
    return Camera(
        index=index,
        gain=tuple(float(g) for g in rng.uniform(0.85, 1.15, 3)),
        offset=float(rng.uniform(-18, 18)),
        light=tuple(float(x) for x in light),
        pitch=float(rng.uniform(0.0, 0.35)),
        heading=float(rng.uniform(0, 2 * np.pi)),
        seed=seed,
        bg_hw=(height * 4, width * 12),
    )


@functools.lru_cache(maxsize=64)
def camera_background(cam: Camera) -> np.ndarray:
    """The camera's cluttered scene (float32 RGB canvas larger than a crop): façades and floor,
    windows, doors, signs, poles and clutter; crops see a random window of it."""
    rng = np.random.default_rng([cam.seed, 3, cam.index])
    H, W = cam.bg_hw

    def colour(saturated: float = 0.1) -> np.ndarray:
        """Mostly muted urban colours (concrete, brick, glass), now and then a saturated sign."""
        s = rng.uniform(0.3, 0.7) if rng.random() < saturated else rng.uniform(0.0, 0.15)
        return np.asarray(_hsv(float(rng.random()), s, float(rng.uniform(0.2, 0.9))), np.float32)

    floor = colour(0.0)
    horizon = int(H * rng.uniform(0.45, 0.7))
    img = np.empty((H, W, 3), np.float32)
    img[horizon:] = floor
    x = 0
    while x < W:  # façades of different colours along the street, so crops of one camera differ
        w = int(rng.integers(W // 12, W // 4))
        img[:horizon, x:x + w] = colour(0.0)
        x += w
    img *= np.linspace(0.85, 1.1, H, dtype=np.float32)[:, None, None]
    for _ in range(int(rng.integers(40, 80))):  # windows, doors, shop fronts, signs, parked things
        h, w = int(rng.integers(4, H // 3)), int(rng.integers(3, W // 6))
        y, x = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))
        img[y:y + h, x:x + w] = colour()
    for _ in range(int(rng.integers(6, 14))):  # thin lines: poles, frames, floor tiles
        if rng.random() < 0.5:
            x = int(rng.integers(0, W - 2))
            img[:, x:x + int(rng.integers(1, 3))] = colour()
        else:
            y = int(rng.integers(horizon, H - 2))
            img[y:y + 1, :] *= 0.7
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # surface grain
    return cv2.GaussianBlur(img, (0, 0), 0.7)


@dataclass(frozen=True)
class View:
    """Everything that varies from one crop of a person to the next."""

    yaw: float          # body yaw in camera space (0 = facing the camera, pi = back view)
    phase: float        # walking phase (radians)
    stride: float       # walking amplitude (radians; ~0 = standing)
    box_scale: float    # detector box size relative to a tight box (>1: more margin)
    shift_x: float      # box centre shift, fraction of the box width
    shift_y: float      # box centre shift, fraction of the box height
    bg_x: int           # background window position
    bg_y: int
    brightness: float   # per-image illumination
    occluder: str       # "none", "bottom", "pole", "side"
    occ_params: tuple[float, ...]
    blur: float         # Gaussian blur sigma (pixels, 0 = none)
    noise: float        # Gaussian noise sigma (grey levels)
    noise_seed: int


def sample_view(rng: np.random.Generator, cam: Camera, height: int = 128, width: int = 64) -> View:
    """A random view for ``cam``: mostly along the camera's main walking direction (either way), now
    and then in any direction; with crop jitter,
    an occluder one time in three, truncation one time in eight, blur and noise."""
    heading = cam.heading + (np.pi if rng.random() < 0.5 else 0.0)
    if rng.random() < 0.2:  # someone crossing the scene in another direction
        heading = rng.uniform(0, 2 * np.pi)
    yaw = float((heading + rng.normal(0, 0.35)) % (2 * np.pi))
    shift_x, shift_y = rng.normal(0, 0.07), rng.normal(0, 0.04)
    if rng.random() < 0.125:  # truncated detection: box slid off the head, the feet or a side
        which = int(rng.integers(3))
        if which == 0:
            shift_y = -rng.uniform(0.12, 0.25)
        elif which == 1:
            shift_y = rng.uniform(0.1, 0.22)
        else:
            shift_x = rng.choice([-1, 1]) * rng.uniform(0.2, 0.35)
    occ = str(rng.choice(["none", "bottom", "pole", "side"], p=[0.67, 0.13, 0.1, 0.1]))
    occ_params = tuple(float(x) for x in rng.uniform(0, 1, 6))
    H, W = cam.bg_hw
    return View(
        yaw=yaw,
        phase=float(rng.uniform(0, 2 * np.pi)),
        stride=float(rng.uniform(0.05, 0.45)),
        box_scale=float(rng.uniform(1.0, 1.15)),
        shift_x=float(shift_x),
        shift_y=float(shift_y),
        bg_x=int(rng.integers(0, W - width)),
        bg_y=int(rng.integers(0, H - height)),
        brightness=float(rng.uniform(0.8, 1.15)),
        occluder=occ,
        occ_params=occ_params,
        blur=float(rng.choice([0.0, rng.uniform(0.4, 1.2)], p=[0.4, 0.6])),
        noise=float(rng.uniform(1.0, 6.0)),
        noise_seed=int(rng.integers(2**31)),
    )


@dataclass
class Rendering:
    """One rendered crop. ``clean_rgb``: body pixels' texture colour (before lighting, background,
    occluders' paint, blur and noise), 0 elsewhere; ``final_rgb``: the image as written; ``iuv``: the
    visible body's ground truth (U, V on the 1/255 grid; occluded pixels are background);
    ``keypoints``: float32 [K, 2] (x, y) pixel coordinates of :data:`KEYPOINT_NAMES` (pixel centres at
    integers, may lie outside the crop); ``keypoint_depth``: camera-space z (larger = nearer)."""

    clean_rgb: np.ndarray
    final_rgb: np.ndarray
    iuv: IUV
    keypoints: np.ndarray
    keypoint_depth: np.ndarray


def _occluder_mask(view: View, height: int, width: int) -> np.ndarray:
    """Boolean mask of the occluder in the crop."""
    p = view.occ_params
    ii, jj = np.mgrid[0:height, 0:width]
    if view.occluder == "bottom":   # bench, car bonnet, bush: a band rising from the bottom
        top = height * (1.0 - (0.15 + 0.22 * p[0]))
        return ii + (jj - width * p[1]) * (p[2] - 0.5) * 0.3 >= top
    if view.occluder == "pole":     # sign post or lamp post
        x, w = width * (0.15 + 0.7 * p[0]), 2 + 5 * p[1]
        return np.abs(jj - x) < w / 2
    if view.occluder == "side":     # another pedestrian passing at the edge of the box
        cx = -0.05 * width if p[0] < 0.5 else 1.05 * width
        ry, rx = height * (0.35 + 0.2 * p[1]), width * (0.25 + 0.15 * p[2])
        cy = height * (0.45 + 0.15 * p[3])
        return ((ii - cy) / ry) ** 2 + ((jj - cx) / rx) ** 2 < 1.0
    return np.zeros((height, width), bool)


def render(ident: Identity, view: View, cam: Camera, height: int = 128, width: int = 64) -> Rendering:
    """Render ``ident`` seen by ``cam`` with ``view`` as a ``height`` × ``width`` crop."""
    caps, kps3 = posed_body(ident, view.phase, view.stride, view.yaw, cam.pitch)
    # a tight person box in camera space, then the detector's jitter
    top = kps3[0, 1] + 0.13 * ident.height / 1.75
    bottom = min(kps3[10, 1], kps3[13, 1]) - 0.09
    cx = float(np.mean(kps3[[2, 5, 8, 11], 0]))
    box_h = (top - bottom) * view.box_scale
    box_w = box_h * width / height
    cx += view.shift_x * box_w
    cy = (top + bottom) / 2 + view.shift_y * box_h
    raster = Raster(height, width, x0=cx - box_w / 2, y0=cy + box_h / 2, scale=height / box_h)
    I, U, V, N = raycast(caps, raster)

    occ = _occluder_mask(view, height, width)
    I[occ] = 0
    body = I > 0
    U = np.where(body, quantise(U), 0.0).astype(np.float32)
    V = np.where(body, quantise(V), 0.0).astype(np.float32)
    clean = np.zeros((height, width, 3), np.uint8)
    clean[body] = texture(ident, I[body], U[body], V[body])

    # lighting on the body, background elsewhere, occluder on top
    lx, ly, lz = cam.light
    lambert = N[..., 0] * lx + N[..., 1] * ly + N[..., 2] * lz  # not N @ light: no BLAS threads in workers
    shade = 0.5 + 0.6 * np.clip(lambert, 0.0, None) + 0.15 * np.clip(N[..., 2], 0.0, None) ** 4
    img = camera_background(cam)[view.bg_y:view.bg_y + height, view.bg_x:view.bg_x + width].copy()
    img[body] = clean[body].astype(np.float32) * shade[body, None]
    if occ.any():
        p = view.occ_params
        colour = np.array([40 + 180 * p[4], 40 + 180 * p[5], 40 + 180 * p[3]], np.float32)
        grad = np.linspace(0.8, 1.15, height, dtype=np.float32)[:, None, None]
        img = np.where(occ[..., None], colour * grad, img)
    img = img * np.asarray(cam.gain, np.float32) * view.brightness + cam.offset
    if view.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), view.blur)
    noise_rng = np.random.default_rng(view.noise_seed)
    img = img + noise_rng.normal(0.0, view.noise, img.shape).astype(np.float32)
    final = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    kp = raster.project(kps3).astype(np.float32)
    return Rendering(clean, final, IUV(I=I, U=U, V=V), kp, kps3[:, 2].astype(np.float32))


# --------------------------------------------------------------------------- the dataset plan


@dataclass(frozen=True)
class ImageSpec:
    """One image to write: where, whom, which camera, and the seed of its view."""

    rel_path: str
    pid: int
    cam: int        # 0-based
    view_seed: tuple[int, ...]


def _settings(num_ids: int, num_cameras: int, seed: int, height: int, width: int,
              train_fraction: float) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "num_ids": num_ids,
        "num_cameras": num_cameras,
        "seed": seed,
        "height": height,
        "width": width,
        "train_fraction": train_fraction,
    }


def plan(num_ids: int, num_cameras: int, seed: int, train_fraction: float = 0.5) -> list[ImageSpec]:
    """Which images the dataset has. Every identity is seen by 2..num_cameras cameras, 2 or 3 crops
    each; train and test identities are disjoint; each test identity gives one query per camera, the
    rest of its crops are the gallery (the Market-1501 protocol)."""
    rng = np.random.default_rng([seed, 0])
    pids = np.arange(1, num_ids + 1)
    num_train = int(round(num_ids * train_fraction))
    train_pids = set(rng.permutation(pids)[:num_train].tolist())
    specs: list[ImageSpec] = []
    index = 0
    for pid in pids.tolist():
        prng = np.random.default_rng([seed, 4, pid])
        k = int(prng.integers(2, num_cameras + 1))
        cams = sorted(prng.choice(num_cameras, size=k, replace=False).tolist())
        for cam in cams:
            for shot in range(int(prng.integers(2, 4))):
                index += 1
                if pid in train_pids:
                    folder = "bounding_box_train"
                else:
                    folder = "query" if shot == 0 else "bounding_box_test"
                name = f"{pid:04d}_c{cam + 1}s1_{index:06d}_00.jpg"
                specs.append(ImageSpec(f"{folder}/{name}", pid, cam, (seed, 5, pid, cam, shot)))
    return specs


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, pid: int) -> Identity:
    return make_identity(seed, pid)


def render_spec(spec: ImageSpec, seed: int, height: int, width: int) -> Rendering:
    """Render one planned image (deterministic in the spec and the settings alone)."""
    cam = make_camera(seed, spec.cam, height, width)
    view = sample_view(np.random.default_rng(list(spec.view_seed)), cam, height, width)
    return render(_identity(seed, spec.pid), view, cam, height, width)


def _pool_worker(parent: int) -> None:
    """A generator worker: one OpenCV thread, and killed with its parent (a killed ``synth`` leaves no workers)."""
    from .runtime import die_with_parent

    die_with_parent(parent)
    cv2.setNumThreads(1)


def _write_spec(args: tuple[ImageSpec, str, int, int, int]) -> tuple[str, list[list[float]]]:
    """Worker: render one image and write its JPEG and IUV PNG into the staging folder."""
    spec, out, seed, height, width = args
    r = render_spec(spec, seed, height, width)
    path = Path(out) / spec.rel_path
    ok1, jpg = cv2.imencode(".jpg", cv2.cvtColor(r.final_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    ok2, png = cv2.imencode(".png", encode_iuv_png(r.iuv))
    if not (ok1 and ok2):
        raise RuntimeError(f"OpenCV could not encode {spec.rel_path}")
    # plain writes: the whole staging folder is renamed into place only when complete
    path.write_bytes(jpg.tobytes())
    path.with_name(path.stem + "_IUV.png").write_bytes(png.tobytes())
    return spec.rel_path, np.round(r.keypoints, 2).tolist()


# --------------------------------------------------------------------------- preview


def write_preview(dataset_dir: str | os.PathLike, path: str | os.PathLike | None = None,
                  num_ids: int = 5, zoom: int = 2) -> Path:
    """Write a PNG of a few test identities across cameras: each crop beside its part-label map."""
    from .io import atomic_write_bytes, read_image, read_iuv_png

    root = Path(dataset_dir)
    path = Path(path) if path is not None else root / "preview.png"
    files = sorted(p for d in ("query", "bounding_box_test") for p in (root / d).glob("*.jpg"))
    by_pid: dict[int, dict[str, Path]] = {}
    for f in files:
        pid, cam = f.name[:4], f.name.split("_")[1][:2]
        by_pid.setdefault(int(pid), {}).setdefault(cam, f)
    chosen = sorted(by_pid, key=lambda p: (-len(by_pid[p]), p))[:num_ids]
    cols = part_colours()
    rows = []
    ncam = max((len(by_pid[p]) for p in chosen), default=0)
    for pid in sorted(chosen):
        tiles = []
        for cam in sorted(by_pid[pid]):
            f = by_pid[pid][cam]
            img = read_image(f)
            labels = cols[read_iuv_png(f.with_name(f.stem + "_IUV.png")).I]
            tiles += [img, labels, np.full((img.shape[0], 4, 3), 255, np.uint8)]
        h, w = img.shape[:2]
        while len(tiles) < 3 * ncam:
            tiles.append(np.full((h, w if len(tiles) % 3 != 2 else 4, 3), 255, np.uint8))
        rows += [np.concatenate(tiles, 1), np.full((4, sum(t.shape[1] for t in tiles), 3), 255, np.uint8)]
    sheet = np.concatenate(rows, 0) if rows else np.full((8, 8, 3), 255, np.uint8)
    sheet = np.repeat(np.repeat(sheet, zoom, 0), zoom, 1)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    atomic_write_bytes(path, buf.tobytes())
    return path


# --------------------------------------------------------------------------- generate


#: what the generator's settings may be (the ``synth`` command's options are declared with these): 4-digit
#: Market pids, one-digit cameras, crops from 32×16 up to 1024×512 pixels (a camera's scene is 4×12 crops)
LIMITS = {"num_ids": (2, 9999), "num_cameras": (2, 9), "height": (32, 1024), "width": (16, 512)}


def _validate(num_ids: int, num_cameras: int, height: int, width: int, train_fraction: float) -> None:
    for name, value in (("num_ids", num_ids), ("num_cameras", num_cameras), ("height", height), ("width", width)):
        low, high = LIMITS[name]
        if not low <= value <= high:
            raise SyntheticError(f"The synthetic generator's {name} must be {low} to {high}, not {value}.")
    if not 0.0 < train_fraction < 1.0:
        raise SyntheticError(f"The train fraction must lie strictly between 0 and 1, not {train_fraction}.")


def _existing_settings(out: Path) -> dict[str, Any] | None:
    meta = out / "synthetic.json"
    if not out.exists():
        return None
    if not meta.is_file():
        if any(out.iterdir()):
            raise SyntheticError(
                f"{out} exists and is not a synthetic dataset (no synthetic.json): pass --force to replace it."
            )
        return None
    try:
        return json.loads(meta.read_text())["settings"]
    except (ValueError, KeyError):
        raise SyntheticError(f"{meta} is unreadable: pass --force to regenerate the dataset.") from None


def _remove_stale_staging(out: Path) -> None:
    """Delete staging/old folders beside ``out`` left by generator processes that no longer run."""
    for p in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = p.name.rpartition("-")
        if not (kind.endswith((".tmp", ".old")) and pid.isdigit() and p.is_dir()):
            continue
        if not process_alive(int(pid)):
            log.info("removing %s, left by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def generate(
    out_dir: str | os.PathLike,
    num_ids: int = 300,
    num_cameras: int = 4,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    *,
    train_fraction: float = 0.5,
    force: bool = False,
    preview: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the synthetic dataset into ``out_dir`` (the dataset folder, e.g. ``ROOT/synthetic``).

    An existing dataset with the same settings is reused (``summary["reused"]``); different settings
    raise :class:`SyntheticError` unless ``force``. Files are written into a staging folder beside
    ``out_dir`` that is renamed into place when complete. Returns a summary dict (counts, seconds).
    """
    _validate(num_ids, num_cameras, height, width, train_fraction)
    out = Path(out_dir).expanduser()
    settings = _settings(num_ids, num_cameras, seed, height, width, train_fraction)
    if not force:
        existing = _existing_settings(out)
        if existing == settings:
            summary = json.loads((out / "synthetic.json").read_text())["summary"]
            log.info("synthetic dataset at %s already exists with these settings: reused", out)
            return {**summary, "out_dir": str(out), "reused": True}
        if existing is not None:
            changed = ", ".join(f"{k} {existing.get(k)} -> {v}" for k, v in settings.items() if existing.get(k) != v)
            raise SyntheticError(
                f"{out} holds a synthetic dataset with other settings ({changed}): pass --force to replace it."
            )
    start = time.perf_counter()
    specs = plan(num_ids, num_cameras, seed, train_fraction)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    stage = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        for d in SPLIT_DIRS:
            (stage / d).mkdir(parents=True)
        jobs = [(s, str(stage), seed, height, width) for s in specs]
        workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        bar = dict(total=len(jobs), desc="synthetic", unit="img", disable=not progress)
        if workers > 1:
            # spawn, not fork: forking after OpenCV has started its thread pool can deadlock the child
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_worker,
                                     initargs=(os.getpid(),)) as pool:
                results = list(tqdm(pool.map(_write_spec, jobs, chunksize=32), **bar))
        else:
            results = [_write_spec(j) for j in tqdm(jobs, **bar)]
        keypoints = {"names": list(KEYPOINT_NAMES), "convention": "x, y in pixels, pixel centres at integers",
                     "images": dict(results)}
        atomic_write_json(stage / "keypoints.json", keypoints, indent=None)
        counts = {d: sum(s.rel_path.startswith(d + "/") for s in specs) for d in SPLIT_DIRS}
        summary = {
            "num_images": len(specs),
            "num_train_images": counts["bounding_box_train"],
            "num_gallery_images": counts["bounding_box_test"],
            "num_query_images": counts["query"],
            "num_train_ids": int(round(num_ids * train_fraction)),
            "num_test_ids": num_ids - int(round(num_ids * train_fraction)),
            "num_cameras": num_cameras,
        }
        atomic_write_json(stage / "synthetic.json", {"settings": settings, "summary": summary,
                                                     "keypoint_names": list(KEYPOINT_NAMES)})
        if preview:
            write_preview(stage)
        if out.exists():  # only reached with force (or an empty folder)
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, trash)
            os.replace(stage, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    log.info("synthetic: %d images of %d identities, %d cameras written to %s in %.1f s",
             len(specs), num_ids, num_cameras, out, seconds)
    return {**summary, "out_dir": str(out), "reused": False, "seconds": round(seconds, 2)}


@click.command("synth", cls=Command)
@root_option("Data root; the dataset goes to ROOT/synthetic.")
@click.option("--ids", "num_ids", default=300, show_default=True, type=IntRange(*LIMITS["num_ids"]),
              help="Number of identities (half train).")
@click.option("--cameras", "num_cameras", default=4, show_default=True, type=IntRange(*LIMITS["num_cameras"]),
              help="Number of cameras.")
@click.option("--seed", default=0, show_default=True, type=IntRange(0, 2**32 - 1),
              help="Random seed (same seed: identical files).")
@click.option("--height", default=128, show_default=True, type=IntRange(*LIMITS["height"]), help="Crop height in pixels.")
@click.option("--width", default=64, show_default=True, type=IntRange(*LIMITS["width"]), help="Crop width in pixels.")
@click.option("--workers", default=None, type=IntRange(min=1), help="Worker processes [default: CPU count, at most 8].")
@click.option("--force", is_flag=True, help="Replace an existing dataset with other settings.")
@click.option("--preview/--no-preview", default=True, show_default=True,
              help="Write ROOT/synthetic/preview.png (crops beside their part labels).")
def synth_command(root: str, num_ids: int, num_cameras: int, seed: int, height: int, width: int,
                  workers: int | None, force: bool, preview: bool) -> None:
    """Generate the synthetic re-ID dataset (Market-1501 layout with ground-truth IUV) under ROOT."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    s = generate(Path(root) / "synthetic", num_ids=num_ids, num_cameras=num_cameras, seed=seed,
                 height=height, width=width, force=force, preview=preview, workers=workers)
    verb = "reused existing" if s["reused"] else f"generated in {s['seconds']} s:"
    click.echo(f"synthetic dataset at {s['out_dir']} {verb} {s['num_images']} images "
               f"({s['num_train_images']} train, {s['num_query_images']} query, "
               f"{s['num_gallery_images']} gallery), {s['num_train_ids']}+{s['num_test_ids']} ids, "
               f"{s['num_cameras']} cameras")


if __name__ == "__main__":
    synth_command()
