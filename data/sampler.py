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
    """

    def __init__(self, pids: Sequence[int], P: int, K: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
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
        available = [p for p in range(len(chunks)) if chunks[p]]
        batches: list[np.ndarray] = []
        while len(available) >= self.P:
            chosen = rng.choice(len(available), size=self.P, replace=False)
            picked = [available[c] for c in chosen]
            batches.append(np.stack([chunks[p].pop() for p in picked]))
            available = [p for p in available if chunks[p]]
        plan = np.stack(batches) if batches else np.zeros((0, self.P, self.K), dtype=np.int64)
        self._plan_epoch, self._plan = epoch, plan
        return plan

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
