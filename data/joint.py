"""The joint image + DSAP training dataset.

Each item is joined to its DSAP images by *key* (the image path relative to the dataset root), never by
position, and the store is checked to cover every key when the dataset is built, so a missing key is a
sentence at start-up rather than an error in a worker mid-epoch.

Nothing here holds a file open: images are read per item, and the store opens its HDF5 files lazily
in each process (h5py handles do not survive ``fork``), so DataLoader workers start clean.

Where the DSAP images are read (``dsap_reader``):

- ``"worker"``: in ``__getitem__``, inside the DataLoader workers, like the image;
- ``"main"`` (what training uses): ``__getitem__`` returns the item's index in the DSAP slot and
  :meth:`JointDataset.fill_dsap` reads the whole batch in the process that consumes it.  A worker
  stacks every batch into fresh shared memory, which costs about 20x a plain copy (page faults of the
  new pages; ``bench/bench_loader.py``): for 73 KB of DSAP per sample that transfer costs more than the
  LZ4 read itself, so reading in the consumer takes less CPU time in all.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .io import read_image


class JointDataset(Dataset):
    """``(image, dsap, pid, camid)`` per item.

    Args:
        dataset_items: the items (``data.datasets.Item``: ``key``, ``pid``, ``camid``).
        dataset_root: the folder the item paths are relative to.
        store: a ``DSAPStore`` (or anything with ``check_covers(keys)`` and ``get(key)``).
        transform: applied to the RGB uint8 HxWx3 image; returns the image tensor (see
            ``data.transforms``: uint8 [3, H, W]).
        use_dsap: when False (MF-only baselines) the store is not read and ``dsap`` is an empty tensor.
        dsap_reader: ``"worker"`` or ``"main"`` (see the module's docstring).

    Returns per item: image tensor, DSAP uint8 tensor [24, 3, S, S] (unaugmented; with ``dsap_reader="main"``
    the item's index until :meth:`fill_dsap`), pid, camid.
    """

    def __init__(self, dataset_items: Sequence[Any], dataset_root: str | Path, store: Any,
                 transform: Callable[[Any], torch.Tensor], use_dsap: bool = True, dsap_reader: str = "worker") -> None:
        if dsap_reader not in ("worker", "main"):
            raise ValueError(f"dsap_reader must be 'worker' or 'main', not {dsap_reader!r}")
        self.items = list(dataset_items)
        self.root = Path(dataset_root)
        self.store = store
        self.transform = transform
        self.use_dsap = use_dsap
        self.dsap_reader = dsap_reader
        if use_dsap:
            store.check_covers([item.key for item in self.items])

    def __len__(self) -> int:
        return len(self.items)

    @property
    def pids(self) -> list[int]:
        """The pid of each index, for ``PKSampler``."""
        return [item.pid for item in self.items]

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Item ``index``; an ``(index, seed)`` pair (``data.sampler.SeededBatches``) runs the transform
        under its own seed, leaving the process's random state as it was."""
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        item = self.items[index]
        image = read_image(self.root / item.key)
        if seed is None:
            image = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image = self.transform(image)
        if not self.use_dsap:
            dsap = torch.empty(0, dtype=torch.uint8)
        elif self.dsap_reader == "main":
            dsap = torch.tensor(index)
        else:
            dsap = torch.from_numpy(self.store.get(item.key))
        return image, dsap, int(item.pid), int(item.camid)

    def fill_dsap(self, batch: Sequence[Any], pin_memory: bool = False) -> list[Any]:
        """A collated batch with its DSAP slot read here, when ``dsap_reader="main"`` put indices there
        (uint8 [B, 24, 3, S, S], in page-locked memory with ``pin_memory``); other batches as they are."""
        batch = list(batch)
        if not (self.use_dsap and self.dsap_reader == "main"):
            return batch
        indices = batch[1].tolist()
        first = self.store.get(self.items[indices[0]].key)
        out = torch.empty((len(indices), *first.shape), dtype=torch.uint8, pin_memory=pin_memory)
        view = out.numpy()
        view[0] = first
        for j, i in enumerate(indices[1:], 1):
            view[j] = self.store.get(self.items[i].key)
        batch[1] = out
        return batch
