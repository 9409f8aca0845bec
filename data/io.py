"""Image and file I/O shared by every stage.

- :func:`read_image` reads any image OpenCV can decode as uint8 H×W×3 **RGB** and turns every failure
  (missing, empty, undecodable file) into :class:`ImageReadError` with the reason in words, so that a
  data loader or ``python -m data stats --check-images`` can report it instead of crashing.
- :func:`read_iuv_png` / :func:`write_iuv_png` do the file side of the legacy DensePose ``*_IUV.png``
  format (the array codec lives in :mod:`dsa.iuv`).
- :func:`atomic_output` and the ``atomic_write_*`` helpers write to a temporary name in the target folder
  and ``os.replace`` it into place, so a reader never sees a half-written file; a full disk (or quota)
  while writing is :class:`DiskFullError`, one sentence, and the temporary file is removed.
- :func:`hold_lock` takes an ``fcntl.flock`` lock on a lock file for the life of the process, so that a
  second program working on the same store or run folder says who holds it instead of competing.
- Images above :data:`MAX_IMAGE_PIXELS` (``DSA_MAX_IMAGE_PIXELS`` in the environment) are refused from
  their header, before any decoding allocates memory for them.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from dsa.env import env_value
from dsa.errors import UserError
from dsa.iuv import IUV, decode_iuv_png, encode_iuv_png

from .scan import link_reason

__all__ = [
    "ImageReadError",
    "image_error_text",
    "read_image",
    "read_iuv_png",
    "write_iuv_png",
    "encode_image",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "file_sha256",
    "DiskFullError",
    "LockError",
    "OutputPathError",
    "make_folder",
    "hold_lock",
    "max_image_pixels",
    "disk_full_error",
]

PathLike = str | os.PathLike

#: default largest image (in pixels) ``read_image`` decodes: 40 Mpx, ~120 MB decoded (person crops are
#: a few thousand pixels); ``DSA_MAX_IMAGE_PIXELS`` in the environment overrides it
MAX_IMAGE_PIXELS = 40_000_000
#: errno values that mean "no room to write"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(UserError):
    """A write failed because the disk (or the quota) is full."""


class LockError(UserError):
    """Another process holds the lock of a store or run folder."""


class OutputPathError(UserError):
    """A file cannot be written where it should go: a folder of its name, or a file where its folder should be."""


def disk_full_error(error: BaseException, path: PathLike) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``error`` when it is a full disk or quota while writing ``path``;
    None for any other error."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        return DiskFullError(f"cannot write {path}: {os.strerror(error.errno).lower()}; free some space (or "
                             f"write elsewhere) and rerun: completed work is kept and nothing half-written is")
    return None


def max_image_pixels() -> int:
    """The pixel limit of :func:`read_image` (``DSA_MAX_IMAGE_PIXELS``, default :data:`MAX_IMAGE_PIXELS`)."""
    value = env_value("DSA_MAX_IMAGE_PIXELS")  # declared in dsa.env: a whole number >= 1, or an EnvError
    return MAX_IMAGE_PIXELS if value is None else value


class ImageReadError(UserError):
    """An image file that cannot be read; ``reason`` says why in words, ``path`` which file."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def image_error_text(error: BaseException) -> str | None:
    """The sentence of an unreadable image (``ImageReadError``), whether it was raised in this process
    or in a DataLoader worker (where torch re-raises it as another exception whose message carries the
    worker's traceback); None for any other error."""
    if isinstance(error, ImageReadError):
        return str(error)
    if "ImageReadError: " in str(error):
        return str(error).rsplit("ImageReadError: ", 1)[1].strip().splitlines()[0]
    return None


def _read_bytes(path: PathLike) -> np.ndarray:
    """The file's bytes as a uint8 array, or :class:`ImageReadError` for a missing/empty/unreadable file."""
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except IsADirectoryError:
        raise ImageReadError(p, "is a directory, not a file") from None
    except PermissionError:
        raise ImageReadError(p, "permission denied") from None
    except OSError as e:  # a link that cannot be followed says where it points (data.scan lists such links)
        reason = link_reason(p) or ("file does not exist" if e.errno == errno.ENOENT else
                                    f"read failed ({e.strerror or e})")
        raise ImageReadError(p, reason) from None
    if data.size == 0:
        raise ImageReadError(p, "file is empty (0 bytes)")
    return data


#: what :func:`_image_size` returns for a header Pillow does not know
UNKNOWN_SIZE = (-1, -1)


def _image_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the image header without decoding the pixels; :data:`UNKNOWN_SIZE` when Pillow
    does not know the header; None without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        return None
    bomb_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check would hide the size: the limit here is ours
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:  # lazy: reads the header only
            return im.size
    except Exception:  # noqa: BLE001 - any header Pillow does not know
        return UNKNOWN_SIZE
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit


def _decode(path: PathLike, flags: int) -> np.ndarray:
    data = _read_bytes(path)
    size, limit = _image_size(data), max_image_pixels()
    if size == UNKNOWN_SIZE:  # OpenCV decodes more formats (HDR, EXR, ...) but would allocate before any check
        raise ImageReadError(path, f"not a decodable image ({data.size} bytes): corrupt, or a format whose size in "
                                   f"pixels cannot be read from its header before decoding; use JPEG, PNG or BMP")
    if size is not None and size[0] * size[1] > limit:
        raise ImageReadError(path, f"is {size[0]}x{size[1]} pixels, above the limit of {limit} pixels "
                                   f"(set DSA_MAX_IMAGE_PIXELS to allow it)")
    img = cv2.imdecode(data, flags)
    if img is None or img.size == 0:
        raise ImageReadError(path, f"not a decodable image ({data.size} bytes; corrupt or unsupported format)")
    return img


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as uint8 H×W×3 RGB (grey and 16-bit images are converted; alpha is dropped).

    Raises :class:`ImageReadError` for a missing, zero-byte or undecodable file.
    """
    bgr = _decode(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_image(rgb: np.ndarray, ext: str = ".png") -> bytes:
    """Encode a uint8 H×W×3 RGB array to image-file bytes (``ext`` picks the format, e.g. ``.jpg``)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 H×W×3 RGB array, got {rgb.dtype} {rgb.shape}")
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {ext}")
    return buf.tobytes()


def read_iuv_png(path: PathLike) -> IUV:
    """Read a legacy DensePose ``*_IUV.png`` (B = I, G = U·255, R = V·255) as :class:`dsa.iuv.IUV`."""
    bgr = _decode(path, cv2.IMREAD_UNCHANGED)
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] < 3:
        raise ImageReadError(path, f"not an 8-bit 3-channel IUV PNG (dtype {bgr.dtype}, shape {bgr.shape})")
    try:
        return decode_iuv_png(np.ascontiguousarray(bgr[..., :3]))
    except ValueError as e:
        raise ImageReadError(path, str(e)) from None


def write_iuv_png(path: PathLike, iuv: IUV) -> None:
    """Write ``iuv`` as a legacy DensePose ``*_IUV.png`` (lossless PNG), atomically."""
    ok, buf = cv2.imencode(".png", encode_iuv_png(iuv))
    if not ok:
        raise ValueError("OpenCV could not encode the IUV map as PNG")
    atomic_write_bytes(path, buf.tobytes())


def make_folder(folder: PathLike, what: str | None = None) -> Path:
    """Create ``folder`` (and its parents) unless it exists; a file standing where it (or a folder above
    it) should be is an :class:`OutputPathError` (``what`` starts the sentence)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(f"{what or f'cannot make the folder {folder}'}: a file stands where the folder {folder} "
                              f"(or one above it) should be; move it away or write elsewhere") from None
    return folder


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    For writers that need a file name (h5py, ``cv2.imwrite``, ``torch.save``): write everything to the
    yielded path inside the ``with`` block. Parent folders are created.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputPathError(f"cannot write {target}: a folder of that name is in the way; move it away or write "
                              f"elsewhere")
    make_folder(target.parent, f"cannot write {target}")
    # Not mkstemp: its 0600 mode would survive the rename; a pid + random suffix is unique enough.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        full = disk_full_error(e, target)
        if full is not None:
            raise full from None
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (UTF-8, trailing newline) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def library_output() -> Iterator[list[str]]:
    """Collect what C libraries print on the process's stdout and stderr inside the block (an HDF5 filter's
    ``printf`` on a damaged chunk) instead of letting raw lines reach the user; the yielded list gets the
    lines when the block ends (the caller puts them into its own sentence)."""
    import tempfile

    lines: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            lines.extend(ln.strip() for ln in sink.read().decode("utf-8", "replace").splitlines() if ln.strip())


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this machine): a temporary file named after a dead one is left over."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def file_sha256(path: PathLike, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


#: locks held by this process, by resolved lock-file path (released when the process ends)
_HELD: dict[str, Any] = {}


def hold_lock(path: PathLike, what: str, *, shared: bool = False) -> None:
    """Lock ``path`` (``fcntl.flock``, exclusive unless ``shared``) until this process ends, or raise
    :class:`LockError` naming the holder.  ``what`` names the locked thing in the sentence.

    The kernel drops the lock when its holder dies, however it dies, so a killed run never leaves a
    stale lock; the holder's pid, host, start time and command are written into the file for the
    sentence of the next one.  Taking a lock this process already holds does nothing.
    """
    import fcntl

    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise LockError(f"{what} is in use by {holder} (lock file {path}); wait for it to finish or stop it, "
                        f"then rerun") from None
    if not shared:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC ({' '.join(sys.argv)[:200]})")
        fh.flush()
    _HELD[key] = fh


def release_lock(path: PathLike) -> None:
    """Release a lock taken by :func:`hold_lock` (tests and long-lived processes; a process's end does it)."""
    fh = _HELD.pop(str(Path(path).resolve()), None)
    if fh is not None:
        fh.close()
