"""Where the computation runs: the device choice shared by every stage.

``resolve_device`` turns the ``--device`` choice of any command (``auto``, ``cpu``, ``cuda``,
``cuda:N``) into a usable ``torch.device``; anything else, or CUDA on a machine without a GPU, is a
``DeviceError`` with one sentence.
"""
from __future__ import annotations

import torch

from dsa.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


class DeviceError(UserError, ValueError):
    """A ``--device`` that this machine cannot give."""


def resolve_device(choice: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (device ``local_rank``) when PyTorch sees one, else CPU; ``cuda`` -> CUDA device
    ``local_rank``; ``cuda:N`` -> that device; ``cpu`` -> CPU."""
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


def default_workers(device: torch.device | str) -> int:
    """DataLoader worker processes when ``--workers`` is not given: on a GPU the loader must keep up with the
    device (up to 8, one core left for the main process); on a CPU the workers compete with the computation
    for the same cores (at most 2)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
    if kind == "cuda":
        return max(1, min(8, cores - 1))
    return max(0, min(2, cores - 1))
