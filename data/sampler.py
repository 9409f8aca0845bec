"""PK sampling for batch-hard triplet training (paper §4.2: P = 16 identities × K = 4 images).

``PKSampler`` is a *batch sampler*: it yields lists of dataset indices, one list per step, and is
given to ``DataLoader(dataset, batch_sampler=sampler)``.

An epoch is planned in one go from ``(seed, epoch)`` alone, the way torchreid's
``RandomIdentitySampler`` does it: every identity's images are shuffled and cut into chunks of K
(an identity with fewer than K images is topped up by sampling with replacement; an incomplete last
chunk is dropped), then batches are drawn by picking P identities that still have chunks, until
fewer than P identities are left.  Because the plan depends only on the seed and the epoch, every
rank of a distributed run computes the same plan; each rank takes its own slice of the P identities
of each batch (P / world_size identities × K images), so the ranks see disjoint identities at every
step and take the same number of steps.

Several datasets (a union, ``data.datasets.union``): their identities are kept apart, so the plan above
draws each batch's P identities from all of them alike, and each dataset appears in proportion to its
identities (its chunks, strictly).  With ``groups`` (the dataset of each index) every batch instead takes
an equal share of P from each dataset (P // G, the remainder going to the datasets in turn, batch by
batch), picked among that dataset's identities with chunks left, the P identities then shuffled together;
the epoch ends when one dataset has fewer identities left than its share, so a balanced epoch is as long
as the smallest dataset allows and the larger ones contribute a different part of their images each epoch.

Resuming: the sampler keeps a position (epoch, batch).  ``DataLoader`` prefetches batches, so the
sampler cannot know which batches were really trained on; the consumer calls ``advance()`` after each
batch it has used, and ``state_dict()`` / ``load_state_dict()`` save and restore that position, so a
resumed run continues with exactly the next batch of the same epoch.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np


class PKSampler:
    """Batches of P identities × K images each; distributed, deterministic, resumable.

    Args:
        pids: the identity of each dataset index (``pids[i]`` is the pid of item i).
        P: identities per step, over all ranks together (must be divisible by ``world_size``).
        K: images per identity in a batch.
        seed: the base seed; the plan of epoch e depends only on (seed, e).
        rank, world_size: this process's share of each batch.
        groups: the group (dataset of a union) of each index; given, every batch holds an equal share of
            each group's identities (see the module's docstring).  An identity belongs to one group.
    """

    def __init__(self, pids: Sequence[int], P: int, K: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, groups: Sequence[int] | None = None) -> None:
        if P < 1 or K < 1:
            raise ValueError(f"P and K must be positive, got P={P}, K={K}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if P % world_size:
            raise ValueError(f"P={P} identities per step cannot be split evenly over {world_size} processes")
        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            by_pid[int(pid)].append(index)
        if len(by_pid) < P:
            raise ValueError(f"P={P} identities per batch, but the data has only {len(by_pid)} identities")
        self.pid_list = sorted(by_pid)
        self.indices = [np.asarray(by_pid[pid], dtype=np.int64) for pid in self.pid_list]
        self.groups: list[list[int]] | None = None  # identity positions (in pid_list) of each group
        if groups is not None:
            group_of = {int(pids[i]): int(groups[i]) for i in range(len(pids))}
            names = sorted(set(group_of.values()))
            self.groups = [[p for p, pid in enumerate(self.pid_list) if group_of[pid] == g] for g in names]
            share = -(-P // len(names))
            small = [(g, len(m)) for g, m in zip(names, self.groups) if len(m) < share]
            if small:
                raise ValueError(f"P={P} identities per batch over {len(names)} datasets takes up to {share} of "
                                 f"each, but dataset {small[0][0] + 1} has only {small[0][1]} identities")
        self.P, self.K, self.seed = P, K, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.batch = 0
        self._plan_epoch: int | None = None
        self._plan: np.ndarray | None = None

    # -- the plan ---------------------------------------------------------------------------
    def plan(self, epoch: int) -> np.ndarray:
        """The global batches of ``epoch``: int64 [num_batches, P, K] dataset indices."""
        if self._plan_epoch == epoch and self._plan is not None:
            return self._plan
        rng = np.random.default_rng([self.seed, epoch])
        chunks: list[list[np.ndarray]] = []
        for idx in self.indices:
            if len(idx) < self.K:
                idx = rng.choice(idx, size=self.K, replace=True)
            else:
                idx = rng.permutation(idx)
            n = len(idx) // self.K
            chunks.append([idx[i * self.K:(i + 1) * self.K] for i in range(n)])
        batches: list[np.ndarray] = []
        if self.groups is None:
            available = [p for p in range(len(chunks)) if chunks[p]]
            while len(available) >= self.P:
                chosen = rng.choice(len(available), size=self.P, replace=False)
                picked = [available[c] for c in chosen]
                batches.append(np.stack([chunks[p].pop() for p in picked]))
                available = [p for p in available if chunks[p]]
        else:
            batches = self._balanced_batches(chunks, rng)
        plan = np.stack(batches) if batches else np.zeros((0, self.P, self.K), dtype=np.int64)
        self._plan_epoch, self._plan = epoch, plan
        return plan

    def _balanced_batches(self, chunks: list[list[np.ndarray]], rng: np.random.Generator) -> list[np.ndarray]:
        """The batches of a plan with an equal share of each group's identities in every batch."""
        assert self.groups is not None
        g = len(self.groups)
        batches: list[np.ndarray] = []
        while True:
            b = len(batches)
            shares = [self.P // g + (1 if (j - b) % g < self.P % g else 0) for j in range(g)]
            available = [[p for p in members if chunks[p]] for members in self.groups]
            if any(len(a) < n for a, n in zip(available, shares)):
                return batches
            picked = [a[c] for a, n in zip(available, shares) for c in rng.choice(len(a), size=n, replace=False)]
            picked = [picked[i] for i in rng.permutation(len(picked))]
            batches.append(np.stack([chunks[p].pop() for p in picked]))

    def __len__(self) -> int:
        """Batches in the current epoch (the whole epoch, whatever the position)."""
        return len(self.plan(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's batches of the current epoch, from the current position on."""
        share = self.P // self.world_size
        lo = self.rank * share
        for batch in self.plan(self.epoch)[self.batch:]:
            yield batch[lo:lo + share].reshape(-1).tolist()

    # -- position -------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``; the position restarts at its first batch unless it is already there."""
        if epoch != self.epoch:
            self.epoch, self.batch = epoch, 0

    def advance(self, n: int = 1) -> None:
        """Record that ``n`` more batches of this epoch were used (call it after each step)."""
        self.batch += n

    def state_dict(self) -> dict:
        """The position and the settings it is valid for."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "P": self.P, "K": self.K,
                "world_size": self.world_size, "num_samples": int(sum(len(i) for i in self.indices))}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by ``state_dict`` (with the same settings)."""
        for name in ("seed", "P", "K", "world_size", "num_samples"):
            mine = self.state_dict()[name]
            if name in state and int(state[name]) != mine:
                raise ValueError(f"sampler state was saved with {name}={state[name]}, this sampler has {mine}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class SeededBatches:
    """Wraps a ``PKSampler`` so that each index comes with its own augmentation seed.

    The seed of the j-th item of a batch is a function of (sampler seed, epoch, batch, rank, j) only,
    so the random crop/flip/erasing of every image is the same whether it runs in the main process or
    in any DataLoader worker, and whether the epoch ran straight or was resumed in the middle.
    ``JointDataset`` accepts these ``(index, seed)`` pairs.
    """

    def __init__(self, sampler: PKSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.sampler
        for b, batch in enumerate(iter(s), start=s.batch):
            ss = np.random.SeedSequence([s.seed, s.epoch, b, s.rank])
            seeds = ss.generate_state(len(batch), dtype=np.uint64)
            yield [(i, int(seed) >> 1) for i, seed in zip(batch, seeds)]
