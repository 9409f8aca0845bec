"""The joint image + DSAP training data: a named batch per step.

Each item is joined to its DSAP images by *key* (the image path relative to the dataset root), never by
position, and the store is checked to cover every key when the dataset is built, so a missing key is a
sentence at start-up rather than an error in a worker mid-epoch.

A union of datasets (``data.datasets.union``) is read the same way: each item from its own dataset's
folder and DSAP store (:class:`Source`), its identity and camera already offset past the other datasets'.

Nothing here holds a file open: images are read per item, and the store opens its HDF5 files lazily
in each process (h5py handles do not survive ``fork``), so DataLoader workers start clean.

A batch is a dict with named keys (:data:`BATCH_KEYS`): ``image`` uint8 [B, 3, H, W], ``dsap`` uint8
[B, 24, 3, S, S] (empty for the MF-only variants), ``pid``, ``camid`` and ``index`` int64 [B], and
``flipped`` bool [B] (the image was mirrored by the augmentation).  With ``dsap_flip`` set, the DSAP
images of a mirrored image are mirrored with it (``dsa.parts.flip_dsap``: left and right parts swapped,
each chart mirrored as the estimator's chart convention requires), so that both streams see one person.

Where the DSAP images are read (``dsap_reader``):

- ``"worker"``: in ``__getitem__``, inside the DataLoader workers, like the image;
- ``"main"`` (what training uses): the workers load images only, and :meth:`JointDataset.read_dsap`
  reads the whole batch's DSAP images in the process that consumes it (:class:`TrainBatches` does this
  for every batch).  A worker stacks every batch into fresh shared memory, which costs about 20x a plain
  copy (page faults of the new pages; ``bench/bench_loader.py``): for 73 KB of DSAP per sample that
  transfer costs more than the LZ4 read itself, so reading in the consumer takes less CPU time in all.
"""
from __future__ import annotations

import random
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dsa.parts import chart_convention, flip_dsap

from .io import read_image
from .runtime import worker_threads
from .sampler import PKSampler, SeededBatches
from .store import StoreError

#: the keys of a training batch
BATCH_KEYS = ("image", "dsap", "pid", "camid", "index", "flipped")


@dataclass(frozen=True)
class Source:
    """Where the items of one dataset come from: its folder (the items' keys are relative to it), its DSAP
    store (None: not read), the chart convention its DSAP images mirror by (None: never mirrored) and the
    store's kind.  The items of a union of datasets come from several sources."""

    root: Path
    store: Any = None
    flip: str | None = None
    kind: str = "dsap"


class JointDataset(Dataset):
    """One named item per index: ``{"image", "dsap", "pid", "camid", "index"}``.

    Args:
        dataset_items: the items (``data.datasets.Item``: ``key``, ``pid``, ``camid``).
        dataset_root: the folder the item paths are relative to.
        store: a ``DSAPStore`` (or anything with ``check_covers(keys)`` and ``get(key)``).
        transform: applied to the RGB uint8 HxWx3 image; returns the image tensor (see
            ``data.transforms``: uint8 [3, H, W]).
        use_dsap: when False (MF-only baselines) the store is not read and ``dsap`` is an empty tensor.
        dsap_reader: ``"worker"`` or ``"main"`` (see the module's docstring); with ``"main"`` the item's
            ``dsap`` is empty until :meth:`read_dsap` fills the batch.
        dsap_flip: the chart convention (``dsa.parts.CHART_MIRRORS``) by which the DSAP images of a mirrored
            image are mirrored; None: never mirrored.  The transform tells which images it mirrored by
            returning ``(image, flipped)`` (``data.transforms.TrainTransform``); one returning only the
            image mirrors none.
        dsap_kind: the store's kind (``dsap`` or ``csa``: coarse crops mirror as images).
        sources, source_of: items of several datasets (a union, ``data.datasets.union``): each item's
            :class:`Source` is ``sources[source_of[i]]``, and ``dataset_root``, ``store``, ``dsap_flip`` and
            ``dsap_kind`` are not used (pass None).
    """

    def __init__(self, dataset_items: Sequence[Any], dataset_root: str | Path | None, store: Any,
                 transform: Callable[[Any], Any], use_dsap: bool = True, dsap_reader: str = "worker",
                 dsap_flip: str | None = None, dsap_kind: str = "dsap", *, sources: Sequence[Source] = (),
                 source_of: Sequence[int] | None = None) -> None:
        if dsap_reader not in ("worker", "main"):
            raise ValueError(f"dsap_reader must be 'worker' or 'main', not {dsap_reader!r}")
        self.items = list(dataset_items)
        if not sources:
            sources, source_of = [Source(Path(dataset_root), store, dsap_flip, dsap_kind)], None
        self.sources = list(sources)
        self.source_of = [0] * len(self.items) if source_of is None else [int(s) for s in source_of]
        if len(self.source_of) != len(self.items):
            raise ValueError(f"source_of has {len(self.source_of)} entries for {len(self.items)} items")
        self.transform = transform
        self.use_dsap = use_dsap
        self.dsap_reader = dsap_reader
        if use_dsap:
            for s, source in enumerate(self.sources):
                source.store.check_covers([it.key for it, i in zip(self.items, self.source_of) if i == s])

    def source(self, index: int) -> Source:
        """Where item ``index`` comes from."""
        return self.sources[self.source_of[index]]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def pids(self) -> list[int]:
        """The pid of each index, for ``PKSampler``."""
        return [item.pid for item in self.items]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``index``; an ``(index, seed)`` pair (``data.sampler.SeededBatches``) runs the transform
        under its own seed, leaving the process's random state as it was."""
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        item, source = self.items[index], self.source(index)
        image = read_image(source.root / item.key)
        if seed is None:
            out = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = self.transform(image)
        image, flipped = out if isinstance(out, tuple) else (out, False)
        if self.use_dsap and self.dsap_reader == "worker":
            dsap = source.store.get(item.key)
            if flipped and source.flip is not None:
                dsap = np.ascontiguousarray(flip_dsap(dsap, source.flip, source.kind))
            dsap = torch.from_numpy(dsap)
        else:
            dsap = torch.empty(0, dtype=torch.uint8)
        return {"image": image, "dsap": dsap, "pid": int(item.pid), "camid": int(item.camid), "index": int(index),
                "flipped": bool(flipped)}

    def needs_dsap_read(self) -> bool:
        """Does a collated batch still lack its DSAP images (read in the consuming process)?"""
        return self.use_dsap and self.dsap_reader == "main"

    def read_dsap(self, batch: dict[str, Any], pin_memory: bool = False) -> dict[str, Any]:
        """``batch`` with ``dsap`` read here for its ``index`` entries (uint8 [B, 24, 3, S, S], in page-locked
        memory with ``pin_memory``); a batch that needs no read is returned as it is."""
        if not self.needs_dsap_read():
            return batch
        indices, flipped = batch["index"].tolist(), batch["flipped"].tolist()
        first = self.source(indices[0]).store.get(self.items[indices[0]].key)
        out = torch.empty((len(indices), *first.shape), dtype=torch.uint8, pin_memory=pin_memory)
        view = out.numpy()
        for j, i in enumerate(indices):
            source = self.source(i)
            d = first if j == 0 else source.store.get(self.items[i].key)
            view[j] = flip_dsap(d, source.flip, source.kind) if flipped[j] and source.flip is not None else d
        return {**batch, "dsap": out}


def worker_init(worker_id: int) -> None:
    """DataLoader worker start: deterministic NumPy/Python seeds from the worker's torch seed (itself
    derived from the loader's seeded generator), one thread (the thread policy), and SIGINT and SIGTERM
    left to the main process, which saves a checkpoint and shuts the workers down: Ctrl-C and a batch
    scheduler's SIGTERM reach the whole process group, and a worker that died of it would turn a clean stop
    into a lost epoch (a worker whose main process is gone exits by itself: torch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker_threads(worker_id)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class TrainBatches:
    """The training batches of one process: the sampler's P×K batches, each image augmented under its
    own seed (``SeededBatches``), loaded by ``workers`` DataLoader processes, the DSAP images read here.

    ``epoch(e)`` yields the complete named batches of epoch ``e`` from the sampler's position on; the
    DataLoader of each epoch gets its own generator seeded from (seed, epoch, rank), so that making one
    never draws from the global random state.
    """

    def __init__(self, dataset: JointDataset, sampler: PKSampler, *, workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.workers, self.pin_memory = workers, pin_memory

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        s = self.sampler
        s.set_epoch(epoch)
        gen = torch.Generator()
        gen.manual_seed(int(np.random.SeedSequence([s.seed, epoch, s.rank]).generate_state(1, dtype=np.uint64)[0] >> 1))
        loader = DataLoader(self.dataset, batch_sampler=SeededBatches(s), num_workers=self.workers,
                            worker_init_fn=worker_init, generator=gen, pin_memory=self.pin_memory)
        for batch in loader:
            yield self.dataset.read_dsap(batch, pin_memory=self.pin_memory)


def check_store_fits(store: Any, dataset: Any, min_found: float | None = None) -> None:
    """Refuse, up front, a store that holds images precompute could not read, whose images changed since it
    was computed or that it does not cover (``DSAPStore.check_fresh``: the checks ``precompute run`` makes
    before it says "up to date"), or, with ``min_found``, in which the estimator found a person in fewer than
    that share of the images (``data.min_found``): a StoreError listing a few of them."""
    train_keys = {it.key for it in dataset.train}
    unreadable = [f for f in store.unreadable() if f.get("key") in train_keys]
    if unreadable:
        examples = "; ".join(f"{f['key']} ({f['reason']})" for f in unreadable[:3])
        raise StoreError(f"{len(unreadable)} training image(s) could not be read when the store was computed: "
                         f"{examples}; replace or remove them, rerun `make precompute`, then rerun training")
    store.check_fresh(dataset.root, sorted(train_keys), "training ")
    low = store.low_found(min_found, "required by data.min_found",
                          "precompute the store with the right --estimator, or train on this one anyway with "
                          "--set data.min_found=0") if min_found else None
    if low:
        raise StoreError(low)


def build_train_data(cfg: Any, root: str | Path, *, rank: int = 0, world_size: int = 1, workers: int = 0,
                     pin_memory: bool = False) -> tuple[TrainBatches, Any, list[Any]]:
    """The training data of a run configuration (``dsa.config.TrainConfig``): the training split of its dataset,
    or the union of its datasets' (``data.datasets.union``: identities and cameras kept apart), each dataset's
    DSAP store (checked to fit) when the variant reads one, the recipe's augmentation and this process's P×K
    sampler (with ``data.balance: datasets``, an equal share of each dataset in every batch).  Returns
    (batches, the ``TrainUnion``, the store of each dataset or None); every problem is one sentence, naming
    the dataset of a union it concerns."""
    from .datasets import DatasetError, build_union
    from .store import open_store
    from .transforms import build_train_transform

    model, recipe = cfg.model, cfg.recipe
    union = build_union(cfg.data, root)
    stores: list[Any] = [None] * len(union.members)
    sources = []
    for i, m in enumerate(union.members):
        if cfg.uses_dsap:
            try:
                stores[i] = open_store(root, m.spec, m.estimator, m.tag, kind=cfg.data.input, size=model.dsap_size)
                check_store_fits(stores[i], m.dataset, cfg.data.min_found)
            except StoreError as e:
                if not union.is_union:
                    raise
                raise StoreError(f"{m.spec} (dataset {i + 1} of the union {union.name}): {e}") from None
        store = stores[i]
        flip = chart_convention(store.estimator) if store is not None and recipe.dsap_flip else None
        sources.append(Source(Path(m.dataset.root), store, flip, store.kind if store is not None else "dsap"))
    transform = build_train_transform(model.height, model.width, pad=recipe.pad, flip_p=recipe.flip,
                                      erasing_p=recipe.random_erasing)
    joint = JointDataset(union.train, None, None, transform, use_dsap=cfg.uses_dsap, dsap_reader="main",
                         sources=sources, source_of=union.member_of)
    groups = union.member_of if cfg.data.balance == "datasets" and union.is_union else None
    try:
        sampler = PKSampler(joint.pids, recipe.batch_p, recipe.batch_k, seed=cfg.seed, rank=rank,
                            world_size=world_size, groups=groups)
    except ValueError as e:
        raise DatasetError(f"cannot form batches for {union.name}: {e}") from None
    return TrainBatches(joint, sampler, workers=workers, pin_memory=pin_memory), union, stores
