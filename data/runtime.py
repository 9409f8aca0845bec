"""Where and how wide the computation runs: the device choice and the thread policy of every stage.

``resolve_device`` turns the ``--device`` choice of any command (``auto``, ``cpu``, ``cuda``,
``cuda:N``) into a usable ``torch.device``; anything else, or CUDA on a machine without a GPU, is a
``DeviceError`` with one sentence.

The thread policy (``apply_threads``; every CLI, the Python API and the benchmarks call it):

* intra-op threads = ``--threads`` when given (> 0), else the cores this process may run on
  (``os.sched_getaffinity``, so ``taskset``, cgroups' cpusets and batch schedulers are honoured) minus
  the DataLoader workers, at least 1: the workers decode and augment images on their own cores;
* every DataLoader worker runs with 1 thread (``worker_threads``, a ``worker_init_fn``), and so does every
  ``precompute run --workers N`` process;
* a computation whose result must not depend on the thread count (an estimator whose output goes into a
  store) runs under ``pinned_threads(n)`` with an ``n`` that is one of its recorded settings: CPU kernels
  split their sums by thread, so another thread count gives other low-order bits;
* OpenMP threads do not spin-wait: ``OMP_WAIT_POLICY=PASSIVE`` unless the user has set it
  (``quiet_openmp``, called by the ``__main__`` modules before torch is imported, the only time the
  OpenMP runtime reads it).  Spinning threads fight for the cores with the workers and with other
  processes on a shared machine; ``bench/bench_threads.py`` measures the difference.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Iterator

from dsa.errors import UserError

if TYPE_CHECKING:
    import torch
# torch is imported inside the functions: a ``__main__`` module imports this one to call
# ``quiet_openmp`` before torch (and its OpenMP runtime) starts.

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


class DeviceError(UserError, ValueError):
    """A ``--device`` that this machine cannot give."""


def resolve_device(choice: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (device ``local_rank``) when PyTorch sees one, else CPU; ``cuda`` -> CUDA device
    ``local_rank``; ``cuda:N`` -> that device; ``cpu`` -> CPU."""
    import torch

    if isinstance(choice, torch.device):
        return choice
    if choice == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(choice)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {choice!r}; use {', '.join(DEVICE_CHOICES)}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"unsupported device {choice!r}; use {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {choice} was asked for, but PyTorch sees no CUDA device; use --device cpu or auto")
    index = local_rank if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise DeviceError(f"there is no cuda:{index}: PyTorch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


THREADS_ENV = "DSA_THREADS"


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def choose_threads(threads: int | None = None, workers: int = 0) -> int:
    """The policy's intra-op thread count: ``threads`` if > 0, else ``$DSA_THREADS`` if set, else the
    available cores minus the DataLoader ``workers``, at least 1."""
    if threads is None or threads <= 0:
        env = os.environ.get(THREADS_ENV, "").strip()
        threads = int(env) if env.isdigit() else 0
    if threads > 0:
        return threads
    return max(1, available_cores() - max(0, workers))


def apply_threads(threads: int | None = None, workers: int = 0) -> int:
    """Set torch's intra-op threads by the policy (``choose_threads``) and return the number."""
    import torch

    n = choose_threads(threads, workers)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def worker_threads(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: one intra-op thread per worker (they run side by side).

    OpenCV's pool is deliberately left alone: ``cv2.setNumThreads`` in a forked worker whose parent
    had already used OpenCV's threads deadlocks (it destroys a pool whose threads did not survive the
    fork: seen with ``bench/bench_loader.py``, which writes its images with OpenCV first)."""
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[int]:
    """Run the block with exactly ``n`` intra-op threads, whatever the process's policy, then restore it."""
    import torch

    if n < 1:
        raise ValueError(f"the thread count must be at least 1, not {n}")
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def thread_policy() -> dict[str, int | str | None]:
    """What this process's thread policy is now (for provenance): intra-op threads, the cores it may use,
    ``$DSA_THREADS`` and ``OMP_WAIT_POLICY``."""
    import torch

    return {"intra_op_threads": torch.get_num_threads(), "available_cores": available_cores(),
            "DSA_THREADS": os.environ.get(THREADS_ENV), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}


def quiet_openmp(environ: dict | None = None) -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; effective only before torch (OpenMP) starts.

    Returns whether the policy is in effect for this process (False when torch was imported first and
    the variable was not already set)."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env:
        return env["OMP_WAIT_POLICY"].upper() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return environ is not None or "torch" not in sys.modules


def default_workers(device: torch.device | str) -> int:
    """DataLoader worker processes when ``--workers`` is not given: on a GPU the loader must keep up with the
    device (up to 8, one core left for the main process); on a CPU the workers compete with the computation
    for the same cores (at most 2)."""
    cores = available_cores()
    kind = str(getattr(device, "type", device)).split(":")[0]
    if kind == "cuda":
        return max(1, min(8, cores - 1))
    return max(0, min(2, cores - 1))
